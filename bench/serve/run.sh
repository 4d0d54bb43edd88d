#!/usr/bin/env bash
# Serving benchmark: Kiln vs `mlflow models serve` vs MLServer (mlserver-sklearn) vs a no-op axum endpoint,
# wrk on loopback, 64 connections, one server at a time. Rows:
#   single   one scikit-learn LogisticRegression (iris), single-row JSON requests (DURATION s per run)
#   batch    the same LogisticRegression, one request = BATCH_ROWS rows (EXTRA_DURATION s per run)
#   rf       a RandomForestClassifier (RF_TREES trees, random_state=0, iris), single-row (EXTRA_DURATION s)
#   py       Kiln serving a `predict.py` model that wraps the same LogisticRegression (joblib), single-row
#            (EXTRA_DURATION s); compared with the mlflow single-row row (mlflow serves that model's pyfunc)
#   cold     process start to first successful prediction, polled with curl every 10 ms; median of
#            COLD_STARTS starts each: Kiln (ONNX; and ONNX with ORT_DYLIB_PATH given), Kiln (predict.py),
#            mlflow, MLServer
#
# Usage: bench/serve/run.sh
#   knobs: DURATION=10 WARMUP=2 CONNECTIONS=64 THREADS=1 EXTRA_DURATION=5 BATCH_ROWS=100 RF_TREES=100
#          COLD_STARTS=3 PY_WORKERS= (Kiln's predict.py workers; empty: Kiln's default, cores up to 4)
# Needs: wrk, curl, cargo, python3 with scikit-learn + skl2onnx + onnxruntime + joblib, network access to
# PyPI the first time (peers are installed into virtualenvs under $WORK). Prints throughput, p50, p99,
# non-2xx, the 1-minute load average per row, ratios and the issue's targets.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${KILN_BENCH_DIR:-$ROOT/target/bench-serve}"
PY="${PYTHON:-python3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
EXTRA_DURATION="${EXTRA_DURATION:-5}"
BATCH_ROWS="${BATCH_ROWS:-100}"
RF_TREES="${RF_TREES:-100}"
COLD_STARTS="${COLD_STARTS:-3}"
PY_WORKERS="${PY_WORKERS:-}"
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
# The real interpreter behind $PY (not a pyenv shim): runs Kiln's predict.py workers.
PY_EXE="$("$PY" -c 'import sys; print(sys.executable)')"

# --- the models, trained identically (deterministic lbfgs; random_state=0) in each environment ------------
TRAIN='
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500).fit(X, y)
rf = RandomForestClassifier(n_estimators='"$RF_TREES"', random_state=0).fit(X, y)
'
rm -rf models && mkdir -p models/mlserver models/mlserver-rf models/py-iris
mlflow-venv/bin/python -c "$TRAIN
import mlflow.sklearn
mlflow.sklearn.save_model(model, 'models/mlflow')
mlflow.sklearn.save_model(rf, 'models/mlflow-rf', skops_trusted_types=['sklearn.tree._tree.Tree'])"
mlserver-venv/bin/python -c "$TRAIN
import joblib
joblib.dump(model, 'models/mlserver/model.joblib')
joblib.dump(rf, 'models/mlserver-rf/model.joblib')"
"$PY" -c "$TRAIN
import joblib
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
for m, path in ((model, 'models/iris.onnx'), (rf, 'models/iris-rf.onnx')):
    onx = convert_sklearn(m, initial_types=[('float_input', FloatTensorType([None, 4]))], options={id(m): {'zipmap': False}})
    open(path, 'wb').write(onx.SerializeToString())
joblib.dump(model, 'models/py-iris/model.joblib')"
cat > models/py-iris/predict.py <<'PYMODEL'
# Kiln predict.py model: the iris LogisticRegression, unpickled with joblib.
import os

import joblib

SIGNATURE = {
    "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}],
    "outputs": [{"name": "predictions", "datatype": "INT64", "shape": [-1]}],
}


