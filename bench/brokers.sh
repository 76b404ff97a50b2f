#!/usr/bin/env bash
# Issue 14: W1 (../shared/BENCH.md) on the embedded SQLite store (one
# broker), on PostgreSQL with one broker, and on PostgreSQL with two brokers
# (the load split evenly between them, as a round-robin balancer would);
# then W3 across brokers: revoke at one, 100 feed subscribers spread over
# both. All in one run, so the ratios compare like with like. Needs wrk.
#   bash bench/brokers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mandate-target}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p mandate-cli -p mandate-bench
bin=$CARGO_TARGET_DIR/release
pg=$(bash scripts/pg.sh 2>/dev/null)
work=$(mktemp -d /tmp/mandate-brokers.XXXXXX)
pids=()
trap 'kill ${pids[@]:-} 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
export RUST_LOG=${RUST_LOG:-warn}
# Every broker on one database shares the master key (and the issuer).
MANDATE_MASTER_KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
export MANDATE_MASTER_KEY
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%F)"

db=0
fresh_db() { # a new database on the test server; prints its URL
  db=$((db + 1))
  local name="mbench_$$_$RANDOM$RANDOM"
  psql_exec "CREATE DATABASE $name"
  echo "${pg%/*}/$name"
}
psql_exec() {
  psql -q "$pg" -c "$1" >/dev/null
}

# serve NAME PORT ISSUER [STORE]: a broker with its own directories.
serve() {
  local name=$1 port=$2 issuer=$3 store=${4:-}
  mkdir -p "$work/$name"
  if [ -n "$store" ]; then export MANDATE_STORE=$store; else unset MANDATE_STORE; fi
  MANDATE_CONFIG_DIR=$work/$name/config MANDATE_DATA_DIR=$work/$name/data \
    "$bin/mandate" serve --listen 127.0.0.1:$port --issuer "$issuer" --dpop-replay-per-key 2000000 \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:$port/healthz && return; sleep 0.1; done
  echo "broker $name did not start: $(tail -3 "$work/$name.log")"; exit 1
}

# load NAME URL...: W1 with the proofs made for the first URL's issuer, the
# 16 connections split evenly over the URLs; prints the sum.
load() {
  local name=$1; shift
  local n=$# i=0 urls=("$@")
  "$bin/mandate-bench" prep --url "${urls[0]}" --admin-token-file "$work/$name/config/admin.token" --out "$work/$name" --alg EdDSA >/dev/null
  for f in warm count; do
    for ((i = 0; i < n; i++)); do
      awk -v n=$n -v i=$i 'NR % n == i' "$work/$name/proofs-$f.txt" >"$work/$name/proofs-$f-$i.txt"
    done
  done
  for ((i = 0; i < n; i++)); do
    BODY=$work/$name/body.txt PROOFS=$work/$name/proofs-warm-$i.txt THREADS=1 \
      wrk -t1 -c$((16 / n)) -d3s -s bench/w1.lua "${urls[$i]}" >/dev/null 2>&1 &
  done
  wait_wrk
  for ((i = 0; i < n; i++)); do
    BODY=$work/$name/body.txt PROOFS=$work/$name/proofs-count-$i.txt THREADS=1 \
      wrk -t1 -c$((16 / n)) -d15s --latency -s bench/w1.lua "${urls[$i]}" >"$work/$name/wrk-$i.txt" 2>&1 &
  done
  wait_wrk
  local total=0 non2xx=0
  for ((i = 0; i < n; i++)); do
    grep -E 'Requests/sec|99%|Non-2xx' "$work/$name/wrk-$i.txt" | sed "s|^|  [${urls[$i]}] |"
    total=$(awk -v t=$total -v r="$(awk '/Requests\/sec/ {print $2}' "$work/$name/wrk-$i.txt")" 'BEGIN{printf "%.0f", t + r}')
  done
  echo "$name: $total exchanges/s in all"
  eval "rate_$name=$total"
}
wait_wrk() { while pgrep -x wrk >/dev/null; do sleep 0.2; done; }

echo "== W1, SQLite, one broker"
serve sqlite 18501 http://127.0.0.1:18501
load sqlite http://127.0.0.1:18501
kill "${pids[-1]}"

echo "== W1, PostgreSQL, one broker"
url=$(fresh_db)
serve pg1 18502 http://127.0.0.1:18502 "$url"
load pg1 http://127.0.0.1:18502
kill "${pids[-1]}"

echo "== W1, PostgreSQL, two brokers (one issuer, the load split evenly)"
url=$(fresh_db)
serve pg2 18503 http://127.0.0.1:18503 "$url"
serve pg2b 18504 http://127.0.0.1:18503 "$url"
# A broker that joins (or restarts) asks for its DPoP nonce for proofs dated
# up to the skew after its start (it cannot know them); the load's proofs
# are made after that.
sleep 7
load pg2 http://127.0.0.1:18503 http://127.0.0.1:18504
verify=$(curl -sf -H "Authorization: Bearer $(cat "$work/pg2/config/admin.token")" http://127.0.0.1:18504/v1/audit/verify)
echo "audit verify at the second broker after the load: $verify"
echo "ratios: PostgreSQL 1 broker / SQLite = $(awk -v a=$rate_pg1 -v b=$rate_sqlite 'BEGIN{printf "%.2f", a/b}'); 2 brokers / 1 broker = $(awk -v a=$rate_pg2 -v b=$rate_pg1 'BEGIN{printf "%.2f", a/b}')"

echo "== W3 across brokers: revoke at the first, verifiers subscribed half to each"
for n in 1 100; do
  "$bin/mandate-bench" w3 --url http://127.0.0.1:18503 --feed-url http://127.0.0.1:18503 --feed-url http://127.0.0.1:18504 \
    --admin-token-file "$work/pg2/config/admin.token" --verifiers $n --rounds "${ROUNDS:-100}"
done
