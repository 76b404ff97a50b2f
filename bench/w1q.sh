#!/usr/bin/env bash
# Quick W1 for comparing builds (alternate them: this machine's speed moves
# by +-30% within minutes): Mandate only, 2 s warm-up, D=12 s counted at
# C=16 connections. Prints the share of the crypto floor, req/s, p50/p99,
# errors, the broker's CPU per 1,000 exchanges, wrk's CPU, and per
# exchange: user and system CPU, bytes handed to write calls and their
# number (/proc/<broker>/io), context switches.
#   MANDATE_BIN_DIR=/tmp/old bash bench/w1q.sh; bash bench/w1q.sh
#   ALG=ES256 C=32 D=20 bash bench/w1q.sh
port=18479
source "$(dirname "$0")/lib.sh"
"$bin/mandate-bench" prep --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" --out "$work" --warm 30000 --count ${COUNT:-250000} --alg ${ALG:-EdDSA} >/dev/null
# The floor of the run keys' algorithm (an older mandate-bench has no --alg).
fl=$({ "$bin/mandate-bench" floor --alg ${ALG:-EdDSA} --iterations 4000 2>/dev/null || "$bin/mandate-bench" floor --iterations 4000; } | awk -v a="(${ALG:-EdDSA}" '$3 == a {print $(NF-4)}')
csw() { cat /proc/$1/task/*/status | awk '/ctxt_switches/ {n+=$2} END {print n}'; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
BODY=$work/body.txt PROOFS=$work/proofs-warm.txt THREADS=2 wrk -t2 -c${C:-16} -d2s -s bench/w1.lua http://127.0.0.1:$port >/dev/null 2>&1
c0=$(cpu $broker); s0=$(csw $broker); u0=$(awk '{print $14" "$15}' /proc/$broker/stat); io0=$(awk '/wchar|syscw/ {printf "%s ", $2}' /proc/$broker/io)
BODY=$work/body.txt PROOFS=$work/proofs-count.txt THREADS=2 wrk -t2 -c${C:-16} -d${D:-12}s --latency -s bench/w1.lua http://127.0.0.1:$port > $work/out.txt &
w=$!; sleep 0.3; wc0=$(cpu $w); sleep $(( ${D:-12} - 1 )); wc1=$(cpu $w); wait $w
c1=$(cpu $broker); s1=$(csw $broker); u1=$(awk '{print $14" "$15}' /proc/$broker/stat); io1=$(awk '/wchar|syscw/ {printf "%s ", $2}' /proc/$broker/io)
reqs=$(awk '/requests in/ {print $1}' $work/out.txt)
t=$(getconf CLK_TCK)
echo "floor $fl share $(awk -v f=$fl '/Requests\/sec/ {printf "%.1f%%", 100*$2/f}' $work/out.txt) $(grep Requests/sec $work/out.txt) p50 $(awk '$1=="50%"{print $2}' $work/out.txt) p99 $(awk '$1=="99%"{print $2}' $work/out.txt) errors: $(grep -c -E 'Non-2xx|Socket errors' $work/out.txt) broker_cpu/1000: $(awk -v a=$c0 -v b=$c1 -v r=$reqs -v t=$t 'BEGIN{printf "%.3f", (b-a)/t/r*1000}') wrk_cpu/s: $(awk -v a=$wc0 -v b=$wc1 -v t=$t -v d=${D:-12} 'BEGIN{printf "%.2f", (b-a)/t/(d-1.3)}')"
grep -E "Non-2xx|Socket" $work/out.txt || true
echo "utime/stime ticks before: $u0 after: $u1; wchar syscw before: $io0 after: $io1; reqs $reqs" 
echo $u0 $u1 $io0 $io1 $reqs | awk '{printf "per exchange: user %.1f us, sys %.1f us, written %.0f bytes in %.2f write calls\n", ($3-$1)*10000/$9, ($4-$2)*10000/$9, ($7-$5)/$9, ($8-$6)/$9}'
echo "context switches per exchange: $(awk -v a=$s0 -v b=$s1 -v r=$reqs 'BEGIN{printf "%.2f", (b-a)/r}')"
