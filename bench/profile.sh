#!/usr/bin/env bash
# Profiles the broker under the W1 load with `perf record` (cpu-clock samples)
# and prints the hottest functions. Needs wrk and perf (Debian: linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}
cargo build --release -q -p mandate-cli -p mandate-bench
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d /tmp/mandate-prof.XXXXXX)
port=18473
export MANDATE_CONFIG_DIR=$work/config MANDATE_DATA_DIR=$work/data RUST_LOG=warn
"$bin/mandate" serve --listen 127.0.0.1:$port >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$port/healthz && break; sleep 0.1; done
"$bin/mandate-bench" prep --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" --out "$work" --warm 10000 --count 200000
BODY=$work/body.txt PROOFS=$work/proofs-count.txt THREADS=2 wrk -t2 -c16 -d12s -s bench/w1.lua http://127.0.0.1:$port > "$work/wrk.txt" &
sleep 1
perf record -e cpu-clock -F 997 -g --call-graph dwarf,32768 -p $broker -o "$work/perf.data" -- sleep 8 2>/dev/null
wait
grep Requests/sec "$work/wrk.txt"
perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-45}
echo "perf data: $work/perf.data"
