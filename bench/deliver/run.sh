#!/usr/bin/env bash
# Delivery on one machine: how long from `git commit` to the new version serving in `staging`
# under `kiln up`, split into the stage commands that ran (training) and everything else (Kiln's
# own overhead: noticing the commit, the worktree, hashing, cache restores, the servable check,
# registration, the rollout with its smoke test); and how long the supervisor takes to bring a
# SIGKILLed serving process back, as a client waiting on the environment's port sees it.
# The peer: the cold start of `mlflow models serve` on the same model, which is what a restart
# costs an orchestrator that restarts MLflow's server (skipped without a python with mlflow).
#
#   bash bench/deliver/run.sh
#
# Knobs (environment): COMMITS (5), KILLS (10), MLFLOW_PYTHON (a python with mlflow; default:
# the test venv's, which has it), BENCH_OUT (target/bench-deliver).
# Needs: cargo, git, python3 (the test venv's, with scikit-learn, from `bash .ci/setup`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/target/bench-deliver}
mkdir -p "$OUT"
export NO_COLOR=1

cargo build --release -p kiln --manifest-path "$ROOT/Cargo.toml" >&2
PYTHON=${KILN_TEST_PYTHON:-$ROOT/target/test-venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
if [ -z "${MLFLOW_PYTHON:-}" ] && "$PYTHON" -c "import mlflow" 2>/dev/null; then
    MLFLOW_PYTHON=$PYTHON
fi
MLFLOW_PYTHON=${MLFLOW_PYTHON:-}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
"$PYTHON" "$ROOT/bench/deliver/bench.py" \
    --kiln "$ROOT/target/release/kiln" \
    --example "$ROOT/examples/iris" \
    --commits "${COMMITS:-5}" \
    --kills "${KILLS:-10}" \
    --mlflow-python "$MLFLOW_PYTHON" \
    --out "$OUT"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
