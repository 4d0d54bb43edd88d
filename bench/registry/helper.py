#!/usr/bin/env python3
"""Helpers for bench/registry/run.sh.

  helper.py gen DIR BYTES                 a project whose stage writes a BYTES-byte artifact file
  helper.py register KILN DIR RUNS OUT    RUNS `kiln run --set train.version=N` of that project;
                                          each run's wall time split into the stage command, the
                                          servable check and the rest (JSON into OUT)
  helper.py mlflow-fill DB N              a registered model `m` with N versions in MLflow's
                                          SQLite registry (run by the mlflow venv's python)
  helper.py mlflow-list DB RUNS OUT       medians of search_model_versions (all versions) and
                                          search_registered_models, in process (JSON into OUT)
  helper.py mlflow-once DB                import mlflow, list every version of `m` once (a process
                                          as a user's script would be)
  helper.py report RESDIR                 the results table (Markdown)

`gen`, `register` and `report` need only the standard library.
"""

import json
import os
import statistics
import subprocess
import sys
import time

PREDICT_PY = '''SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1]}],
    "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1]}],
}


def predict(inputs):
    # The weights file is the artifact's bulk; it is not read, as a model's would be.
    return {"y": inputs["x"] * 2}
'''

# The stage: the "training" writes the big file (the source plus the params, so that each
# `--set` makes new content), and stamps its own start and end in nanoseconds, so that the run's
# wall time can be split.
KILN_YAML = """models:
  big:
    params: params.yaml
    stages:
      train:
        cmd: date +%s%N > .stamp-start && mkdir -p model && cp predict.py model/ && cat weights.src params.yaml > model/weights.bin && date +%s%N > .stamp-end
        deps: [predict.py, weights.src]
        params: [train]
        outs: [model]
    artifact: model
    example: example.csv
"""


def gen(root, size):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "kiln.yaml"), "w") as fh:
        fh.write(KILN_YAML)
    with open(os.path.join(root, "predict.py"), "w") as fh:
        fh.write(PREDICT_PY)
    with open(os.path.join(root, "params.yaml"), "w") as fh:
        fh.write("train:\n  version: 0\n")
    with open(os.path.join(root, "example.csv"), "w") as fh:
        fh.write("x\n1.5\n")
    with open(os.path.join(root, "weights.src"), "wb") as fh:
        left = size
        while left > 0:
            chunk = min(left, 8 << 20)
            fh.write(os.urandom(chunk))
            left -= chunk


