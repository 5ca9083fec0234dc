#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the multi-worker search test and print its URL.
# Installs the Debian package when the server binaries are missing; the cluster lives in a
# temporary folder, listens on 127.0.0.1 only and trusts local connections. Any failure
# exits non-zero with the reason on stderr; .ci/run then lets the test skip.
set -euo pipefail
port="${MBU_PG_PORT:-5433}"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin="$(find_bin)"
if [[ -z "$bin" ]]; then
    [[ "$(id -u)" == 0 ]] || { echo "postgresql is not installed and apt-get needs root" >&2; exit 1; }
    echo "installing postgresql (Debian package) ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; }
    bin="$(find_bin)"
    [[ -n "$bin" ]] || { echo "apt-get installed no PostgreSQL server" >&2; exit 1; }
fi

# initdb and the server refuse to run as root: use the postgres account the package creates
as_owner() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
data="$(mktemp -d /tmp/mbu-pg.XXXXXX)"
[[ "$(id -u)" == 0 ]] && chown postgres: "$data"
as_owner "$bin/initdb" -D "$data/db" -U postgres --auth=trust -E UTF8 >"$data/initdb.log" 2>&1 \
    || { cat "$data/initdb.log" >&2; exit 1; }
as_owner "$bin/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >&2 \
    || { cat "$data/server.log" >&2; exit 1; }
as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres mbu_test >&2
echo "postgresql+psycopg2://postgres@127.0.0.1:$port/mbu_test"  # the driver of the dev extra
