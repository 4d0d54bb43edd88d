#!/usr/bin/env python3
"""Helpers for bench/pipeline/run.sh: generate the workload, summarise hyperfine JSON.

Standard library only.

  helper.py gen DIR           10,000 small files in DIR/data/part-0..9; kiln.yaml and dvc.yaml
                              of the same 10-stage chain
  helper.py gen-big DIR MIB   MIB MiB of random bytes in 64 MiB files under DIR/big/, and a
                              kiln.yaml whose one trivial stage depends on them; prints the bytes
  helper.py report RESDIR     the results table (Markdown) from RESDIR/meta.tsv and the
                              hyperfine --export-json files in RESDIR
"""

import json
import os
import statistics
import sys

PARTS = 10
FILES_PER_PART = 1000
STAGES = 10


def stage_cmd(i):
    # Cheap shell: count the files of one part, append the previous stage's out.
    if i == 0:
        return f"ls data/part-{i} | wc -l > out/s{i}.txt"
    return f"{{ ls data/part-{i} | wc -l; cat out/s{i - 1}.txt; }} > out/s{i}.txt"


def gen(root):
    for p in range(PARTS):
        part = os.path.join(root, "data", f"part-{p}")
        os.makedirs(part, exist_ok=True)
        for f in range(FILES_PER_PART):
            with open(os.path.join(part, f"f{f:04d}.txt"), "w") as fh:
                fh.write(f"part {p} file {f}\n" + "x" * (f % 97) + "\n")
    os.makedirs(os.path.join(root, "out"), exist_ok=True)

    kiln = ["models:", "  bench:", "    stages:"]
    dvc = ["stages:"]
    for i in range(STAGES):
        deps = [f"data/part-{i}"] + ([f"out/s{i - 1}.txt"] if i else [])
        cmd = stage_cmd(i)
        kiln += [
            f"      s{i}:",
            f"        cmd: {json.dumps(cmd)}",
            f"        deps: [{', '.join(deps)}]",
            f"        outs: [out/s{i}.txt]",
        ]
        dvc += [
            f"  s{i}:",
            f"    cmd: {json.dumps(cmd)}",
            "    deps:",
            *[f"      - {d}" for d in deps],
            "    outs:",
            f"      - out/s{i}.txt",
        ]
    with open(os.path.join(root, "kiln.yaml"), "w") as fh:
        fh.write("\n".join(kiln) + "\n")
    with open(os.path.join(root, "dvc.yaml"), "w") as fh:
        fh.write("\n".join(dvc) + "\n")


def gen_big(root, total_mib, file_mib=64):
    """total_mib of incompressible bytes in files of file_mib MiB, deps of one trivial stage."""
    big = os.path.join(root, "big")
    os.makedirs(big, exist_ok=True)
    chunk = os.urandom(1 << 20)
    n = total_mib // file_mib
    for k in range(n):
        with open(os.path.join(big, f"blob-{k:03d}.bin"), "wb") as fh:
            for m in range(file_mib):
                # Different bytes per MiB so no two MiB are equal (not that BLAKE3 cares).
                fh.write(chunk[:-8] + (k * file_mib + m).to_bytes(8, "little"))
    with open(os.path.join(root, "kiln.yaml"), "w") as fh:
        fh.write(
            "models:\n  bench:\n    stages:\n      hash:\n"
            '        cmd: "echo done > done.txt"\n'
            "        deps: [big]\n"
            "        outs: [done.txt]\n"
        )
    return n * file_mib << 20


def load(path):
    with open(path) as fh:
        result = json.load(fh)["results"][0]
    return result


