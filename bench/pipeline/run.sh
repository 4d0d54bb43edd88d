#!/usr/bin/env bash
# Kiln's pipeline engine against DVC, on the same work, in the same run.
#
#   bash bench/pipeline/run.sh
#
# Scenarios (10-stage chain; stage i depends on data/part-i (1,000 small files) and on stage i-1's
# out; 10,000 dep files in all):
#   first    first run of each tool on a fresh project (one sample)
#   noop     re-run with nothing changed: every stage must be skipped
#   changed  one file of data/part-5 rewritten with new content before each run: stage s5 runs
#   git      Kiln only: the no-op with the project in a git checkout (data committed), since Kiln
#            records the commit and dirtiness on every run; plus `git status` alone for reference
#   hash1g   Kiln only: first run over ~1 GiB of deps (fresh .kiln/, so a cold Kiln stat cache;
#            the OS page cache is warm), reported as GB/s; b3sum on the same files for reference
#
# Knobs (environment): RUNS (10), WARMUP (2), BIG_MIB (1024), DVC_VERSION (3.67.1),
# BENCH_OUT (target/bench-pipeline: dvc venv, hyperfine JSON, results.md).
# Needs: cargo, python3, hyperfine (installed with apt-get when missing), network access to PyPI
# the first time (for dvc).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/bench/pipeline"
RUNS=${RUNS:-10}
WARMUP=${WARMUP:-2}
BIG_MIB=${BIG_MIB:-1024}
DVC_VERSION=${DVC_VERSION:-3.67.1}
OUT=${BENCH_OUT:-$ROOT/target/bench-pipeline}
RES="$OUT/results"
KILN="$ROOT/target/release/kiln"
export DVC_NO_ANALYTICS=1 NO_COLOR=1

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
meta() { printf '%s\t%s\n' "$1" "$2" >>"$RES/meta.tsv"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench-pipeline.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export DVC_SITE_CACHE_DIR="$WORK/dvc-site-cache"   # dvc's state and index, not /var/tmp/dvc
rm -rf "$RES"
mkdir -p "$RES"

# --- tools -----------------------------------------------------------------------------------
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq "$@" >/dev/null 2>&1 ||
        { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq "$@" >/dev/null 2>&1; }
}
if ! command -v hyperfine >/dev/null; then
    log "installing hyperfine (apt)"
    apt_install hyperfine || die "hyperfine is missing and apt-get could not install it"
fi
if ! command -v b3sum >/dev/null; then
    log "installing b3sum (apt; optional reference)"
    apt_install b3sum || echo "b3sum unavailable: the reference line is skipped" >&2
fi

log "building Kiln (release)"
(cd "$ROOT" && cargo build --release -p kiln) || die "cargo build failed"

VENV="$OUT/dvc-venv"
if [ "$("$VENV/bin/dvc" --version 2>/dev/null)" != "$DVC_VERSION" ]; then
    log "installing dvc $DVC_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "dvc==$DVC_VERSION"
fi
DVC="$VENV/bin/dvc"

meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta nproc "$(nproc)"
meta cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
meta mem "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
meta os "$(. /etc/os-release && echo "$PRETTY_NAME") / $(uname -r)"
meta kiln "$("$KILN" --version) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- crates 2>/dev/null || echo '+changes'))"
meta dvc "$("$DVC" --version)"
meta hyperfine "$(hyperfine --version)"
meta runs "$RUNS"
meta warmup "$WARMUP"

# --- workload ---------------------------------------------------------------------------------
log "generating the workload in $WORK"
python3 "$HERE/helper.py" gen "$WORK/kiln"
cp -a "$WORK/kiln" "$WORK/dvc"
rm "$WORK/kiln/dvc.yaml"          # Kiln runs its own kiln.yaml (it could run dvc.yaml as well)
rm "$WORK/dvc/kiln.yaml"
grep -q 'python' "$WORK/kiln/kiln.yaml" && die "the benchmark pipeline must not use Python"

