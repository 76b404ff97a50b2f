#!/usr/bin/env bash
# Makes sure a PostgreSQL server for the tests runs on 127.0.0.1, installing
# Debian's `postgresql` when it is missing, and prints the admin connection
# string the tests use (MANDATE_TEST_PG). Idempotent: a server already
# running on the port is reused.
#
#   export MANDATE_TEST_PG=$(scripts/pg.sh)
set -euo pipefail

port=${MANDATE_PG_PORT:-54329}
dir=${MANDATE_PG_DIR:-/var/tmp/mandate-pg-$port}
password=mandate_test_admin
dsn="postgresql://mandate_admin:$password@127.0.0.1:$port/postgres"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/postgres" ]; then
  echo "==> installing PostgreSQL (Debian's postgresql)" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

# PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres`.
run() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if ! "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    chmod 700 "$dir"
    pwfile=$(mktemp)
    echo "$password" > "$pwfile"
    chmod 644 "$pwfile"
    run "$bindir/initdb" -D "$dir" -U mandate_admin --auth=scram-sha-256 \
      --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >&2
    rm -f "$pwfile"
  fi
  run "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c max_connections=200 -c fsync=off" >&2
fi
echo "$dsn"
