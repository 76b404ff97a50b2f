#!/usr/bin/env bash
# W1 counted in instructions, not seconds: the broker runs under valgrind's
# callgrind, takes the W1 load (wrk, one fresh DPoP proof per request), and
# the instructions it executed while the counted load ran are divided by the
# exchanges answered. Repeatable on a machine whose speed moves by +-30%
# within minutes (wall-clock figures need alternating runs to compare;
# instruction counts do not). Kernel work (syscalls: socket IO, the WAL's
# writes and fsync) is not counted. Also counts the crypto floor (the same
# signatures as `mandate-bench floor`) the same way, so the share of the
# floor is a ratio of two counts from the same run.
#   bash bench/instructions.sh               # EdDSA run keys
#   bash bench/instructions.sh --alg ES256   # P-256 run keys
#   TOP=40 bash bench/instructions.sh        # and the 40 costliest functions (inclusive)
alg=EdDSA
while [ $# -gt 0 ]; do
  case "$1" in
    --alg) alg=$2; shift 2 ;;
    *) echo "usage: bash bench/instructions.sh [--alg EdDSA|ES256]"; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install -y valgrind"; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
port=18474
out=$(mktemp /tmp/mandate-callgrind.XXXXXX)
BROKER_WRAP="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$out" BROKER_WAIT=600 \
  source "$(dirname "$0")/lib.sh"
"$bin/mandate-bench" prep --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" \
  --out "$work" --alg "$alg" --warm 2000 --count 20000 >/dev/null
load() { BODY=$work/body.txt PROOFS=$work/$1 THREADS=2 wrk -t2 -c8 -d$2 -s bench/w1.lua http://127.0.0.1:$port; }
callgrind_control -i on $broker >/dev/null
load proofs-warm.txt 4s >/dev/null 2>&1
callgrind_control -z $broker >/dev/null
load proofs-count.txt ${SECONDS_COUNTED:-20}s > "$work/wrk.txt"
callgrind_control -d $broker >/dev/null
grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" && { echo "errors under load: not counted"; exit 1; }
reqs=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
dump=$(ls -t "$out"* | head -1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
# The floor: the same three signatures per exchange, counted the same way
# (with and without the loop, so set-up is not counted).
floor_ir() {
  local f; f=$(mktemp /tmp/mandate-floor.XXXXXX)
  valgrind --tool=callgrind --callgrind-out-file="$f" "$bin/mandate-bench" floor --alg "$alg" --iterations "$1" >/dev/null 2>&1
  callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
  rm -f "$f"
}
f1=$(floor_ir 400); f0=$(floor_ir 0)
awk -v ir=$ir -v r=$reqs -v f1=$f1 -v f0=$f0 -v alg=$alg 'BEGIN {
  per = ir / r; fl = (f1 - f0) / 400
  printf "%s run keys: %d exchanges counted, %.0f instructions per exchange (broker, user space)\n", alg, r, per
  printf "crypto floor: %.0f instructions per exchange; Mandate executes %.2fx the floor (floor share %.1f%%)\n", fl, per / fl, 100 * fl / per
}'
if [ -n "${TOP:-}" ]; then
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | head -"$TOP" |
    awk -v r=$reqs '{ n=$1; gsub(",", "", n); $1=""; $2=""; printf "%9.0f  %s\n", n / r, substr($0, 1, 180) }'
fi
[ -n "${KEEP_DUMP:-}" ] && echo "callgrind dump: $dump ($reqs exchanges)" || rm -f "$out"*
