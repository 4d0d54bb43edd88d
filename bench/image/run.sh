#!/usr/bin/env bash
# Images: how long `kiln image build` takes for the iris example (ONNX) with a cold base cache,
# again for the same version, and for a new version (the base reused, only the model layer
# written); and how big the image is (compressed layers + config + manifest, what a registry
# stores), beside the uncompressed root filesystem umoci unpacks.
# The peer, `mlflow models build-docker`, needs a Docker daemon, which this machine lacks:
# BENCHMARKS.md quotes its published figures instead.
#
#   bash bench/image/run.sh
#
# Knobs (environment): RUNS (5, for the warm builds), BENCH_OUT (target/bench-image), KILN (a
# `kiln` executable to measure instead of building the release one).
# Needs: cargo, binutils (strip), umoci; python3 with scikit-learn is installed by Kiln itself
# (the example's environment, once, under BENCH_OUT/cache).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/target/bench-image}
RUNS=${RUNS:-5}
mkdir -p "$OUT"
export NO_COLOR=1
# Python environments are kept between runs of the benchmark; image caches are not.
export KILN_CACHE_DIR=$OUT/cache
# ONNX Runtime from the test venv's python (as `kiln serve` finds it), so that no build spends
# its time asking other pythons for it.
PYTHON=${KILN_TEST_PYTHON:-$ROOT/target/test-venv/bin/python}
if [ -x "$PYTHON" ]; then export KILN_PYTHON=$PYTHON; fi

if [ -z "${KILN:-}" ]; then
    cargo build --release -p kiln --manifest-path "$ROOT/Cargo.toml" >&2
    KILN=${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/examples/iris/." "$WORK/iris"
rm -rf "$WORK/iris/.kiln" "$WORK/iris/data" "$WORK/iris/models/iris/model.onnx"
echo "training v1 and v2 of iris (not timed)" >&2
"$KILN" -C "$WORK/iris" run >/dev/null 2>&1
"$KILN" -C "$WORK/iris" run --set train.C=0.5 >/dev/null 2>&1

# Seconds a command takes, from the clock.
seconds() {
    local start end
    start=$(date +%s.%N)
    "$@" >"$WORK/last.json" 2>>"$OUT/build.log"
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { python3 -c "import json,sys; print(json.load(open('$WORK/last.json'))$1)"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
: >"$OUT/build.log"
rm -rf "$KILN_CACHE_DIR/images"
cold=$(seconds "$KILN" -C "$WORK/iris" image build iris@v1 --json)
size=$(field "['size']")
base=$(field "['layers'][0]['size']")
model=$(field "['layers'][1]['size']")
digest_v1=$(field "['manifest_digest']")

same=$(for _ in $(seq "$RUNS"); do seconds "$KILN" -C "$WORK/iris" image build iris@v1 --json; done | median)
[ "$(field "['manifest_digest']")" = "$digest_v1" ] || { echo "v1 rebuilt to another digest" >&2; exit 1; }

# A new version into a fresh layout each time (the base linked in from the cache), so that its
# model layer is really written every run.
next=$(for i in $(seq "$RUNS"); do seconds "$KILN" -C "$WORK/iris" image build iris@v2 --json --output "$WORK/layout-$i"; done | median)
[ "$(field "['layers'][0]['reused']")" = "True" ] || { echo "v2 did not reuse the base" >&2; exit 1; }
next_build_ms=$(field "['elapsed_ms']")
next_same_layout=$(seconds "$KILN" -C "$WORK/iris" image build iris@v2 --json)
next_same_layout_ms=$(field "['elapsed_ms']")

umoci raw unpack --rootless --image "$WORK/iris/.kiln/images:iris:v1" "$WORK/rootfs" >/dev/null 2>&1
rootfs=$(du -sb "$WORK/rootfs" | cut -f1)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

mib() { echo "scale=1; $1 / 1048576" | bc; }
{
    echo "kiln image build, iris (ONNX), $KILN ($(du -m "$KILN" | cut -f1) MB unstripped), $(nproc) cores"
    echo "  image size (layers + config + manifest): $(mib "$size") MiB (base $(mib "$base") MiB, model $model B)"
    echo "  unpacked root filesystem:                $(mib "$rootfs") MiB"
    echo "  first build, cold base cache:            ${cold} s"
    echo "  same version again (median of $RUNS):       ${same} s"
    echo "  new version, fresh layout (median of $RUNS): ${next} s (of which the image: ${next_build_ms} ms)"
    echo "  new version, same layout:                ${next_same_layout} s (of which the image: ${next_same_layout_ms} ms)"
} | tee "$OUT/results.txt"