# The changed-file scenario: new content each time (a counter and the clock), so that neither
# Kiln's stage cache nor DVC's run-cache can answer from an earlier run: s5 really runs.
cat >"$WORK/change-one.sh" <<'SH'
#!/bin/sh
f="$1/data/part-5/f0500.txt"
n=$(cat "$1/.change-count" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" >"$1/.change-count"
printf 'changed %s %s\n' "$n" "$(date +%s%N)" >"$f"
SH

# --- first runs -------------------------------------------------------------------------------
log "Kiln: first run"
t0=$(now)
"$KILN" -C "$WORK/kiln" run >"$RES/kiln-first.log" 2>&1 || { cat "$RES/kiln-first.log"; die "kiln run failed"; }
t1=$(now)
meta kiln_first "$(elapsed "$t0" "$t1")"
[ "$(grep -c ' ran ' "$RES/kiln-first.log")" = 10 ] || { cat "$RES/kiln-first.log"; die "kiln: expected 10 stages to run"; }

log "DVC: init and first run"
(
    cd "$WORK/dvc"
    "$DVC" init --no-scm -q
    "$DVC" config core.no_scm true
)
t0=$(now)
(cd "$WORK/dvc" && "$DVC" repro) >"$RES/dvc-first.log" 2>&1 || { cat "$RES/dvc-first.log"; die "dvc repro failed"; }
t1=$(now)
meta dvc_first "$(elapsed "$t0" "$t1")"
[ "$(grep -c "^Running stage" "$RES/dvc-first.log")" = 10 ] || { cat "$RES/dvc-first.log"; die "dvc: expected 10 stages to run"; }

# Both tools computed the same outs.
diff -r "$WORK/kiln/out" "$WORK/dvc/out" || die "Kiln and DVC wrote different outs"

check_kiln_noop() {
    "$KILN" -C "$WORK/kiln" run >"$RES/kiln-noop.log" 2>&1 || { cat "$RES/kiln-noop.log"; die "kiln no-op run failed"; }
    [ "$(grep -c ' cached ' "$RES/kiln-noop.log")" = 10 ] || { cat "$RES/kiln-noop.log"; die "kiln: a no-op run must report every stage cached"; }
}
check_dvc_noop() {
    (cd "$WORK/dvc" && "$DVC" repro) >"$RES/dvc-noop.log" 2>&1 || { cat "$RES/dvc-noop.log"; die "dvc no-op repro failed"; }
    grep -q "^Running stage" "$RES/dvc-noop.log" && { cat "$RES/dvc-noop.log"; die "dvc: a no-op repro ran a stage"; }
    [ "$(grep -c "didn't change, skipping" "$RES/dvc-noop.log")" = 10 ] || { cat "$RES/dvc-noop.log"; die "dvc: expected 10 stages skipped"; }
}

hf() { # name, then hyperfine arguments
    local name=$1
    shift
    meta "load_$name" "$(loadavg)"
    hyperfine -N --style basic --warmup "$WARMUP" --runs "$RUNS" --export-json "$RES/$name.json" "$@" >&2
}

# --- no-op re-runs ----------------------------------------------------------------------------
log "no-op re-run"
check_kiln_noop
check_dvc_noop
hf kiln-noop -n "kiln run (no-op)" "$KILN -C $WORK/kiln run"
check_kiln_noop
(cd "$WORK/dvc" && hf dvc-noop -n "dvc repro (no-op)" "$DVC repro")
check_dvc_noop

# --- one changed file -------------------------------------------------------------------------
log "one changed file (data/part-5)"
sh "$WORK/change-one.sh" "$WORK/kiln"
"$KILN" -C "$WORK/kiln" run >"$RES/kiln-changed.log" 2>&1 || { cat "$RES/kiln-changed.log"; die "kiln run failed"; }
grep -q 'bench/s5 .* ran ' "$RES/kiln-changed.log" || { cat "$RES/kiln-changed.log"; die "kiln: s5 should have run"; }
[ "$(grep -c ' ran ' "$RES/kiln-changed.log")" = 1 ] || { cat "$RES/kiln-changed.log"; die "kiln: only s5 should have run"; }
sh "$WORK/change-one.sh" "$WORK/dvc"
(cd "$WORK/dvc" && "$DVC" repro) >"$RES/dvc-changed.log" 2>&1 || { cat "$RES/dvc-changed.log"; die "dvc repro failed"; }
[ "$(grep -c "^Running stage" "$RES/dvc-changed.log")" = 1 ] && grep -q "^Running stage 's5'" "$RES/dvc-changed.log" ||
    { cat "$RES/dvc-changed.log"; die "dvc: only s5 should have run"; }
hf kiln-changed -n "kiln run (1 file changed)" --prepare "sh $WORK/change-one.sh $WORK/kiln" "$KILN -C $WORK/kiln run"
(cd "$WORK/dvc" && hf dvc-changed -n "dvc repro (1 file changed)" --prepare "sh $WORK/change-one.sh $WORK/dvc" "$DVC repro")
check_kiln_noop
check_dvc_noop
diff -r "$WORK/kiln/out" "$WORK/dvc/out" || die "Kiln and DVC wrote different outs"

# --- Kiln only: the no-op in a git checkout ----------------------------------------------------
# Kiln records the commit and whether the tree is dirty on every run (read in process: HEAD and the
# index with gix, the files' stats from the run's own; `git status` only when in doubt); DVC above
# runs with no_scm. A real project is a checkout, so this row shows what that costs with the
# 10,000 files committed.
if command -v git >/dev/null; then
    log "Kiln no-op in a git checkout"
    cp -a "$WORK/kiln" "$WORK/kiln-git"
    # The copied stat cache names the original's files, which still exist, so it would be kept
    # and loaded twice over on every run: start this project's own.
    rm -f "$WORK/kiln-git/.kiln/stat-cache"
    (
        cd "$WORK/kiln-git"
        git init -q
        git add kiln.yaml data
        git -c user.name=bench -c user.email=bench@localhost commit -qm workload
    )
    "$KILN" -C "$WORK/kiln-git" run >/dev/null 2>&1 || die "kiln run (git checkout) failed"
    "$KILN" -C "$WORK/kiln-git" run >"$RES/kiln-git-noop.log" 2>&1 || die "kiln run (git checkout) failed"
    [ "$(grep -c ' cached ' "$RES/kiln-git-noop.log")" = 10 ] || { cat "$RES/kiln-git-noop.log"; die "kiln: a no-op run must report every stage cached"; }
    hf kiln-git-noop -n "kiln run (no-op, git checkout)" "$KILN -C $WORK/kiln-git run"
    hf git-status -n "git status --porcelain --untracked-files=no" "git -C $WORK/kiln-git status --porcelain --untracked-files=no"
fi

# --- first hashing of ~1 GiB ------------------------------------------------------------------
log "first hashing of $BIG_MIB MiB (Kiln; fresh .kiln/ each run; page cache warm)"
BIG_BYTES=$(python3 "$HERE/helper.py" gen-big "$WORK/big" "$BIG_MIB")
meta big_bytes "$BIG_BYTES"
meta big_files "$(find "$WORK/big/big" -type f | wc -l)"
"$KILN" -C "$WORK/big" run >"$RES/kiln-hash.log" 2>&1 || { cat "$RES/kiln-hash.log"; die "kiln run failed"; }
grep -q 'bench/hash .* ran ' "$RES/kiln-hash.log" || { cat "$RES/kiln-hash.log"; die "kiln: the hash stage should have run"; }
HASH_RUNS=$(( RUNS < 5 ? RUNS : 5 ))
RUNS=$HASH_RUNS WARMUP=1 hf kiln-hash1g -n "kiln run (first, $BIG_MIB MiB deps)" --prepare "rm -rf $WORK/big/.kiln $WORK/big/done.txt" "$KILN -C $WORK/big run"
"$KILN" -C "$WORK/big" run >"$RES/kiln-hash-noop.log" 2>&1 && grep -q ' cached ' "$RES/kiln-hash-noop.log" || die "kiln: the big no-op should be cached"
if command -v b3sum >/dev/null; then
    (cd "$WORK/big/big" && RUNS=$HASH_RUNS WARMUP=1 hf b3sum-1g -n "b3sum (same files)" "sh -c 'b3sum * >/dev/null'")
fi
meta load_end "$(loadavg)"

# --- report -----------------------------------------------------------------------------------
python3 "$HERE/helper.py" report "$RES" | tee "$RES/results.md"
echo >&2
echo "raw data: $RES" >&2
