#!/usr/bin/env bash
# W6 (issue 13): an MCP `tools/call` straight to the MCP server and through
# the broker's MCP gateway (credential check, revocation, arguments checked
# against the pinned inputSchema, the exchange question and the call
# question in Cedar, a durable `mcp.call` event before forwarding, the call
# over the run's upstream session, an `mcp.result` event after), in one run.
# The MCP server is `mandate-bench ceiling`'s `/mcp` (Rust, JSON responses),
# its tool taking `ms` milliseconds. Needs wrk (Debian).
#   bash bench/w6.sh
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
port=18491
up=18492
source "$(dirname "$0")/lib.sh"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%F)"
export MANDATE_URL=http://127.0.0.1:$port
m() { "$bin/mandate" "$@" >/dev/null; }
"$bin/mandate-bench" ceiling --listen 127.0.0.1:$up & ceil=$!
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$up/ && break; sleep 0.1; done
m tenant create acme
m policy add --tenant acme examples/policies/baseline.cedar
m agent create --tenant acme caller --owner bench --envelope 'bench:*'
m tool create --tenant acme bench --provider mcp --upstream http://127.0.0.1:$up/mcp --action noop --max-ttl 1h \
  --env 'BENCH_KEY={credential}'
m tool sync --tenant acme bench
printf '%s\n' '@id("calls") permit (principal, action in Mandate::Action::"mcp_call", resource);' \
  '@id("short") forbid (principal, action == Mandate::Action::"bench:noop", resource) when { context.arguments has ms && context.arguments.ms > 1000 };' \
  > "$work/mcp.cedar"
m policy add --tenant acme --name mcp "$work/mcp.cedar"
# The gateway credential, as a child of `mandate exec` sees it.
"$bin/mandate" exec -q --tenant acme --agent caller --tool bench -- \
  sh -c "printf %s \"\$BENCH_KEY\" > $work/key; exec sleep 3600" & ex=$!
stop() { kill ${ex:-} 2>/dev/null; for _ in $(seq 50); do kill -0 ${ex:-0} 2>/dev/null || break; sleep 0.1; done; kill ${broker:-} ${ceil:-} 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 100); do [ -s "$work/key" ] && break; sleep 0.1; done

run() { # label key path conns port args
  t=$(( $4 < 2 ? 1 : 2 ))
  KEY=$2 TARGET_PATH=$3 ARGS=$6 wrk -t$t -c$4 -d2s -s bench/w6.lua http://127.0.0.1:$5 >/dev/null 2>&1
  echo "-- $1, $4 connection(s)"
  KEY=$2 TARGET_PATH=$3 ARGS=$6 wrk -t$t -c$4 -d10s --latency -s bench/w6.lua http://127.0.0.1:$5 \
    | grep -E 'Requests/sec|Latency  |50%|99%|Non-2xx'
}
for c in ${CONNS:-1 16}; do
  run "direct to the MCP server (no-op tool)" upstream-key /mcp $c $up '{}'
  run "through the gateway (no-op tool)" "$(cat $work/key)" /mcp/bench $c $port '{}'
done
echo "== a tool that takes 20 ms per call"
for c in ${SLOW_CONNS:-64}; do
  run "direct to the MCP server (20 ms)" upstream-key /mcp $c $up '{"ms":20}'
  run "through the gateway (20 ms)" "$(cat $work/key)" /mcp/bench $c $port '{"ms":20}'
done
# Every call answered by the MCP server, none refused: the last answer, checked.
curl -sf -X POST -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
  -H "Authorization: Bearer $(cat $work/key)" http://127.0.0.1:$port/mcp/bench \
  -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"noop","arguments":{}}}'; echo
calls=$(curl -sf -H "Authorization: Bearer $(cat "$work/config/admin.token")" "http://127.0.0.1:$port/v1/audit/verify")
echo "audit after load: $calls"
if [ -n "${PROFILE:-}" ]; then
  KEY=$(cat $work/key) TARGET_PATH=/mcp/bench ARGS='{}' wrk -t2 -c16 -d12s -s bench/w6.lua http://127.0.0.1:$port > "$work/wrk.txt" & load=$!
  sleep 1
  # PROFILE=flat: symbols only (fast to report); otherwise call graphs.
  graph="-g --call-graph dwarf,32768"; [ "$PROFILE" = flat ] && graph=""
  perf record -e cpu-clock -F 997 $graph -p $broker -o "$work/perf.data" -- sleep 8 2>/dev/null
  wait $load
  perf report -i "$work/perf.data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-45}
fi
