#!/usr/bin/env bash
# Push time of the iris example's image to a registry on loopback (Debian's `docker-registry`,
# storage in a temporary folder): the first push into an empty registry (every blob uploaded)
# and a re-push of the same version (every blob found by HEAD, only manifests put), each
# repeated REPS times with a fresh registry, as `kiln image push --json` reports them
# (wall-clock seconds, blobs, bytes). The image is built once beforehand, so only the push is
# timed.
#
#   bash bench/image/push.sh
#
# Knobs (environment): REPS (5), KILN (a kiln binary; default: a release build),
# BENCH_OUT (target/bench-image-push).
# Needs: cargo, git, docker-registry, python3 (the test venv's, with scikit-learn).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${BENCH_OUT:-$ROOT/target/bench-image-push}
REPS=${REPS:-5}
rm -rf "$OUT" && mkdir -p "$OUT"
export NO_COLOR=1
if [ -z "${KILN:-}" ]; then
    cargo build --release -p kiln --manifest-path "$ROOT/Cargo.toml" >&2
    KILN=$ROOT/target/release/kiln
fi
PYTHON=${KILN_TEST_PYTHON:-$ROOT/target/test-venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export KILN_PYTHON=$PYTHON
unset KILN_REGISTRY_USERNAME KILN_REGISTRY_PASSWORD
export DOCKER_CONFIG=$OUT/no-docker-config

PROJECT=$OUT/iris
cp -r "$ROOT/examples/iris" "$PROJECT"
rm -rf "$PROJECT/.kiln" "$PROJECT/data"
(cd "$PROJECT" && git init -q -b main && git add -A \
    && git -c user.name=bench -c user.email=bench@kiln.invalid commit -q -m iris)
(cd "$PROJECT" && "$KILN" run >/dev/null 2>"$OUT/run.log")
(cd "$PROJECT" && "$KILN" image build iris@v1 >/dev/null 2>"$OUT/build.log")

REGISTRY_PID=
stop_registry() {
    if [ -n "$REGISTRY_PID" ]; then
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
        REGISTRY_PID=
    fi
}
trap stop_registry EXIT
start_registry() {
    local port storage=$OUT/registry
    port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    rm -rf "$storage" && mkdir -p "$storage"
    cat >"$storage/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
    docker-registry serve "$storage/config.yml" >"$storage/log" 2>&1 &
    REGISTRY_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    ADDRESS=127.0.0.1:$port
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
for rep in $(seq "$REPS"); do
    start_registry
    for kind in first again; do
        (cd "$PROJECT" && "$KILN" image push iris@v1 "$ADDRESS/kiln/iris" --json 2>/dev/null) \
            >"$OUT/$kind-$rep.json"
    done
    stop_registry
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PYTHON" - "$OUT" "$REPS" <<'PY'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
for kind, label in (("first", "first push (empty registry)"), ("again", "re-push (all blobs there)")):
    runs = [json.load(open(f"{out}/{kind}-{rep}.json")) for rep in range(1, reps + 1)]
    seconds = sorted(run["seconds"] for run in runs)
    run = runs[0]
    print(f"{label}: median {statistics.median(seconds):.3f} s (min {seconds[0]:.3f}, max {seconds[-1]:.3f}); "
          f"{run['blobs_pushed']} blobs pushed, {run['blobs_skipped']} skipped, {run['bytes'] / 2**20:.1f} MiB")
PY
