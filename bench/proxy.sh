#!/usr/bin/env bash
# Proxy overhead (issue 3): the same upstream call straight to the upstream
# and through the broker's proxy (credential check, route → action, Cedar,
# key injection, a durable audit decision before forwarding, the outcome
# event after), in one run. Needs wrk (Debian).
#   bash bench/proxy.sh
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
port=18481
up=18482
source "$(dirname "$0")/lib.sh"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%F)"
export MANDATE_URL=http://127.0.0.1:$port
m() { "$bin/mandate" "$@" >/dev/null; }
"$bin/mandate-bench" ceiling --listen 127.0.0.1:$up & ceil=$!
m tenant create acme
m policy add --tenant acme examples/policies/baseline.cedar
m agent create --tenant acme mailer --owner bench --envelope 'email:*'
m tool create --tenant acme email --provider proxy --action send --max-ttl 1h \
  --upstream http://127.0.0.1:$up --route 'POST /emails=send' --env 'BENCH_KEY={credential}'
echo upstream-key | "$bin/mandate" tool set-secret --tenant acme email >/dev/null
# The proxy credential, as a child of `mandate exec` sees it.
"$bin/mandate" exec -q --tenant acme --agent mailer --tool email -- \
  sh -c "printf %s \"\$BENCH_KEY\" > $work/key; exec sleep 3600" & ex=$!
# Stop the exec'd child first, so the run ends while the broker is still up.
stop() { kill ${ex:-} 2>/dev/null; for _ in $(seq 50); do kill -0 ${ex:-0} 2>/dev/null || break; sleep 0.1; done; kill ${broker:-} ${ceil:-} 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 100); do [ -s "$work/key" ] && break; sleep 0.1; done

run() { # label key path conns port
  t=$(( $4 < 2 ? 1 : 2 ))
  KEY=$2 TARGET_PATH=$3 wrk -t$t -c$4 -d2s -s bench/proxy.lua http://127.0.0.1:$5 >/dev/null 2>&1
  echo "-- $1, $4 connection(s)"
  KEY=$2 TARGET_PATH=$3 wrk -t$t -c$4 -d10s --latency -s bench/proxy.lua http://127.0.0.1:$5 \
    | grep -E 'Requests/sec|Latency  |50%|99%|Non-2xx'
}
for c in 1 16; do
  run "direct to the upstream" upstream-key /emails $c $up
  run "through the proxy" "$(cat $work/key)" /proxy/email/emails $c $port
done
echo "== an upstream that takes 20 ms per call, like a real API"
for c in 16 64; do
  run "direct to the upstream (20 ms)" upstream-key "/emails?ms=20" $c $up
  run "through the proxy (20 ms)" "$(cat $work/key)" "/proxy/email/emails?ms=20" $c $port
done
if [ -n "${PROFILE:-}" ]; then
  KEY=$(cat $work/key) TARGET_PATH=/proxy/email/emails wrk -t2 -c16 -d12s -s bench/proxy.lua http://127.0.0.1:$port > "$work/wrk.txt" & load=$!
  sleep 1
  perf record -e cpu-clock -F 997 -g --call-graph dwarf,32768 -p $broker -o "$work/perf.data" -- sleep 8 2>/dev/null
  wait $load
  perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-45}
fi
calls=$(curl -sf -H "Authorization: Bearer $(cat "$work/config/admin.token")" "http://127.0.0.1:$port/v1/audit/verify")
echo "audit after load: $calls"
