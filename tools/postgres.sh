#!/usr/bin/env bash
# Start PostgreSQL for the store tests (CI: root on Debian) and print, as the last line
# of stdout,
#   SCANWARD_TEST_POSTGRES_URL=postgresql+psycopg://scanward:...@127.0.0.1:5432/scanward
# for `.ci/run` to export:  eval "export $(bash tools/postgres.sh | tail -n 1)"
#
# Installs Debian's postgresql package if missing, starts the newest installed version's
# default cluster (creating it if absent), and makes the role `scanward` (LOGIN CREATEDB:
# the tests create one database per test) and the database `scanward`. Idempotent: a
# second run only prints. Everything else goes to stderr.
set -euo pipefail

ROLE=scanward
DB=scanward
PASSWORD=${SCANWARD_PG_PASSWORD:-scanward-test}  # a test-only password, not a secret
CLUSTER=main

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages and starts the cluster)"
case "$PASSWORD" in *[!A-Za-z0-9._-]*) die "SCANWARD_PG_PASSWORD: use [A-Za-z0-9._-] only";; esac

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null \
    || ! command -v pg_lsclusters >/dev/null; then
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
[ -x "/usr/lib/postgresql/$VERSION/bin/postgres" ] || die "no PostgreSQL server binaries found"

cluster_field() {  # $1: column of `pg_lsclusters -h` (3 port, 4 status)
  pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" -v f="$1" '$1 == v && $2 == c { print $f }'
}

if [ -z "$(cluster_field 2)" ]; then
  log "creating cluster $VERSION/$CLUSTER"
  pg_createcluster "$VERSION" "$CLUSTER" >&2
fi
PORT=$(cluster_field 3)
if [ "$(cluster_field 4)" != online ]; then
  log "starting cluster $VERSION/$CLUSTER on port $PORT"
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "cluster $VERSION/$CLUSTER is not accepting connections on 127.0.0.1:$PORT"

as_postgres() ( cd / && runuser -u postgres -- psql -p "$PORT" -X -q -t -A -v ON_ERROR_STOP=1 "$@" )

role=$(as_postgres -c "SELECT rolcanlogin::int::text || rolcreatedb::int::text FROM pg_roles WHERE rolname = '$ROLE'")
if [ -z "$role" ]; then
  log "creating role $ROLE"
  as_postgres -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
elif [ "$role" != 11 ]; then
  log "granting LOGIN CREATEDB to role $ROLE"
  as_postgres -c "ALTER ROLE $ROLE LOGIN CREATEDB"
fi
if [ -z "$(as_postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
  log "creating database $DB"
  as_postgres -c "CREATE DATABASE $DB OWNER $ROLE"
fi
if ! PGPASSWORD=$PASSWORD PGCONNECT_TIMEOUT=10 psql -X -q -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DB" \
    -c "SELECT 1" >/dev/null 2>&1; then
  log "setting the password of role $ROLE"
  as_postgres -c "ALTER ROLE $ROLE PASSWORD '$PASSWORD'"
  PGPASSWORD=$PASSWORD psql -X -q -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DB" -c "SELECT 1" >/dev/null \
    || die "cannot log in as $ROLE on 127.0.0.1:$PORT (check pg_hba.conf)"
fi

echo "SCANWARD_TEST_POSTGRES_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
