#!/usr/bin/env bash
# Starts the machine's Postgres (Debian's `postgresql`, installed if missing) and makes sure
# a `fuse_test` role that may create databases exists, with a generated password kept in a
# root-only file beside the cluster (so several checkouts on one machine share it instead
# of locking each other out). Prints `export FUSE_TEST_DATABASE_URL=…` for the caller to eval. Loopback only.
set -euo pipefail

as_postgres() { su postgres -s /bin/sh -c "$1"; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
fi
version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
cluster=$(pg_lsclusters -h | awk 'NR==1 {print $2}')
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  cluster=main
  pg_createcluster "$version" "$cluster" >&2
fi
pg_ctlcluster "$version" "$cluster" start >&2 2>&1 || true
port=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $3}')
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.2
done
pg_isready -h 127.0.0.1 -p "$port" >&2

secret_file="/var/lib/postgresql/.fuse_test_password"
password=""
if [ -r "$secret_file" ]; then
  password=$(cat "$secret_file")
  PGPASSWORD="$password" psql -qAt -h 127.0.0.1 -p "$port" -U fuse_test -d postgres -c 'SELECT 1' >/dev/null 2>&1 || password=""
fi
if [ -z "$password" ]; then
  password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  (umask 077; printf '%s' "$password" > "$secret_file")
fi
as_postgres "psql -q -p $port -v ON_ERROR_STOP=1" >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fuse_test') THEN
    CREATE ROLE fuse_test LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE fuse_test PASSWORD '$password';
SQL
# Databases left by earlier runs (one still in use refuses to be dropped and stays).
as_postgres "psql -qAt -p $port -c \"SELECT datname FROM pg_database WHERE datname LIKE 'fuse_test_%'\"" |
  while read -r db; do as_postgres "dropdb -p $port --if-exists $db" >&2 || true; done
echo "export FUSE_TEST_DATABASE_URL=postgres://fuse_test:$password@127.0.0.1:$port/postgres"
