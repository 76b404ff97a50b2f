#!/usr/bin/env bash
# Revocation feed delivery (a first step toward W3 in ../shared/BENCH.md):
# 1 and 100 SSE subscribers, 100 revocations each; time from the revoke call
# until every subscriber has the event. Verifiers that refuse on it come with
# mandate-verify (issue 5); this measures the feed they will stand on.
port=18481
source "$(dirname "$0")/lib.sh"
for n in 1 100; do
  "$bin/mandate-bench" feed --url http://127.0.0.1:$port --admin-token-file "$work/config/admin.token" --subscribers $n --revocations 100
done
