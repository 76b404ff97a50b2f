#!/usr/bin/env bash
# W1 (../shared/BENCH.md): token exchange under load, with the peer, the
# ceiling and the crypto floor measured in the same run. Prints a report;
# BENCHMARKS.md records it. Needs wrk (Debian) and node/npm (for the peer).
#   bash bench/w1.sh            # all baselines
#   SKIP_PEER=1 bash bench/w1.sh
#   bash bench/w1.sh --alg ES256   # P-256 run keys (DPoP proofs signed ES256)
alg=EdDSA
while [ $# -gt 0 ]; do
  case "$1" in
    --alg) alg=$2; shift 2 ;;
    *) echo "usage: bash bench/w1.sh [--alg EdDSA|ES256]"; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
port=18471
source "$(dirname "$0")/lib.sh"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%F)"
"$bin/mandate-bench" prep --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" --out "$work" --alg "$alg"

cpu() { awk '{print $14+$15}' /proc/$broker/stat; }
echo "== Mandate W1 ($alg run keys): token exchange + DPoP + Cedar + durable audit, wrk -t2 -c16, 3 s warm-up, 15 s counted (proofs pre-generated, one per request)"
BODY=$work/body.txt PROOFS=$work/proofs-warm.txt THREADS=2 wrk -t2 -c16 -d3s -s bench/w1.lua http://127.0.0.1:$port >/dev/null 2>&1
c0=$(cpu)
BODY=$work/body.txt PROOFS=$work/proofs-count.txt THREADS=2 wrk -t2 -c16 -d15s --latency -s bench/w1.lua http://127.0.0.1:$port | tee "$work/mandate.txt"
c1=$(cpu)
reqs=$(awk '/requests in/ {print $1}' "$work/mandate.txt")
tck=$(getconf CLK_TCK)
echo "server CPU seconds per 1,000 exchanges: $(awk -v a=$c0 -v b=$c1 -v r=$reqs -v t=$tck 'BEGIN{printf "%.3f", (b-a)/t/r*1000}')"
echo "server peak RSS: $(grep VmHWM /proc/$broker/status | awk '{print $2, $3}')"
events=$(curl -sf -H "Authorization: Bearer $(cat "$work/config/admin.token")" "http://127.0.0.1:$port/v1/audit/verify")
echo "audit after load: $events"

echo "== ceiling: hello-world axum, same wrk settings"
"$bin/mandate-bench" ceiling --listen 127.0.0.1:18472 & ceil=$!
sleep 0.5
wrk -t2 -c16 -d3s http://127.0.0.1:18472/ >/dev/null 2>&1
wrk -t2 -c16 -d15s --latency http://127.0.0.1:18472/ | grep -E 'Requests/sec|Latency|50%|99%'
kill $ceil; ceil=

echo "== crypto floor"
"$bin/mandate-bench" floor

if [ -z "${SKIP_PEER:-}" ]; then
  kill $broker; broker=
  echo "== peer: oidc-provider client_credentials (no PoP, no policy, no durable audit)"
  bash ../shared/bench-peer/run-peer.sh --load | grep -E 'Requests/sec|Latency|50%|99%|requests in|Non-2xx'
  echo "== peer with a fresh DPoP proof per request ($alg)"
  DPOP_ALG=$alg bash ../shared/bench-peer/run-peer.sh --load-dpop | grep -E 'Requests/sec|Latency|50%|99%|requests in|Non-2xx'
fi
