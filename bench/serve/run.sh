#!/usr/bin/env bash
# Serving benchmark: Kiln vs `mlflow models serve` vs MLServer (mlserver-sklearn) vs a no-op axum endpoint,
# on one scikit-learn LogisticRegression (iris), single-row JSON requests, wrk on loopback, 64 connections.
#
# Usage: bench/serve/run.sh            (DURATION=10 WARMUP=2 CONNECTIONS=64 THREADS=1 to change)
# Needs: wrk, cargo, python3 with scikit-learn + skl2onnx (for the ONNX export), network access to PyPI the
# first time (peers are installed into virtualenvs under $WORK). Prints throughput, p50, p99, non-2xx and ratios.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${KILN_BENCH_DIR:-$ROOT/target/bench-serve}"
PY="${PYTHON:-python3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
export MLFLOW_DISABLE_TELEMETRY=true
mkdir -p "$WORK"
cd "$WORK"

log() { echo "[bench] $*" >&2; }

# --- peers, each in its own virtualenv -------------------------------------------------------------------
if [ ! -x mlflow-venv/bin/mlflow ]; then
  log "installing mlflow into $WORK/mlflow-venv"
  "$PY" -m venv mlflow-venv
  mlflow-venv/bin/pip install -q 'mlflow==3.17.*' scikit-learn
fi
if [ ! -x mlserver-venv/bin/mlserver ]; then
  log "installing mlserver into $WORK/mlserver-venv"
  "$PY" -m venv mlserver-venv
  mlserver-venv/bin/pip install -q 'mlserver==1.7.1' 'mlserver-sklearn==1.7.1' 'uvloop<0.22' scikit-learn joblib
fi

log "building kiln and the no-op baseline (release)"
(cd "$ROOT" && cargo build -q --release -p kiln -p kiln-serve --bin kiln --example noop_server)
TARGET="$(cd "$ROOT" && cargo metadata -q --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
KILN="$TARGET/release/kiln"
NOOP="$TARGET/release/examples/noop_server"

# --- one model, trained identically (deterministic lbfgs) in each environment -----------------------------
TRAIN='
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500).fit(X, y)
'
rm -rf models && mkdir -p models/mlserver
mlflow-venv/bin/python -c "$TRAIN
import mlflow.sklearn
mlflow.sklearn.save_model(model, 'models/mlflow')"
mlserver-venv/bin/python -c "$TRAIN
import joblib
joblib.dump(model, 'models/mlserver/model.joblib')"
"$PY" -c "$TRAIN
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
onx = convert_sklearn(model, initial_types=[('float_input', FloatTensorType([None, 4]))], options={id(model): {'zipmap': False}})
open('models/iris.onnx', 'wb').write(onx.SerializeToString())"
cat > models/mlserver/model-settings.json <<'JSON'
{"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}
JSON

echo '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}' > body-mlflow.json
echo '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}' > body-kiln-v2.json
echo '{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}' > body-mlserver-v2.json

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT

# start NAME CMD...: runs CMD in its own process group (peers spawn workers), logs to $WORK/NAME.log
start() {
  local name="$1"; shift
  setsid "$@" > "$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
}

# wait_ok URL BODY: until one real request answers 2xx (fails after 60 s)
wait_ok() {
  for _ in $(seq 600); do
    if curl -fsS -o /dev/null -H 'Content-Type: application/json' --data-binary "@$2" "$1" 2>/dev/null; then
      curl -sS -H 'Content-Type: application/json' --data-binary "@$2" "$1" >&2; echo >&2
      return 0
    fi
    sleep 0.1
  done
  log "server at $1 never answered; see its log in $WORK"; return 1
}

RESULTS="$WORK/results.txt"
: > "$RESULTS"
# measure LABEL URL BODY
measure() {
  wait_ok "$2" "$3"
  BODY_FILE="$3" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$HERE/post.lua" "$2" > /dev/null
  local out load
  out="$(BODY_FILE="$3" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$HERE/post.lua" "$2" | grep '^RESULT')"
  load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "$1 $out load=$load" >> "$RESULTS"
  log "$1: $out"
}

PORT=$(free_port)
start noop "$NOOP" "$PORT"
measure noop "http://127.0.0.1:$PORT/invocations" body-mlflow.json
stop_server

PORT=$(free_port)
start kiln "$KILN" serve models/iris.onnx --port "$PORT" --watch-interval-ms 0
measure kiln-mlflow-json "http://127.0.0.1:$PORT/invocations" body-mlflow.json
measure kiln-v2 "http://127.0.0.1:$PORT/v2/models/iris/infer" body-kiln-v2.json
stop_server

PORT=$(free_port)
start mlflow env PATH="$WORK/mlflow-venv/bin:$PATH" mlflow models serve -m models/mlflow -p "$PORT" -h 127.0.0.1 --env-manager local
measure mlflow "http://127.0.0.1:$PORT/invocations" body-mlflow.json
stop_server

PORT=$(free_port); GRPC=$(free_port)
cat > models/mlserver/settings.json <<JSON
{"host": "127.0.0.1", "http_port": $PORT, "grpc_port": $GRPC, "metrics_endpoint": null, "parallel_workers": 0}
JSON
(cd models/mlserver && start mlserver env PATH="$WORK/mlserver-venv/bin:$PATH" mlserver start . ; echo "$SERVER_PID" > "$WORK/mlserver.pid")
SERVER_PID="$(cat "$WORK/mlserver.pid")"
measure mlserver "http://127.0.0.1:$PORT/v2/models/iris/infer" body-mlserver-v2.json
stop_server

"$PY" - "$RESULTS" "$CONNECTIONS" "$DURATION" <<'PYEOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, _, *fields = line.split()
    kv = dict(f.split("=") for f in fields)
    rps = int(kv["requests"]) / (int(kv["duration_us"]) / 1e6)
    rows[label] = (rps, int(kv["p50_us"]) / 1000, int(kv["p99_us"]) / 1000, int(kv["non2xx"]) + int(kv["errors"]), kv["load"])
print(f"\nsingle-row requests, wrk {sys.argv[2]} connections, {sys.argv[3]} s per run, loopback")
print(f"{'server':<18}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'load':>7}")
for label, (rps, p50, p99, bad, load) in rows.items():
    print(f"{label:<18}{rps:>11,.0f}{p50:>9.2f}{p99:>9.2f}{bad:>9}{load:>7}")
kiln = rows.get("kiln-mlflow-json", (0,))[0]
for peer in ("mlflow", "mlserver", "noop"):
    if peer in rows and rows[peer][0] > 0:
        print(f"kiln (mlflow json) / {peer}: {kiln / rows[peer][0]:.2f}x")
if "kiln-v2" in rows and "mlserver" in rows:
    print(f"kiln (v2) / mlserver (v2): {rows['kiln-v2'][0] / rows['mlserver'][0]:.2f}x")
PYEOF
