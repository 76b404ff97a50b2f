#!/usr/bin/env bash
# W3 (../shared/BENCH.md): time from the revoke call until every subscribed
# verifier (mandate-verify's Live, one feed connection each) refuses a
# credential it accepted just before; 1 and 100 verifiers.
#   bash bench/w3.sh
port=18491
source "$(dirname "$0")/lib.sh"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%F)"
for n in 1 100; do
  "$bin/mandate-bench" w3 --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" \
    --verifiers $n --rounds ${ROUNDS:-100}
done
