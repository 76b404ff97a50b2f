#!/usr/bin/env bash
# How W1 grows with the tenant's policies (issue 12): for 1, 10, 100 and
# 1,000 policies (one permit, the rest `forbid` for other actions), a fresh
# broker, the W1 load for 10 s (wrk -t2 -c16, 2 s warm-up). The in-process
# decision cost up to 10,000 policies: `mandate-bench policy-curve` (a
# tenant is limited to 1,024 policies through the API).
#   bash bench/policies.sh
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
port=18474
for n in ${POLICY_COUNTS:-1 10 100 1000}; do
  (
    source "$(dirname "$0")/lib.sh" >/dev/null
    "$bin/mandate-bench" prep --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" \
      --out "$work" --warm 20000 --count 200000 --policies "$n" 2>/dev/null
    BODY=$work/body.txt PROOFS=$work/proofs-warm.txt THREADS=2 wrk -t2 -c16 -d2s -s bench/w1.lua http://127.0.0.1:$port >/dev/null 2>&1
    BODY=$work/body.txt PROOFS=$work/proofs-count.txt THREADS=2 wrk -t2 -c16 -d10s --latency -s bench/w1.lua http://127.0.0.1:$port > "$work/wrk.txt"
    printf '%6d policies: %s requests/s, p99 %s, non-2xx: %s\n' "$n" \
      "$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")" \
      "$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")" \
      "$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt" | grep . || echo 0)"
  )
done
echo "== in-process decision cost"
"${MANDATE_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}/release}/mandate-bench" policy-curve
