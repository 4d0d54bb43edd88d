#!/usr/bin/env bash
# The S3-compatible server the tests use: moto (from the test virtualenv) on loopback, on a free
# port, its pid and port under target/. `start` prints the endpoint to export as
# KILN_TEST_S3_ENDPOINT (a test run without it starts moto itself); `stop` kills it by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${KILN_TEST_VENV:-$PWD/target/test-venv}"
pid_file=target/moto.pid
log_file=target/moto.log

case "${1:-}" in
  start)
    mkdir -p target
    port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
    for _ in $(seq 1 300); do
      if "$venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
        echo "http://127.0.0.1:$port"
        exit 0
      fi
      kill -0 "$(cat "$pid_file")" 2>/dev/null || break
      sleep 0.2
    done
    echo "moto did not start on port $port; its log:" >&2
    cat "$log_file" >&2
    exit 1
    ;;
  stop)
    if [[ -f "$pid_file" ]]; then
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
