#!/usr/bin/env bash
# Profiling training data: Kiln's one-pass CSV profile against pandas (`read_csv` + `describe`,
# quantiles, value counts) on the same file.
#
#   bash bench/profile/run.sh
#
# Knobs (environment): MIB (100), RUNS (5), PYTHON (python3, needs pandas for the reference),
# BENCH_OUT (target/bench-profile).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MIB=${MIB:-100}
RUNS=${RUNS:-5}
PYTHON=${PYTHON:-python3}
OUT=${BENCH_OUT:-$ROOT/target/bench-profile}
mkdir -p "$OUT"
command -v hyperfine >/dev/null || sudo apt-get install -y hyperfine

cargo build --release -p kiln-profile --example profile
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/profile
DATA="$OUT/train.csv"
[ -f "$DATA" ] || "$PYTHON" "$ROOT/bench/profile/gen.py" "$DATA" "$MIB"
ls -l "$DATA"
cat > "$OUT/pandas_profile.py" <<'PY'
import sys
import pandas as pd
frame = pd.read_csv(sys.argv[1])
numeric = frame.select_dtypes("number")
numeric.describe(percentiles=[0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
for name in frame.columns.difference(numeric.columns):
    frame[name].value_counts()
PY
uptime
hyperfine --warmup 1 --runs "$RUNS" --export-json "$OUT/profile.json" \
  -n kiln "$BIN $DATA > /dev/null" \
  -n pandas "$PYTHON $OUT/pandas_profile.py $DATA"