def load(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict(inputs, model):
    return {"predictions": model.predict(inputs["input"])}
PYMODEL
cat > models/mlserver/model-settings.json <<'JSON'
{"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}
JSON
cat > models/mlserver-rf/model-settings.json <<'JSON'
{"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}
JSON

echo '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}' > body-mlflow.json
echo '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}' > body-kiln-v2.json
echo '{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}' > body-mlserver-v2.json
# BATCH_ROWS iris rows spread over the three classes, the same numbers in every body
"$PY" - "$BATCH_ROWS" <<'PYEOF'
import json, sys
from sklearn.datasets import load_iris
X = load_iris().data
n = int(sys.argv[1])
rows = [[float(v) for v in X[i * len(X) // n % len(X)]] for i in range(n)]
flat = [v for r in rows for v in r]
json.dump({"inputs": rows}, open("body-batch-mlflow.json", "w"))
json.dump({"inputs": [{"name": "float_input", "shape": [n, 4], "datatype": "FP32", "data": flat}]}, open("body-batch-kiln-v2.json", "w"))
json.dump({"inputs": [{"name": "input-0", "shape": [n, 4], "datatype": "FP64", "data": flat}]}, open("body-batch-mlserver-v2.json", "w"))
PYEOF

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
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

# Launchers: start one server on $PORT (set by the caller).
launch_noop() { start noop "$NOOP" "$PORT"; }
# launch_kiln NAME MODEL [ARGS...]
launch_kiln() {
  local name="$1" model="$2"; shift 2
  start "$name" "$KILN" serve "$model" --port "$PORT" --watch-interval-ms 0 "$@"
}
launch_kiln_py() {
  local args=(--python "$PY_EXE")
  [ -z "$PY_WORKERS" ] || args+=(--workers "$PY_WORKERS")
  launch_kiln kiln-py models/py-iris "${args[@]}"
}
launch_kiln_ort() { ORT_DYLIB_PATH="$ORT_LIB" launch_kiln kiln-ort models/iris.onnx; }
# launch_mlflow MODEL_DIR
launch_mlflow() {
  start mlflow env PATH="$WORK/mlflow-venv/bin:$PATH" mlflow models serve -m "$1" -p "$PORT" -h 127.0.0.1 --env-manager local
}
# launch_mlserver DIR: MLServer serving the model-settings.json in DIR (its own gRPC port, no metrics server)
launch_mlserver() {
  local grpc
  grpc=$(free_port)
  cat > "$1/settings.json" <<JSON
{"host": "127.0.0.1", "http_port": $PORT, "grpc_port": $grpc, "metrics_endpoint": null, "parallel_workers": 0}
JSON
  ( cd "$1" && exec setsid env PATH="$WORK/mlserver-venv/bin:$PATH" mlserver start . > "$WORK/$(basename "$1").log" 2>&1 ) &
  SERVER_PID=$!
}

# wait_ok URL BODY: until one real request answers 2xx (fails after 60 s)
wait_ok() {
  for _ in $(seq 600); do
    if curl -fsS -o /dev/null -H 'Content-Type: application/json' --data-binary "@$2" "$1" 2>/dev/null; then
      # head closes the pipe early on a long answer: curl then fails, which pipefail must not see
      { curl -sS -H 'Content-Type: application/json' --data-binary "@$2" "$1" 2>/dev/null || true; } | head -c 300 >&2
      echo >&2
      return 0
    fi
    sleep 0.1
  done
  log "server at $1 never answered; see its log in $WORK"; return 1
}

RESULTS="$WORK/results.txt"
: > "$RESULTS"
# measure GROUP/LABEL URL BODY [SECONDS]
measure() {
  wait_ok "$2" "$3"
  BODY_FILE="$3" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$HERE/post.lua" "$2" > /dev/null
  local out load
  out="$(BODY_FILE="$3" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${4:-$DURATION}s" -s "$HERE/post.lua" "$2" | grep '^RESULT')"
  load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "$1 $out seconds=${4:-$DURATION} load=$load" >> "$RESULTS"
  log "$1: $out load=$load"
}

# cold LABEL URL_PATH BODY LAUNCHER [ARGS...]: COLD_STARTS times, ms from launch to the first 2xx prediction
# (curl polls every 10 ms; each poll costs a curl process, so the resolution is ~10-20 ms)
cold() {
  local label="$1" path="$2" body="$3"; shift 3
  local times=() t0 t1 ok
  for _ in $(seq "$COLD_STARTS"); do
    PORT=$(free_port)
    ok=""
    t0=$EPOCHREALTIME
    "$@"
    for _ in $(seq 12000); do
      if curl -fs -o /dev/null --max-time 5 -H 'Content-Type: application/json' --data-binary "@$body" "http://127.0.0.1:$PORT$path" 2>/dev/null; then
        ok=1; break
      fi
      sleep 0.01
    done
    t1=$EPOCHREALTIME
    stop_server
    [ -n "$ok" ] || { log "cold start of $label never answered; see the logs in $WORK"; return 1; }
    times+=("$(( (${t1/./} - ${t0/./}) / 1000 ))")
  done
  local load; load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "cold/$label COLD ms=$(IFS=,; echo "${times[*]}") load=$load" >> "$RESULTS"
  log "cold/$label: ${times[*]} ms load=$load"
}

# --- throughput rows; one server at a time --------------------------------------------------------------
PORT=$(free_port); launch_noop
measure single/noop "http://127.0.0.1:$PORT/invocations" body-mlflow.json
measure batch/noop "http://127.0.0.1:$PORT/invocations" body-batch-mlflow.json "$EXTRA_DURATION"
stop_server

PORT=$(free_port); launch_kiln kiln models/iris.onnx
measure single/kiln-mlflow-json "http://127.0.0.1:$PORT/invocations" body-mlflow.json
measure single/kiln-v2 "http://127.0.0.1:$PORT/v2/models/iris/infer" body-kiln-v2.json
measure batch/kiln-mlflow-json "http://127.0.0.1:$PORT/invocations" body-batch-mlflow.json "$EXTRA_DURATION"
measure batch/kiln-v2 "http://127.0.0.1:$PORT/v2/models/iris/infer" body-batch-kiln-v2.json "$EXTRA_DURATION"
stop_server

PORT=$(free_port); launch_mlflow models/mlflow
measure single/mlflow "http://127.0.0.1:$PORT/invocations" body-mlflow.json
measure batch/mlflow "http://127.0.0.1:$PORT/invocations" body-batch-mlflow.json "$EXTRA_DURATION"
stop_server

PORT=$(free_port); launch_mlserver models/mlserver
measure single/mlserver "http://127.0.0.1:$PORT/v2/models/iris/infer" body-mlserver-v2.json
measure batch/mlserver "http://127.0.0.1:$PORT/v2/models/iris/infer" body-batch-mlserver-v2.json "$EXTRA_DURATION"
stop_server

PORT=$(free_port); launch_kiln kiln-rf models/iris-rf.onnx
measure rf/kiln-mlflow-json "http://127.0.0.1:$PORT/invocations" body-mlflow.json "$EXTRA_DURATION"
measure rf/kiln-v2 "http://127.0.0.1:$PORT/v2/models/iris-rf/infer" body-kiln-v2.json "$EXTRA_DURATION"
stop_server

PORT=$(free_port); launch_mlflow models/mlflow-rf
measure rf/mlflow "http://127.0.0.1:$PORT/invocations" body-mlflow.json "$EXTRA_DURATION"
stop_server

PORT=$(free_port); launch_mlserver models/mlserver-rf
measure rf/mlserver "http://127.0.0.1:$PORT/v2/models/iris/infer" body-mlserver-v2.json "$EXTRA_DURATION"
stop_server

PORT=$(free_port); launch_kiln_py
measure py/kiln-py-mlflow-json "http://127.0.0.1:$PORT/invocations" body-mlflow.json "$EXTRA_DURATION"
stop_server

# --- cold starts -----------------------------------------------------------------------------------------
ORT_LIB="$(ls "$("$PY" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"/capi/libonnxruntime.so* | sort | tail -n1)"
cold kiln-onnx /invocations body-mlflow.json launch_kiln kiln models/iris.onnx
cold kiln-onnx-ort-path /invocations body-mlflow.json launch_kiln_ort
cold kiln-py /invocations body-mlflow.json launch_kiln_py
cold mlflow /invocations body-mlflow.json launch_mlflow models/mlflow
cold mlserver /v2/models/iris/infer body-mlserver-v2.json launch_mlserver models/mlserver

# --- summary ----------------------------------------------------------------------------------------------
"$PY" - "$RESULTS" "$CONNECTIONS" "$BATCH_ROWS" "$RF_TREES" <<'PYEOF'
import statistics, sys
results, conns, batch_rows, trees = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows, cold = {}, {}
for line in open(results):
    label, kind, *fields = line.split()
    kv = dict(f.split("=", 1) for f in fields)
    group, name = label.split("/", 1)
    if kind == "COLD":
        cold[name] = ([int(x) for x in kv["ms"].split(",")], kv["load"])
        continue
    rps = int(kv["requests"]) / (int(kv["duration_us"]) / 1e6)
    rows.setdefault(group, {})[name] = dict(rps=rps, p50=int(kv["p50_us"]) / 1000, p99=int(kv["p99_us"]) / 1000,
                                           bad=int(kv["non2xx"]), err=int(kv["errors"]), load=kv["load"], secs=kv["seconds"])

titles = {
    "single": "single-row LogisticRegression",
    "batch": f"{batch_rows}-row LogisticRegression requests (rows/s = req/s x {batch_rows})",
    "rf": f"single-row RandomForest ({trees} trees)",
    "py": "single-row LogisticRegression, Kiln predict.py (joblib) model",
}
print(f"\nwrk -c{conns}, loopback, one server at a time; load = 1-min load average after the run;")
print("errors = socket errors and timeouts (wrk gives up on a request after 2 s)")
for group, title in titles.items():
    if group not in rows:
        continue
    print(f"\n{title}")
    print(f"{'server':<22}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}{'secs':>6}{'load':>7}")
    for name, r in rows[group].items():
        print(f"{name:<22}{r['rps']:>11,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['bad']:>9}{r['err']:>8}{r['secs']:>6}{r['load']:>7}")

def ratio(text, a, b):
    if a and b and b["rps"] > 0:
        print(f"  {text}: {a['rps'] / b['rps']:.2f}x")
        return a["rps"] / b["rps"]

def get(group, name):
    return rows.get(group, {}).get(name)

print("\nratios")
for group in ("single", "batch", "rf"):
    for peer in ("mlflow", "mlserver", "noop"):
        ratio(f"{group}: kiln (mlflow json) / {peer}", get(group, "kiln-mlflow-json"), get(group, peer))
    ratio(f"{group}: kiln (v2) / mlserver (v2)", get(group, "kiln-v2"), get(group, "mlserver"))
ratio("py: kiln predict.py / mlflow (single)", get("py", "kiln-py-mlflow-json"), get("single", "mlflow"))
ratio("py: kiln predict.py / mlserver (single)", get("py", "kiln-py-mlflow-json"), get("single", "mlserver"))
ratio("py: kiln predict.py / kiln ONNX (single)", get("py", "kiln-py-mlflow-json"), get("single", "kiln-mlflow-json"))

if cold:
    print("\ncold start: launch to first 2xx prediction (curl every 10 ms)")
    print(f"{'server':<22}{'median ms':>10}  {'runs ms':<22}{'load':>6}")
    for name, (ms, load) in cold.items():
        print(f"{name:<22}{statistics.median(ms):>10.0f}  {','.join(map(str, ms)):<22}{load:>6}")

print("\ntargets (from the issue)")
k, mf, ms, nz = (get("single", n) for n in ("kiln-mlflow-json", "mlflow", "mlserver", "noop"))
def check(text, ok, value):
    print(f"  {'met ' if ok else 'MISS'} {text}: {value}")
if k:
    for peer, r in (("mlflow", mf), ("mlserver", ms)):
        if r:
            check(f"kiln >= 30x {peer} (single row)", k["rps"] >= 30 * r["rps"], f"{k['rps'] / r['rps']:.1f}x")
    if get("single", "kiln-v2") and ms:
        x = get("single", "kiln-v2")["rps"] / ms["rps"]
        check("kiln (v2) >= 30x mlserver (v2)", x >= 30, f"{x:.1f}x")
    if nz:
        check("kiln >= 60% of the no-op", k["rps"] >= 0.6 * nz["rps"], f"{100 * k['rps'] / nz['rps']:.0f}%")
    check(f"kiln p99 < 5 ms at {conns} connections", k["p99"] < 5, f"{k['p99']:.2f} ms")
if "kiln-onnx" in cold:
    m = statistics.median(cold["kiln-onnx"][0])
    check("kiln cold start < 0.5 s (small ONNX model)", m < 500, f"{m:.0f} ms")
PYEOF
