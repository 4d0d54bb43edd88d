#!/usr/bin/env bash
# The deployment front's overhead: single-row predictions sent straight to a `kiln serve` backend
# vs the same requests through a front (`crates/kiln-serve/examples/front.rs`) forwarding to it.
# wrk with bench/serve/post.lua on loopback; RUNS rounds, each measuring direct then front; prints
# every run, the medians, and front / direct.
#
# Usage: bench/front/run.sh
#   knobs: RUNS=3 DURATION=5 WARMUP=1 CONNECTIONS="64 1" THREADS=1
# Needs: wrk, curl, cargo, python3 with scikit-learn + skl2onnx (PYTHON=...).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${KILN_BENCH_DIR:-$ROOT/target/bench-front}"
PY="${PYTHON:-python3}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
CONNECTIONS="${CONNECTIONS:-64 1}"
THREADS="${THREADS:-1}"
mkdir -p "$WORK"
cd "$WORK"

log() { echo "[bench] $*" >&2; }

log "building kiln and the front harness (release)"
(cd "$ROOT" && cargo build -q --release -p kiln -p kiln-serve --bin kiln --example front)
TARGET="$(cd "$ROOT" && cargo metadata -q --format-version 1 --no-deps | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
KILN="$TARGET/release/kiln"
FRONT="$TARGET/release/examples/front"

# The serving benchmark's single-row model: iris LogisticRegression, skl2onnx, zipmap off.
"$PY" -c '
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
X, y = load_iris(return_X_y=True)
m = LogisticRegression(max_iter=500).fit(X, y)
onx = convert_sklearn(m, initial_types=[("float_input", FloatTensorType([None, 4]))], options={id(m): {"zipmap": False}})
open("iris.onnx", "wb").write(onx.SerializeToString())'
echo '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}' > body.json

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

BACKEND_PORT=$(free_port)
FRONT_PORT=$(free_port)
"$KILN" serve iris.onnx --port "$BACKEND_PORT" --watch-interval-ms 0 > backend.log 2>&1 &
PIDS+=($!)
"$FRONT" "$FRONT_PORT" "127.0.0.1:$BACKEND_PORT" > front.log 2>&1 &
PIDS+=($!)

wait_ok() {
  for _ in $(seq 600); do
    if curl -fsS -o /dev/null -H 'Content-Type: application/json' --data-binary @body.json "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "$1 never answered; see $WORK/backend.log and $WORK/front.log"; return 1
}
wait_ok "http://127.0.0.1:$BACKEND_PORT/invocations"
wait_ok "http://127.0.0.1:$FRONT_PORT/invocations"
log "one answer through the front: $(curl -sS -H 'Content-Type: application/json' --data-binary @body.json "http://127.0.0.1:$FRONT_PORT/invocations")"

RESULTS="$WORK/results.txt"
: > "$RESULTS"
# measure LABEL PORT CONNECTIONS
measure() {
  local url="http://127.0.0.1:$2/invocations" out load
  BODY_FILE=body.json wrk -t"$THREADS" -c"$3" -d"${WARMUP}s" -s "$ROOT/bench/serve/post.lua" "$url" > /dev/null
  out="$(BODY_FILE=body.json wrk -t"$THREADS" -c"$3" -d"${DURATION}s" -s "$ROOT/bench/serve/post.lua" "$url" | grep '^RESULT')"
  load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "$1 c=$3 $out load=$load" >> "$RESULTS"
  log "$1 -c$3: $out load=$load"
}
for c in $CONNECTIONS; do
  for _ in $(seq "$RUNS"); do
    measure direct "$BACKEND_PORT" "$c"
    measure front "$FRONT_PORT" "$c"
  done
done

"$PY" - "$RESULTS" "$DURATION" <<'PYEOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, conns, _result, *fields = line.split()
    kv = dict(f.split("=", 1) for f in fields)
    rps = int(kv["requests"]) / (int(kv["duration_us"]) / 1e6)
    rows.setdefault(conns, {}).setdefault(label, []).append(dict(
        rps=rps, p50=int(kv["p50_us"]) / 1000, p99=int(kv["p99_us"]) / 1000,
        bad=int(kv["non2xx"]), err=int(kv["errors"]), load=kv["load"]))
print(f"\nsingle-row iris LogisticRegression, POST /invocations, wrk {sys.argv[2]} s per run; medians of the runs")
for conns, labels in rows.items():
    print(f"\n{conns}")
    print(f"{'path':<8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}  runs req/s (load)")
    med = {}
    for label, runs in labels.items():
        m = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
        med[label] = m
        detail = ", ".join(f"{r['rps']:,.0f} ({r['load']})" for r in runs)
        print(f"{label:<8}{m['rps']:>10,.0f}{m['p50']:>9.3f}{m['p99']:>9.3f}{sum(r['bad'] for r in runs):>9}{sum(r['err'] for r in runs):>8}  {detail}")
    if "direct" in med and "front" in med:
        d, f = med["direct"], med["front"]
        print(f"front / direct: {f['rps'] / d['rps']:.2f}x req/s; p50 +{f['p50'] - d['p50']:.3f} ms, p99 +{f['p99'] - d['p99']:.3f} ms")
PYEOF