def fmt_time(seconds):
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def report(res):
    meta = {}
    with open(os.path.join(res, "meta.tsv")) as fh:
        for line in fh:
            key, _, value = line.rstrip("\n").partition("\t")
            meta[key] = value

    def result(name):
        path = os.path.join(res, f"{name}.json")
        if not os.path.exists(path):
            return None
        r = load(path)
        return {
            "median": statistics.median(r["times"]),
            "min": min(r["times"]),
            "max": max(r["times"]),
            "n": len(r["times"]),
        }

    def cell(r):
        return f"**{fmt_time(r['median'])}** ({fmt_time(r['min'])} – {fmt_time(r['max'])})"

    out = []
    out.append(
        f"{meta['date']}; `nproc` = {meta['nproc']}; {meta['cpu']}; {meta['mem']}; {meta['os']}  "
    )
    out.append(f"{meta['kiln']}; dvc {meta['dvc']}; {meta['hyperfine']}  ")
    out.append(
        f"Medians of {meta['runs']} runs after {meta['warmup']} warm-up runs (range in brackets); "
        "load average (1, 5, 15 min) read just before each measurement."
    )
    out.append("")
    out.append("| scenario | Kiln | DVC | DVC / Kiln | target | load avg |")
    out.append("|---|---:|---:|---:|---|---|")

    first_k, first_d = float(meta["kiln_first"]), float(meta["dvc_first"])
    out.append(
        f"| first run, 10 stages, 10,000 dep files (1 sample) | {fmt_time(first_k)} | "
        f"{fmt_time(first_d)} | {first_d / first_k:.1f}x | – | – |"
    )
    for name, label, target_ms, target_ratio in [
        ("noop", "no-op re-run", 50, 20),
        ("changed", "one changed file (stage s5 re-runs)", None, None),
    ]:
        k, d = result(f"kiln-{name}"), result(f"dvc-{name}")
        ratio = d["median"] / k["median"]
        targets = []
        if target_ms is not None:
            ok = k["median"] * 1000 < target_ms
            targets.append(f"Kiln < {target_ms} ms: {'met' if ok else '**MISSED**'}")
        if target_ratio is not None:
            ok = ratio >= target_ratio
            targets.append(f"≥ {target_ratio}x: {'met' if ok else '**MISSED**'}")
        out.append(
            f"| {label} | {cell(k)} | {cell(d)} | **{ratio:.1f}x** | "
            f"{'; '.join(targets) or '–'} | {meta[f'load_kiln-{name}']} / {meta[f'load_dvc-{name}']} |"
        )

    g = result("kiln-git-noop")
    if g:
        ok = g["median"] * 1000 < 50
        out.append(
            f"| no-op re-run, Kiln project in a git checkout (Kiln only) | {cell(g)} | – | – | "
            f"Kiln < 50 ms: {'met' if ok else '**MISSED**'} | {meta['load_kiln-git-noop']} |"
        )
        s = result("git-status")
        out.append(
            f"| reference: `git status --porcelain --untracked-files=no` in that checkout | "
            f"{cell(s)} | – | – | – | {meta['load_git-status']} |"
        )
    big = int(meta["big_bytes"])
    h = result("kiln-hash1g")
    gbps = big / h["median"] / 1e9
    ok = gbps > 1
    out.append(
        f"| first hashing of {big / 2**20:.0f} MiB ({meta['big_files']} files; fresh `.kiln/`, "
        f"page cache warm; {h['n']} runs) | {cell(h)} = **{gbps:.2f} GB/s** | – | – | "
        f"> 1 GB/s: {'met' if ok else '**MISSED**'} | {meta['load_kiln-hash1g']} |"
    )
    b = result("b3sum-1g")
    if b:
        out.append(
            f"| reference: `b3sum` over the same files | {cell(b)} = "
            f"{big / b['median'] / 1e9:.2f} GB/s | – | – | – | {meta['load_b3sum-1g']} |"
        )
    out.append("")
    out.append(f"Load average at the end: {meta['load_end']}. GB = 10^9 bytes.")
    print("\n".join(out))


def main():
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2])
    elif cmd == "gen-big":
        print(gen_big(sys.argv[2], int(sys.argv[3])))
    elif cmd == "report":
        report(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
