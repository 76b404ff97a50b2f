#!/usr/bin/env bash
# Revocation feed delivery (a first step toward W3 in ../shared/BENCH.md):
# 1 and 100 SSE subscribers, 100 revocations each; time from the revoke call
# until every subscriber has the event. Verifiers that refuse on it come with
# mandate-verify (issue 5); this measures the feed they will stand on.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}
cargo build --release -q -p mandate-cli -p mandate-bench
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d /tmp/mandate-feed.XXXXXX)
port=18481
export MANDATE_CONFIG_DIR=$work/config MANDATE_DATA_DIR=$work/data RUST_LOG=warn
"$bin/mandate" serve --listen 127.0.0.1:$port >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$port/healthz && break; sleep 0.1; done
for n in 1 100; do
  "$bin/mandate-bench" feed --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" --subscribers $n --revocations 100
done
