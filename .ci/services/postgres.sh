#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: on 127.0.0.1 only, trust authentication, its
# data in a folder of its own.
#
#   postgres.sh start [DIR]  initialise DIR (default: the target folder's `postgres/`), start the
#                            server in the background and print its URL on stdout
#   postgres.sh stop [DIR]   stop the server of DIR and remove DIR
#   postgres.sh serve DIR    start, print the URL, then wait until stdin closes and stop: the
#                            Rust test harness holds stdin, so the server ends with the tests
#
# initdb refuses to run as root: as root, the cluster belongs to the `postgres` user.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [[ -z "$bindir" ]]; then
  bindir=$(dirname "$(command -v initdb || echo /missing/initdb)")
fi
if [[ ! -x "$bindir/initdb" ]]; then
  echo "postgres.sh: PostgreSQL is not installed (no initdb); install the \`postgresql\` package" >&2
  exit 1
fi

# Runs a command as the owner of the cluster.
as_owner() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

folder() {
  realpath -m "${1:-${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}/postgres}"
}

start() {
  local dir
  dir=$(folder "${1:-}")
  if [[ -f "$dir/url" ]] && as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    cat "$dir/url"
    return
  fi
  rm -rf "$dir"
  mkdir -p "$dir/socket"
  if [[ $(id -u) == 0 ]]; then
    chown -R postgres: "$dir"
  fi
  cd "$dir"
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  local port
  port=$(free_port)
  # Durability is not what these tests measure: fsync off keeps them fast.
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/socket -c fsync=off -c max_connections=200" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  echo "postgres://postgres@127.0.0.1:$port/postgres" | as_owner tee "$dir/url"
}

stop() {
  local dir
  dir=$(folder "${1:-}")
  if [[ -d "$dir/data" ]]; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  serve)
    [[ -n "${2:-}" ]] || { echo "usage: postgres.sh serve DIR" >&2; exit 2; }
    start "$2"
    # Until whoever started us closes our stdin (or dies).
    cat >/dev/null || true
    stop "$2"
    ;;
  *)
    echo "usage: postgres.sh start|stop [DIR], or postgres.sh serve DIR" >&2
    exit 2
    ;;
esac
