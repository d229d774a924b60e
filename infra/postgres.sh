#!/usr/bin/env bash
# PostgreSQL from Debian's packages, a private cluster for development and tests. No Docker.
#
#   infra/postgres.sh start   install (apt) if missing, initdb once, start; idempotent
#   infra/postgres.sh stop    stop the cluster started here
#   infra/postgres.sh status  exit 0 when it accepts connections
#
# Environment: PG_PORT (default 15432), PG_HOME (default infra/.state/postgres-$PG_PORT),
# PG_POD_ADDRESS (also listen there for infra/cluster.sh's pods when the address exists; default
# 172.30.0.1), PG_EXTRA_LISTEN (more loopback addresses to listen on, comma-separated: the chaos
# suite gives one service its own, to cut it off alone).
# Connect as postgres://sharedcare:sharedcare@127.0.0.1:$PG_PORT/sharedcare
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${PG_PORT:-15432}"
home="${PG_HOME:-$here/.state/postgres-$port}"
data="$home/data"

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

install() {
  if ! find_bin >/dev/null; then
    echo "postgres.sh: installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
  fi
}

# initdb and postgres refuse to run as root: run them as the postgres system user when we are root.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url="postgres://sharedcare:sharedcare@127.0.0.1:$port/sharedcare"

start() {
  install
  local bin; bin="$(find_bin)"
  if as_pg "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
    echo "postgres: already running, $url"; return 0
  fi
  mkdir -p "$home"
  [ "$(id -u)" = 0 ] && chown postgres: "$home"
  if [ ! -f "$data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$home/initdb.log" 2>&1 \
      || { cat "$home/initdb.log" >&2; exit 1; }
    cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$home'
max_connections = 300
shared_buffers = 128MB
fsync = on
synchronous_commit = on
CONF
  fi
  # Pods of infra/cluster.sh's node reach it on the node's address, from the pod network, with
  # the password (when that address exists; loopback alone otherwise).
  local listen="127.0.0.1${PG_EXTRA_LISTEN:+,$PG_EXTRA_LISTEN}" pod_address="${PG_POD_ADDRESS:-172.30.0.1}"
  # A here-string, not a pipe: under pipefail, grep -q's early exit fails the pipeline.
  if grep -q "inet $pod_address/" <<<"$(ip -4 addr show 2>/dev/null)"; then
    listen="$listen,$pod_address"
    grep -q '^host all all 10.244.0.0/16 scram-sha-256' "$data/pg_hba.conf" \
      || echo 'host all all 10.244.0.0/16 scram-sha-256' >> "$data/pg_hba.conf"
  fi
  as_pg "$bin/pg_ctl" -D "$data" -l "$home/postgres.log" -w -t 60 -o "-c listen_addresses=$listen" start >/dev/null
  as_pg "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sharedcare') THEN
    CREATE ROLE sharedcare LOGIN SUPERUSER PASSWORD 'sharedcare';
  END IF;
END \$\$;
SQL
  if ! as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='sharedcare'" | grep -q 1; then
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres -O sharedcare sharedcare
  fi
  echo "postgres: started, $url"
}

stop() {
  local bin; bin="$(find_bin)" || { echo "postgres: not installed"; return 0; }
  if [ -f "$data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null && echo "postgres: stopped (port $port)"
  else
    echo "postgres: not running (port $port)"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) bin="$(find_bin)" && as_pg "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" ;;
  url) echo "$url" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
