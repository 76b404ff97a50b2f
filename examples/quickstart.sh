#!/usr/bin/env bash
# The README's five-minute walkthrough, start to end, against a fresh broker
# of its own (a temporary directory and port; nothing of yours is touched).
# `scripts/test.sh` runs it, so the README cannot drift from what works.
#
#   bash examples/quickstart.sh            # uses `mandate` from PATH
#   MANDATE_BIN=target/debug/mandate bash examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mandate() { "${MANDATE_BIN:-mandate}" "$@"; }
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/mandate-quickstart.XXXXXX")
export MANDATE_CONFIG_DIR=$work/config MANDATE_DATA_DIR=$work/data
unset MANDATE_MASTER_KEY MANDATE_ADMIN_TOKEN_FILE MANDATE_TENANT
port=${MANDATE_QUICKSTART_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 8417)}
export MANDATE_URL=http://127.0.0.1:$port
"${MANDATE_BIN:-mandate}" serve --listen "127.0.0.1:$port" >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  mandate tenant list >/dev/null 2>&1 && break
  kill -0 $broker 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
  sleep 0.1
done
cd "$work"

# --- Register: a tenant, a human, an agent, a tool, a grant and a policy.
step mandate tenant create acme
mandate tenant create acme
mandate principal create --tenant acme alice@example.com
mandate agent create --tenant acme support-bot --owner team-support \
    --purpose "answers tickets" --envelope 'crm:*'
mandate tool create --tenant acme crm --audience https://crm.acme.example \
    --action read --action write --label pii --max-ttl 2m
step 'GRANT=$(mandate -q grant create ...)'
GRANT=$(mandate -q grant create --tenant acme --principal alice@example.com \
    --agent support-bot --cap crm:read --task "answer ticket 42")
mandate policy add --tenant acme "$root/examples/policies/baseline.cedar"

# --- A run on Alice's behalf, with a key only the run holds.
step mandate key generate --out run.jwk
mandate key generate --out run.jwk
step 'RUN=$(mandate -q run start ... --jwk run.jwk --out run.mandate)'
RUN=$(mandate -q run start --tenant acme --agent support-bot \
    --principal alice@example.com --grant "$GRANT" --jwk run.jwk --out run.mandate)

# --- At a tool call: the mandate and a proof of the key, for a credential.
step 'CRED=$(mandate token exchange --mandate-file run.mandate --key-file run.jwk --tool crm --action read)'
CRED=$(mandate token exchange --mandate-file run.mandate --key-file run.jwk --tool crm --action read)
mandate token inspect "$CRED"
step 'mandate token exchange ... --action write     # not granted: refused, exit 4'
set +e
mandate token exchange --mandate-file run.mandate --key-file run.jwk --tool crm --action write
code=$?
set -e
[ "$code" = 4 ] || { echo "expected exit 4 (refused), got $code" >&2; exit 1; }

# --- See what happened, cut the run off, check the trail.
step mandate audit --tenant acme
mandate audit --tenant acme
mandate audit --decision deny --since 1h
mandate run list --tenant acme
step mandate revoke --run "\$RUN" --reason done
mandate revoke --run "$RUN" --reason "done"
set +e
mandate token exchange --mandate-file run.mandate --key-file run.jwk --tool crm --action read
code=$?
set -e
[ "$code" = 4 ] || { echo "expected exit 4 (revoked), got $code" >&2; exit 1; }
step mandate audit verify
mandate audit verify
mandate audit checkpoint --out cp.jws
mandate audit verify --checkpoint cp.jws
printf '\nquickstart: every step worked\n' >&2
