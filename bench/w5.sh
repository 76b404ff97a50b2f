#!/usr/bin/env bash
# W5, soak and crash: bash bench/w5.sh [minutes, default 10] [kills, default 10]
# Builds the release binary, then runs bench/w5.py (see its docstring) with
# the test venv's Python (joserfc); prints a JSON report.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}
cargo build --release -q -p mandate-cli
venv=${MANDATE_VENV:-$HOME/.cache/mandate-venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt
exec "$venv/bin/python" bench/w5.py --bin "$CARGO_TARGET_DIR/release/mandate" \
  --minutes "${1:-10}" --kills "${2:-10}"
