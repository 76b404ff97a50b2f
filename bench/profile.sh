#!/usr/bin/env bash
# Profiles the broker under the W1 load with `perf record` (cpu-clock samples)
# and prints the hottest functions. Needs wrk and perf (Debian: linux-perf).
port=18473
source "$(dirname "$0")/lib.sh"
"$bin/mandate-bench" prep --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" --out "$work" --warm 10000 --count 200000
BODY=$work/body.txt PROOFS=$work/proofs-count.txt THREADS=2 wrk -t2 -c16 -d12s -s bench/w1.lua http://127.0.0.1:$port > "$work/wrk.txt" &
load=$!
sleep 1
perf record -e cpu-clock -F 997 -g --call-graph dwarf,32768 -p $broker -o "$work/perf.data" -- sleep 8 2>/dev/null
wait $load
grep Requests/sec "$work/wrk.txt"
perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-45}
echo "perf data: $work/perf.data"
