#!/usr/bin/env bash
# Kiln's model registry: registering a big artifact against the disk's own copy speed, and
# listing many versions against MLflow's registry (SQLite backend), in the same run.
#
#   bash bench/registry/run.sh
#
# Scenarios:
#   register  `kiln run --set train.version=N` of a project whose one stage writes an ARTIFACT_MB
#             file (new content each run, so each run registers a new version): each run's wall
#             time split into the stage command (it stamps its own start and end), the servable
#             check (as the run records it) and the rest, which is Kiln's work on the artifact
#             (hash, store with fsync, lay out for serving, register, publish) plus process
#             start; reported as MB/s against `cp` of the same file, and `cp` + `sync`
#   list      VERSIONS versions of one model, registered through `kiln_registry`'s public API
#             (crates/kiln/examples/registry_fill.rs: one green run and one registration each):
#             `kiln models list`, `kiln models show m` and `kiln models history m --alias latest`
#             timed as processes with hyperfine; `Registry::model_versions` (every version)
#             timed in process. MLflow 3.17's registry on SQLite with the same number of
#             versions (MLFLOW_VERSIONS), `MlflowClient().search_model_versions` and
#             `search_registered_models` timed in process after import (MLFLOW_RUNS calls:
#             listing 10,000 versions takes MLflow seconds), and as a whole process
#   The register scenario runs again with a 1 kB artifact: the part of the time that does
#   not depend on the size, so that the per-byte speed can be read apart from it.
#
# Knobs (environment): RUNS (10), WARMUP (2), ARTIFACT_MB (100), VERSIONS (10000),
# MLFLOW_VERSIONS (VERSIONS), MLFLOW_RUNS (3), MLFLOW_PYTHON (a python with mlflow 3.17; default: the test venv's
# if it has mlflow, else a venv under BENCH_OUT), BENCH_OUT (target/bench-registry).
# Needs: cargo, python3, hyperfine (installed with apt-get when missing), PyPI the first time
# when no python with mlflow is given.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/bench/registry"
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
ARTIFACT_MB=${ARTIFACT_MB:-100}
VERSIONS=${VERSIONS:-10000}
MLFLOW_VERSIONS=${MLFLOW_VERSIONS:-$VERSIONS}
MLFLOW_RUNS=${MLFLOW_RUNS:-3}
OUT=${BENCH_OUT:-$ROOT/target/bench-registry}
RES="$OUT/results"
export NO_COLOR=1 MLFLOW_DISABLE_TELEMETRY=true

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
meta() { printf '%s\t%s\n' "$1" "$2" >>"$RES/meta.tsv"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-registry.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
rm -rf "$RES"
mkdir -p "$RES"

# --- tools -----------------------------------------------------------------------------------
if ! command -v hyperfine >/dev/null; then
    log "installing hyperfine (apt)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq hyperfine >/dev/null 2>&1 || die "hyperfine is missing and apt-get could not install it"
fi

log "building Kiln and the registry filler (release)"
(cd "$ROOT" && cargo build -q --release -p kiln --bin kiln --example registry_fill) || die "cargo build failed"
TARGET=$(cd "$ROOT" && cargo metadata -q --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
KILN="$TARGET/release/kiln"
FILL="$TARGET/release/examples/registry_fill"

MLFLOW_PYTHON=${MLFLOW_PYTHON:-}
if [ -z "$MLFLOW_PYTHON" ]; then
    for candidate in "${KILN_TEST_VENV:-$ROOT/target/test-venv}/bin/python" "$OUT/mlflow-venv/bin/python"; do
        if [ -x "$candidate" ] && "$candidate" -c 'import mlflow' 2>/dev/null; then
            MLFLOW_PYTHON=$candidate
            break
        fi
    done
fi
if [ -z "$MLFLOW_PYTHON" ]; then
    log "installing mlflow 3.17 into $OUT/mlflow-venv"
    python3 -m venv "$OUT/mlflow-venv"
    "$OUT/mlflow-venv/bin/pip" install -q --disable-pip-version-check 'mlflow==3.17.*'
    MLFLOW_PYTHON="$OUT/mlflow-venv/bin/python"
fi
# The servable check of the artifact runs `predict.py` with this python (it needs numpy).
export KILN_PYTHON=${KILN_PYTHON:-$MLFLOW_PYTHON}

meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta nproc "$(nproc)"
meta cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
meta mem "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
meta os "$(. /etc/os-release && echo "$PRETTY_NAME") / $(uname -r)"
meta kiln "$("$KILN" --version) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates 2>/dev/null || echo '+changes'))"
meta mlflow "mlflow $("$MLFLOW_PYTHON" -c 'import mlflow; print(mlflow.__version__)' 2>/dev/null)"
meta hyperfine "$(hyperfine --version)"
meta versions "$VERSIONS"
meta mlflow_runs "$MLFLOW_RUNS"

hf() { # name, then hyperfine arguments
    local name=$1
    shift
    meta "load_$name" "$(loadavg)"
    hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" --export-json "$RES/$name.json" "$@" >&2
}

# --- registering a big artifact --------------------------------------------------------------
BYTES=$((ARTIFACT_MB * 1000 * 1000))
log "registering a $ARTIFACT_MB MB artifact: $RUNS runs after one warm-up"
python3 "$HERE/helper.py" gen "$WORK/big" "$BYTES"
meta load_register "$(loadavg)"
python3 "$HERE/helper.py" register "$KILN" "$WORK/big" "$RUNS" "$RES/register.json"
log "the same with a 1 kB artifact: the part that does not depend on the size"
python3 "$HERE/helper.py" gen "$WORK/small" 1000
meta load_register_small "$(loadavg)"
python3 "$HERE/helper.py" register "$KILN" "$WORK/small" "$RUNS" "$RES/register-small.json"
ARTIFACT="$WORK/big/model/weights.bin"
hf cp -n "cp ($ARTIFACT_MB MB)" --prepare "rm -f $WORK/copy.bin" "cp $ARTIFACT $WORK/copy.bin"
hf cp-fsync -n "cp + sync ($ARTIFACT_MB MB)" --prepare "rm -f $WORK/copy.bin" "sh -c 'cp $ARTIFACT $WORK/copy.bin && sync $WORK/copy.bin'"
rm -rf "$WORK/big" "$WORK/small" "$WORK/copy.bin"

# --- listing many versions -------------------------------------------------------------------
log "filling Kiln's registry with $VERSIONS versions"
mkdir -p "$WORK/many/.kiln"
printf 'models: {}\n' >"$WORK/many/kiln.yaml"
"$FILL" fill "$WORK/many/.kiln/kiln.db" m "$VERSIONS" >&2
"$KILN" -C "$WORK/many" models list --json | python3 -c "
import json, sys
models = json.load(sys.stdin)
assert models[0]['versions'] == $VERSIONS == models[0]['latest_version'], models
" || die "kiln models list does not list $VERSIONS versions"

hf kiln-models-list -n "kiln models list ($VERSIONS versions)" "$KILN -C $WORK/many models list"
hf kiln-models-list-model -n "kiln models list m ($VERSIONS versions)" "$KILN -C $WORK/many models list m"
hf kiln-models-show -n "kiln models show m" "$KILN -C $WORK/many models show m"
hf kiln-history -n "kiln models history m --alias latest ($VERSIONS moves)" "$KILN -C $WORK/many models history m --alias latest"
meta load_kiln-inprocess "$(loadavg)"
"$FILL" list "$WORK/many/.kiln/kiln.db" m "$RUNS" >"$RES/kiln-inprocess.tsv"

log "filling MLflow's registry with $MLFLOW_VERSIONS versions"
"$MLFLOW_PYTHON" "$HERE/helper.py" mlflow-fill "$WORK/mlflow.db" "$MLFLOW_VERSIONS" >&2
meta load_mlflow-list "$(loadavg)"
"$MLFLOW_PYTHON" "$HERE/helper.py" mlflow-list "$WORK/mlflow.db" "$MLFLOW_RUNS" "$RES/mlflow-list.json"
RUNS=$MLFLOW_RUNS WARMUP=0 hf mlflow-process -n "python: import mlflow + search_model_versions" \
    "$MLFLOW_PYTHON $HERE/helper.py mlflow-once $WORK/mlflow.db"
meta load_end "$(loadavg)"

# --- report ----------------------------------------------------------------------------------
python3 "$HERE/helper.py" report "$RES" | tee "$RES/results.md"
echo >&2
echo "raw data: $RES" >&2
