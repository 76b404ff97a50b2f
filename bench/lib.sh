# Shared by the bench scripts: build, and start a release broker on $port in
# a fresh work directory ($work); the broker ($broker) stops when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}
# MANDATE_BIN_DIR: binaries built elsewhere (another commit, for a
# before/after comparison); otherwise this tree's, built now.
if [ -n "${MANDATE_BIN_DIR:-}" ]; then
  bin=$MANDATE_BIN_DIR
else
  cargo build --release -q -p mandate-cli -p mandate-bench
  bin=$CARGO_TARGET_DIR/release
fi
work=$(mktemp -d /tmp/mandate-bench.XXXXXX)
echo "work dir: $work"
export MANDATE_CONFIG_DIR=$work/config MANDATE_DATA_DIR=$work/data RUST_LOG=${RUST_LOG:-warn}
# One run key makes every request: it needs more than a key's default quota
# of live DPoP proofs (10,000, ≈ 150 requests/s).
# BROKER_WRAP: a command the broker runs under (bench/instructions.sh: valgrind).
${BROKER_WRAP:-} "$bin/mandate" serve --listen 127.0.0.1:$port --dpop-replay-per-key 2000000 >"$work/broker.log" 2>&1 &
broker=$!
# The work directory (a few hundred MB of proofs and a database) goes when
# the script ends, unless KEEP_WORK=1.
trap 'kill ${broker:-} ${ceil:-} 2>/dev/null || true; [ -n "${KEEP_WORK:-}" ] || { sleep 0.5; rm -rf "$work"; }' EXIT
for _ in $(seq ${BROKER_WAIT:-100}); do curl -sf -o /dev/null http://127.0.0.1:$port/healthz && break; sleep 0.1; done
