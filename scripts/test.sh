#!/usr/bin/env bash
# Runs every test Mandate has, installing what they need:
#   1. unit tests of the pure core and the store, and integration tests that
#      start real brokers on loopback and drive them over HTTP (cargo nextest,
#      or cargo test where nextest is missing);
#   2. the end-to-end story: the real `mandate` binary, its CLI, and an
#      independent JOSE implementation (Python joserfc, installed into a venv)
#      that makes the run keys and DPoP proofs and verifies the issued JWTs.
#   `mandate exec` and the proxy are shown with the official `resend` Node SDK
#   sending through the proxy to `resend-local` (both from npm, pinned).
#   The postgres provider's tests need a real PostgreSQL server: scripts/pg.sh
#   installs Debian's `postgresql` if missing and starts one on 127.0.0.1:54329.
#   First, style: `cargo fmt --check` and `cargo clippy -D warnings` (issue 11).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}
# Brokers started by tests keep their data directory (a test may restart on
# it); what earlier runs left more than an hour ago goes now.
find "${TMPDIR:-/tmp}" -maxdepth 1 -mmin +60 \( -name 'mandate-test-*' -o -name 'mandate-live-*' \
  -o -name 'mandate-cli-*' -o -name 'mandate-cp-*' -o -name 'mandate-bench.*' -o -name 'mandate-w5.*' \) \
  -exec rm -rf {} + 2>/dev/null || true
venv=${MANDATE_VENV:-$HOME/.cache/mandate-venv}
node_dir=${MANDATE_NODE_DIR:-$HOME/.cache/mandate-node}

echo "==> Python test dependencies ($venv)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt \
  -r sdk/python/tests/requirements.txt
# The Python SDK's wheel, with its dependencies' wheels: its packaging test
# installs it from there into an empty venv, without the network.
MANDATE_SDK_WHEELS="$CARGO_TARGET_DIR/sdk-wheels"
rm -rf "$MANDATE_SDK_WHEELS" sdk/python/build
"$venv/bin/python" -m pip wheel --quiet --disable-pip-version-check -w "$MANDATE_SDK_WHEELS" ./sdk/python
export MANDATE_SDK_WHEELS

echo "==> Node test dependencies: the official Resend and MCP SDKs, resend-local, TypeScript ($node_dir)"
# Pinned: the SDK an agent would use, and an emulator of the Resend API as its upstream.
if [ ! -f "$node_dir/node_modules/resend/package.json" ] || [ ! -f "$node_dir/node_modules/resend-local/package.json" ] \
  || [ ! -f "$node_dir/node_modules/@modelcontextprotocol/sdk/package.json" ] \
  || [ ! -f "$node_dir/node_modules/typescript/package.json" ] || [ ! -f "$node_dir/node_modules/@types/node/package.json" ]; then
  mkdir -p "$node_dir"
  [ -f "$node_dir/package.json" ] || echo '{"name": "mandate-e2e-node", "private": true}' > "$node_dir/package.json"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund resend@6.38.0 resend-local@0.0.7 @modelcontextprotocol/sdk@1.32.2 \
    typescript@5.9.3 @types/node@20.19.0)
fi
export MANDATE_NODE_DIR=$node_dir
echo "==> the TypeScript SDK (sdk/typescript), compiled with tsc"
rm -rf sdk/typescript/dist
"$node_dir/node_modules/.bin/tsc" -p sdk/typescript --typeRoots "$node_dir/node_modules/@types"

echo "==> PostgreSQL for the postgres provider's tests"
MANDATE_TEST_PG=$(scripts/pg.sh)
export MANDATE_TEST_PG

echo "==> style: rustfmt and clippy (warnings are errors)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> build"
cargo build --workspace --all-targets

echo "==> shell completions and man pages, from the CLI's definition ($CARGO_TARGET_DIR/share)"
share="$CARGO_TARGET_DIR/share"
rm -rf "$share/man1" && mkdir -p "$share/completions"
for sh in bash zsh fish; do "$CARGO_TARGET_DIR/debug/mandate" completion "$sh" > "$share/completions/mandate.$sh"; done
bash -n "$share/completions/mandate.bash"
"$CARGO_TARGET_DIR/debug/mandate" man --out "$share/man1"

echo "==> Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

echo "==> the README's walkthrough (examples/quickstart.sh, against a broker of its own)"
MANDATE_BIN="$CARGO_TARGET_DIR/debug/mandate" bash examples/quickstart.sh > /dev/null 2>"${TMPDIR:-/tmp}/mandate-quickstart.log" \
  || { cat "${TMPDIR:-/tmp}/mandate-quickstart.log" >&2; exit 1; }

echo "==> end-to-end tests (real binary, independent JOSE)"
MANDATE_BIN="$CARGO_TARGET_DIR/debug/mandate" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/e2e

echo "==> the Python SDK (sdk/python) against the real binary"
MANDATE_BIN="$CARGO_TARGET_DIR/debug/mandate" "$venv/bin/python" -m pytest -q -p no:cacheprovider sdk/python/tests

echo "==> the TypeScript SDK (sdk/typescript) against the real binary"
MANDATE_BIN="$CARGO_TARGET_DIR/debug/mandate" "$venv/bin/python" -m pytest -q -p no:cacheprovider sdk/typescript/tests
