# A throwaway PostgreSQL for the store tests, sourced by .ci/run (bash, set -euo pipefail).
#
#   postgres_start   install the Debian package if no server is there, initialise a cluster in a new
#                    temporary directory, start it on 127.0.0.1 on a free port with password
#                    authentication, create a role that may create databases, and export
#                    FUSION_TEST_DATABASE_URL (the tests make and drop a database of their own per test)
#   postgres_stop    stop it and remove the directory (safe to call twice, or before a start finished)
#
# The cluster trades durability for speed (fsync off): it lives for one CI run.

PG_DIR=""
PG_BIN=""

_pg() {
  # initdb and postgres refuse to run as root: run them as the postgres user when we are root.
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

postgres_start() {
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "== postgresql: installing the Debian package"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
  fi
  PG_BIN=$(dirname "$(compgen -G "/usr/lib/postgresql/*/bin/initdb" | sort -V | tail -1)")
  PG_DIR=$(mktemp -d -t fusion-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
  local port password
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  # The superuser's password file, readable by the postgres user only, gone once initdb has read it.
  (umask 077 && printf '%s\n' "$password" >"$PG_DIR/pw")
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR/pw"
  _pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --pwfile="$PG_DIR/pw" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log"
  rm -f "$PG_DIR/pw"
  _pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 start -o \
    "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    >/dev/null
  # The tests' role: it logs in with a password over TCP and creates (and drops) their databases.
  # (The statement goes on stdin: printf is a shell builtin, so the password never shows in a process list.)
  printf "CREATE ROLE fusion_test LOGIN CREATEDB PASSWORD '%s';\n" "$password" |
    PGPASSWORD="$password" "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1
  export FUSION_TEST_DATABASE_URL="postgresql://fusion_test:${password}@127.0.0.1:${port}/postgres"
  echo "== postgresql $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:${port} (data in ${PG_DIR})"
}

postgres_stop() {
  if [ -n "$PG_DIR" ] && [ -d "$PG_DIR" ]; then
    if [ -f "$PG_DIR/data/postmaster.pid" ]; then
      _pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -w -t 30 stop -m fast >/dev/null || true
    fi
    rm -rf "$PG_DIR"
  fi
  PG_DIR=""
}
