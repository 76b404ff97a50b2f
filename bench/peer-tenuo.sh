#!/usr/bin/env bash
# W2 against the peer tenuo (../shared/BENCH.md): builds the standalone
# bench/peer-tenuo crate (not a workspace member, so tenuo stays out of the
# test build) and runs both verifications in one process, three rounds.
set -euo pipefail
cd "$(dirname "$0")/peer-tenuo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}/peer-tenuo
cargo build --release --quiet
"$CARGO_TARGET_DIR/release/mandate-peer-tenuo" "${1:-20000}"