def register(kiln, root, runs, out):
    samples = []
    env = dict(os.environ, NO_COLOR="1")
    # A first run builds nothing extra but warms the page cache and the stat cache of the source.
    for n in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(
            [kiln, "-C", root, "run", "--set", f"train.version={n + 1}"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0 or f"registered `big` v{n + 1}" not in done.stderr:
            sys.exit(f"kiln run {n + 1} did not register a new version:\n{done.stderr}")
        shown = subprocess.run(
            [kiln, "-C", root, "runs", "--json", "--limit", "1"],
            env=env, capture_output=True, text=True, check=True,
        )
        run_id = json.loads(shown.stdout)[0]["id"]
        detail = json.loads(subprocess.run(
            [kiln, "-C", root, "runs", "show", str(run_id), "--json"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout)
        stamps = [int(open(os.path.join(root, f)).read()) for f in (".stamp-start", ".stamp-end")]
        command = (stamps[1] - stamps[0]) / 1e9
        servable = detail["servable"]["duration_ms"] / 1000
        if n == 0:
            continue
        samples.append({"wall": wall, "command": command, "servable": servable,
                        "rest": wall - command - servable})
    size = os.path.getsize(os.path.join(root, "model", "weights.bin"))
    with open(out, "w") as fh:
        json.dump({"bytes": size, "samples": samples}, fh, indent=1)


def mlflow_client(db):
    import logging
    logging.disable(logging.WARNING)
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{db}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_fill(db, n):
    """Version 1 through MLflow's API, the rest inserted with MLflow's own ORM classes in one
    transaction (the API takes ~35 ms a version here: 10,000 would take six minutes)."""
    client = mlflow_client(db)
    tags = {"accuracy": "0.91", "f1": "0.89", "precision": "0.91", "recall": "0.88",
            "train.C": "0.01", "train.max_iter": "500", "prepare.seed": "7",
            "prepare.test_size": "0.2"}
    client.create_registered_model("m")
    client.create_model_version("m", source="file:///artifacts/1", tags=tags)
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion, SqlModelVersionTag
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
    store = SqlAlchemyStore(f"sqlite:///{db}")
    with store.ManagedSessionMaker() as session:
        first = session.query(SqlModelVersion).filter_by(name="m", version=1).one()
        columns = [c.name for c in SqlModelVersion.__table__.columns]
        row = {c: getattr(first, c) for c in columns}
        versions, version_tags = [], []
        for v in range(2, n + 1):
            versions.append(dict(row, version=v, source=f"file:///artifacts/{v}",
                                 creation_time=row["creation_time"] + v,
                                 last_updated_time=row["last_updated_time"] + v))
            version_tags += [{"workspace": row["workspace"], "name": "m", "version": v,
                              "key": k, "value": value} for k, value in tags.items()]
        session.execute(SqlModelVersion.__table__.insert(), versions)
        session.execute(SqlModelVersionTag.__table__.insert(), version_tags)
    found = client.search_model_versions("name='m'", max_results=n)
    if len(found) != n:
        sys.exit(f"mlflow lists {len(found)} versions, not {n}")
    print(f"mlflow: model `m` with {n} versions")


def mlflow_list(db, runs, out):
    client = mlflow_client(db)
    versions, models, count = [], [], 0
    for _ in range(runs):
        started = time.perf_counter()
        count = len(client.search_model_versions("name='m'", max_results=200000))
        versions.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.search_registered_models()
        models.append(time.perf_counter() - started)
    with open(out, "w") as fh:
        json.dump({"versions": count, "search_model_versions": statistics.median(versions),
                   "search_registered_models": statistics.median(models)}, fh)


def hyperfine_median(res, name):
    with open(os.path.join(res, f"{name}.json")) as fh:
        result = json.load(fh)["results"][0]
    return result["median"], min(result["times"]), max(result["times"])


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def report(res):
    meta = {}
    with open(os.path.join(res, "meta.tsv")) as fh:
        for line in fh:
            key, _, value = line.rstrip("\n").partition("\t")
            meta[key] = value
    out = [f"Registry benchmark, {meta['date']}; {meta['nproc']} cores, {meta['cpu']}, {meta['mem']}, "
           f"{meta['os']}; {meta['kiln']}; {meta['mlflow']}; {meta['hyperfine']}.", ""]

    def medians(name):
        reg = json.load(open(os.path.join(res, name)))
        parts = ("wall", "command", "servable", "rest")
        return reg, {k: statistics.median(s[k] for s in reg["samples"]) for k in parts}

    reg, med = medians("register.json")
    _, small = medians("register-small.json")
    mb = reg["bytes"] / 1e6
    per_size = med["rest"] - small["rest"]
    cp, cp_lo, cp_hi = hyperfine_median(res, "cp")
    cps, cps_lo, cps_hi = hyperfine_median(res, "cp-fsync")
    out += [f"**Registering a {mb:.0f} MB artifact** (`kiln run --set` making new content each time; "
            f"median of {len(reg['samples'])} runs; load avg {meta['load_register']}):", "",
            "| | time | MB/s |", "|---|---:|---:|",
            f"| whole `kiln run` | {ms(med['wall'])} | – |",
            f"| its stage command (writes the file) | {ms(med['command'])} | – |",
            f"| its servable check (Python loads `predict.py`) | {ms(med['servable'])} | – |",
            f"| **the rest: hash, store (copy + fsync), lay out for serving (copy), register, publish, process start** | **{ms(med['rest'])}** | **{mb / med['rest']:.0f}** |",
            f"| the rest with a 1 kB artifact instead (load avg {meta['load_register_small']}) | {ms(small['rest'])} | – |",
            f"| **the part that grows with the size** (the difference) | **{ms(per_size)}** | **{mb / per_size:.0f}** |",
            f"| reference: `cp` of the same file (page cache warm) | {ms(cp)} ({ms(cp_lo)} – {ms(cp_hi)}) | {mb / cp:.0f} |",
            f"| reference: `cp` + `sync` of the copy (load avg {meta['load_cp-fsync']}) | {ms(cps)} ({ms(cps_lo)} – {ms(cps_hi)}) | {mb / cps:.0f} |",
            "", f"Kiln's work that grows with the artifact: {per_size / cp:.1f}x the time of a plain `cp`, "
            f"{per_size / cps:.1f}x `cp` + `sync`; all of its work on a run (the rest): "
            f"{med['rest'] / cps:.1f}x `cp` + `sync`.", ""]

    n = meta["versions"]
    ml = json.load(open(os.path.join(res, "mlflow-list.json")))
    rows = []
    for name, label in [("kiln-models-list", "`kiln models list` (process)"),
                        ("kiln-models-list-model", "`kiln models list m` (process; every version, newest first)"),
                        ("kiln-models-show", "`kiln models show m` (process; one version)"),
                        ("kiln-history", "`kiln models history m --alias latest` (process; every registration's move)")]:
        median, lo, hi = hyperfine_median(res, name)
        rows.append(f"| {label} | **{ms(median)}** ({ms(lo)} – {ms(hi)}) | {meta['load_' + name]} |")
    inproc = {}
    with open(os.path.join(res, "kiln-inprocess.tsv")) as fh:
        for line in fh:
            name, _, value = line.rstrip("\n").split("\t")
            inproc[name] = float(value) / 1000
    ml_proc, ml_lo, ml_hi = hyperfine_median(res, "mlflow-process")
    out += [f"**Listing {int(n):,} versions of one model** (Kiln: `hyperfine -N`, median; MLflow "
            f"{meta['mlflow']} with its SQLite registry, {ml['versions']:,} versions with 8 tags each: "
            f"median of {meta['mlflow_runs']} in-process calls after import; target < 50 ms):", "",
            "| | median | load avg |", "|---|---:|---|", *rows,
            f"| Kiln, in process: `Registry::model_versions` (every version with its lineage) | {ms(inproc['model_versions'])} | {meta['load_kiln-inprocess']} |",
            f"| Kiln, in process: `Registry::models` (`kiln models list`'s query) | {ms(inproc['models'])} | {meta['load_kiln-inprocess']} |",
            f"| MLflow, in process: `search_model_versions(\"name='m'\")` | {ms(ml['search_model_versions'])} | {meta['load_mlflow-list']} |",
            f"| MLflow, in process: `search_registered_models()` | {ms(ml['search_registered_models'])} | {meta['load_mlflow-list']} |",
            f"| MLflow, a process: `import mlflow` + `search_model_versions` | {ms(ml_proc)} ({ms(ml_lo)} – {ms(ml_hi)}) | {meta['load_mlflow-process']} |",
            ""]
    kiln_list = hyperfine_median(res, "kiln-models-list")[0]
    out += [f"MLflow `search_model_versions` / Kiln `Registry::model_versions`, both in process: "
            f"{ml['search_model_versions'] / inproc['model_versions']:.1f}x; MLflow "
            f"`search_registered_models` in process / `kiln models list` as a whole process: "
            f"{ml['search_registered_models'] / kiln_list:.1f}x. Load average at the end: {meta['load_end']}."]
    print("\n".join(out))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "gen":
        gen(args[0], int(args[1]))
    elif command == "register":
        register(args[0], args[1], int(args[2]), args[3])
    elif command == "mlflow-fill":
        mlflow_fill(args[0], int(args[1]))
    elif command == "mlflow-list":
        mlflow_list(args[0], int(args[1]), args[2])
    elif command == "mlflow-once":
        mlflow_client(args[0]).search_model_versions("name='m'", max_results=200000)
    elif command == "report":
        report(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
