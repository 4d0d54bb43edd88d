//! `kiln run`: caching, restoring, parallelism, params, failures, data checks, gates, reports.

use std::time::{Duration, Instant};

use crate::common::{TestProject, kiln_command, outcomes, stderr, stdout};

/// prepare -> train -> evaluate, plus an independent `lint`. Each stage copies its input so that
/// a change flows downstream.
const CHAIN: &str = r#"models:
  m:
    stages:
      prepare:
        cmd: mkdir -p data && cp raw.csv data/clean.csv
        deps: [raw.csv]
        outs: [data]
      train:
        cmd: cat data/clean.csv > model.txt && python3 -c "import json,os; p=json.load(open(os.environ['KILN_PARAMS'])); open('model.txt','a').write(str(p['train']['C']))"
        deps: [data]
        params: [train]
        outs: [model.txt]
      evaluate:
        cmd: "echo '{\"accuracy\": 0.95, \"loss\": {\"test\": 0.2}}' > metrics.json && cat model.txt > /dev/null"
        deps: [model.txt]
        metrics: [metrics.json]
      lint:
        cmd: echo ok > lint.txt
        deps: [raw.csv]
        outs: [lint.txt]
    gates: ["accuracy >= 0.9", "loss.test < 0.5"]
"#;

fn chain() -> TestProject {
    let project = TestProject::new(CHAIN);
    project.write("raw.csv", "x\n1\n2\n");
    project.write("params.yaml", "train:\n  C: 1.0\nprepare:\n  seed: 1\n");
    project
}

fn run_ok(project: &TestProject, args: &[&str]) -> Vec<String> {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let output = project.kiln(&all);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr:\n{}",
        stderr(&output)
    );
    outcomes(&output)
}

#[test]
fn second_run_is_all_cached() {
    let project = chain();
    assert_eq!(
        run_ok(&project, &[]),
        ["evaluate: ran", "lint: ran", "prepare: ran", "train: ran"]
    );
    assert_eq!(
        run_ok(&project, &[]),
        [
            "evaluate: cached",
            "lint: cached",
            "prepare: cached",
            "train: cached"
        ]
    );
    assert_eq!(project.read("model.txt"), "x\n1\n2\n1.0");
}

#[test]
fn a_changed_dep_reruns_only_downstream_stages() {
    let project = chain();
    run_ok(&project, &[]);
    project.write("raw.csv", "x\n1\n2\n3\n");
    assert_eq!(
        run_ok(&project, &[]),
        ["evaluate: ran", "lint: ran", "prepare: ran", "train: ran"]
    );
    assert_eq!(project.read("model.txt"), "x\n1\n2\n3\n1.0");
    // The same content again (a new mtime, nothing else): the key is unchanged, the outs are
    // restored from the cache without running anything.
    project.write("raw.csv", "x\n1\n2\n");
    // `lint.txt` and `metrics.json` came out the same in between, so those stages stay cached.
    assert_eq!(
        run_ok(&project, &[]),
        [
            "evaluate: cached",
            "lint: cached",
            "prepare: restored",
            "train: restored"
        ]
    );
    assert_eq!(project.read("model.txt"), "x\n1\n2\n1.0");
}

#[test]
fn a_changed_param_reruns_only_the_stages_that_read_it() {
    let project = chain();
    run_ok(&project, &[]);
    project.write("params.yaml", "train:\n  C: 2.0\nprepare:\n  seed: 1\n");
    assert_eq!(
        run_ok(&project, &[]),
        [
            "evaluate: ran",
            "lint: cached",
            "prepare: cached",
            "train: ran"
        ]
    );
    assert_eq!(project.read("model.txt"), "x\n1\n2\n2.0");
}

#[test]
fn set_overrides_are_used_and_recorded() {
    let project = chain();
    run_ok(&project, &[]);
    assert_eq!(
        run_ok(&project, &["--set", "train.C=0.5"]),
        [
            "evaluate: ran",
            "lint: cached",
            "prepare: cached",
            "train: ran"
        ]
    );
    assert_eq!(project.read("model.txt"), "x\n1\n2\n0.5");
    let shown = stdout(&project.kiln(&["runs", "show", "2", "--json"]));
    let run: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(run["overrides"], serde_json::json!({"train.C": 0.5}));
    assert_eq!(run["params"]["train.C"], serde_json::json!(0.5));

    let typo = project.kiln(&["run", "--set", "train.c=3"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("param `train.c` is not in `params.yaml` of model `m`"),
        "{}",
        stderr(&typo)
    );
}

#[test]
fn deleted_outs_are_restored_from_the_cache() {
    let project = chain();
    run_ok(&project, &[]);
    std::fs::remove_dir_all(project.path("data")).unwrap();
    project.write("model.txt", "tampered");
    assert_eq!(
        run_ok(&project, &[]),
        [
            "evaluate: cached",
            "lint: cached",
            "prepare: restored",
            "train: restored"
        ]
    );
    assert_eq!(project.read("data/clean.csv"), "x\n1\n2\n");
    assert_eq!(project.read("model.txt"), "x\n1\n2\n1.0");
}

#[test]
fn force_reruns_everything() {
    let project = chain();
    run_ok(&project, &[]);
    assert_eq!(
        run_ok(&project, &["--force"]),
        ["evaluate: ran", "lint: ran", "prepare: ran", "train: ran"]
    );
}

#[test]
fn independent_stages_run_in_parallel() {
    // Each stage waits (up to 20 s) for the other to have started: run one at a time, the first
    // would give up and fail.
    let rendezvous = |me: &str, other: &str| {
        format!(
            "touch {me}.started; i=0; while [ ! -f {other}.started ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; test -f {other}.started && echo {me} > {me}.txt"
        )
    };
    let project = TestProject::new(&format!(
        "models:\n  m:\n    stages:\n      a: {{cmd: '{}', outs: [a.txt]}}\n      b: {{cmd: '{}', outs: [b.txt]}}\n",
        rendezvous("a", "b"),
        rendezvous("b", "a")
    ));
    run_ok(&project, &["--jobs", "2"]);

    // With one job, each stage starts after the other has finished.
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: 'echo start a >> order; sleep 0.2; echo end a >> order; echo a > a.txt', outs: [a.txt]}\n      b: {cmd: 'echo start b >> order; sleep 0.2; echo end b >> order; echo b > b.txt', outs: [b.txt]}\n",
    );
    run_ok(&project, &["--jobs", "1"]);
    let order = project.read("order");
    let lines: Vec<&str> = order.lines().collect();
    assert_eq!(lines.len(), 4, "{order}");
    assert!(
        lines[0].starts_with("start")
            && lines[1].starts_with("end")
            && lines[2].starts_with("start")
            && lines[3].starts_with("end"),
        "--jobs 1 must run one stage at a time: {order}"
    );
}

#[test]
fn a_failing_stage_shows_its_log_and_stops_downstream() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: 'echo starting; echo boom >&2; exit 3', outs: [a.txt]}\n      b: {cmd: cp a.txt b.txt, deps: [a.txt], outs: [b.txt]}\n",
    );
    let output = project.kiln(&["run"]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("error: stage `m/a` exited with code 3"),
        "{text}"
    );
    assert!(text.contains("starting\nboom"), "{text}");
    assert!(text.contains("full log: .kiln/logs/1/a.log"), "{text}");
    assert_eq!(outcomes(&output), ["a: failed:", "b: not-run"]);
    assert_eq!(
        stdout(&project.kiln(&["logs", "1", "a"])),
        "starting\nboom\n"
    );
    let runs = stdout(&project.kiln(&["runs", "--json"]));
    assert!(runs.contains("\"status\": \"failed\""), "{runs}");
}

#[test]
fn a_stage_that_does_not_write_its_out_fails() {
    let project =
        TestProject::new("models:\n  m:\n    stages:\n      a: {cmd: 'true', outs: [a.txt]}\n");
    let output = project.kiln(&["run"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("stage `m/a` succeeded but did not write `a.txt`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn failing_data_checks_fail_the_run_with_the_rows() {
    let project = TestProject::new(
        r#"models:
  m:
    stages:
      prepare:
        cmd: cp raw.csv train.csv
        deps: [raw.csv]
        outs: [train.csv]
        checks:
          train.csv:
            rows: {min: 2}
            columns:
              length: {type: float, min: 0, max: 10, missing: 0}
              species: {values: [setosa, virginica]}
      train: {cmd: cp train.csv model.txt, deps: [train.csv], outs: [model.txt]}
"#,
    );
    project.write(
        "raw.csv",
        "length,species\n1.5,setosa\n12,virginica\n,setosa\n3,dog\n",
    );
    let output = project.kiln(&["run", "--junit", "junit.xml"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("error: stage `m/prepare` wrote data that failed its checks"),
        "{text}"
    );
    assert!(text.contains("`train.csv`: column `length`"), "{text}");
    assert!(text.contains("above max 10"), "{text}");
    assert!(text.contains("dog"), "{text}");
    assert_eq!(outcomes(&output), ["prepare: failed", "train: not-run"]);
    let junit = project.read("junit.xml");
    assert!(junit.contains("check train.csv length.max"), "{junit}");
    assert!(junit.contains("<failure"), "{junit}");

    // Fixed data passes, and the failed attempt left no cache entry behind.
    project.write("raw.csv", "length,species\n1.5,setosa\n2,virginica\n");
    assert_eq!(run_ok(&project, &[]), ["prepare: ran", "train: ran"]);
}

#[test]
fn a_failing_gate_fails_the_run_with_a_table() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      eval: {cmd: \"echo '{\\\"accuracy\\\": 0.8, \\\"f1\\\": 0.9}' > metrics.json\", metrics: [metrics.json]}\n    gates: [\"accuracy >= 0.9\", \"f1 > 0.8 and accuracy > 0.5\", \"accuracy >= production.accuracy - 0.01\"]\n",
    );
    let output = project.kiln(&["run", "--report", "summary.md"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    let text = stderr(&output);
    insta::assert_snapshot!(text[text.find("gates of").unwrap()..text.find("\n\nrun 1").unwrap()]);
    let summary = project.read("summary.md");
    assert!(
        summary.contains("| `accuracy >= 0.9` | ❌ fail | accuracy=0.8 |"),
        "{summary}"
    );
}

#[test]
fn reports_compare_metrics_with_the_previous_run() {
    let project = chain();
    run_ok(&project, &[]);
    project.write("raw.csv", "x\n5\n");
    project.write("params.yaml", "train:\n  C: 3\nprepare:\n  seed: 1\n");
    let output = project.kiln(&[
        "run",
        "--junit",
        "junit.xml",
        "--report",
        "summary.md",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let summary = project.read("summary.md");
    assert!(
        summary.contains("| metric | this run | run 1 | change |"),
        "{summary}"
    );
    assert!(
        summary.contains("| `accuracy` | 0.9500 | 0.9500 | +0.0000 |"),
        "{summary}"
    );
    assert!(
        summary.contains("| `loss.test >= 0.5` | ")
            || summary.contains("| `loss.test < 0.5` | ✅ pass"),
        "{summary}"
    );
    let junit = project.read("junit.xml");
    assert!(junit.contains("tests=\"6\""), "{junit}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        json["models"][0]["metrics"]["loss.test"],
        serde_json::json!(0.2)
    );
    let diff = stdout(&project.kiln(&["metrics", "diff"]));
    assert!(
        diff.contains("accuracy") && diff.contains("+0.0000"),
        "{diff}"
    );
}

#[test]
fn status_explains_what_changed() {
    let project = chain();
    let before = stdout(&project.kiln(&["status"]));
    assert!(before.contains("m/prepare: never run"), "{before}");
    run_ok(&project, &[]);
    project.write("raw.csv", "x\n9\n");
    project.write("params.yaml", "train:\n  C: 4\nprepare:\n  seed: 1\n");
    insta::assert_snapshot!(stdout(&project.kiln(&["status"])));
}

#[test]
fn ctrl_c_cancels_the_running_commands() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      slow: {cmd: 'sleep 30 & echo $! > child.pid; wait', outs: [never.txt]}\n",
    );
    let mut child = spawn_run_until(&project, "child.pid");
    let sleep_pid: i32 = wait_for(|| project.read("child.pid").trim().parse().ok());
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // The grandchild `sleep` was in the stage's process group: it is gone too (signals are
    // delivered asynchronously, hence the wait).
    wait_for(|| (!process_running(sleep_pid)).then_some(()));
    let runs = stdout(&project.kiln(&["runs", "--json"]));
    assert!(runs.contains("\"status\": \"cancelled\""), "{runs}");
    // The database is usable and the next run starts clean.
    let output = kiln_command(project.root())
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn kill_9_mid_run_is_recovered_by_the_next_command() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      slow: {cmd: 'echo started > started.txt; sleep 30; echo x > out.txt', outs: [out.txt]}\n",
    );
    let mut child = spawn_run_until(&project, "started.txt");
    child.kill().unwrap();
    child.wait().unwrap();
    let runs = stdout(&project.kiln(&["runs", "--json"]));
    assert!(runs.contains("\"status\": \"interrupted\""), "{runs}");
    project.write(
        "kiln.yaml",
        "models:\n  m:\n    stages:\n      slow: {cmd: 'echo x > out.txt', outs: [out.txt]}\n",
    );
    assert_eq!(run_ok(&project, &[]), ["slow: ran"]);
}

/// True when `pid` is a live process (a zombie waiting to be reaped does not count).
fn process_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

#[test]
fn a_second_concurrent_run_is_refused() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      slow: {cmd: 'touch started; while [ ! -f go ]; do sleep 0.05; done; echo x > out.txt', outs: [out.txt]}\n",
    );
    let mut first = spawn_run_until(&project, "started");
    let second = project.kiln(&["run"]);
    project.write("go", "");
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another `kiln run` is running in this project"),
        "{}",
        stderr(&second)
    );
    assert!(first.wait().unwrap().success());
}

#[test]
fn runs_record_the_git_commit_and_a_dirty_tree() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: cp in.txt a.txt, deps: [in.txt], outs: [a.txt]}\n",
    );
    project.write("in.txt", "1\n");
    project.write(".gitignore", ".kiln/\na.txt\n");
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(project.root())
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        String::from_utf8_lossy(&status.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "first"]);
    let head = git(&["rev-parse", "HEAD"]);
    run_ok(&project, &[]);
    project.write("in.txt", "2\n");
    run_ok(&project, &[]);
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.kiln(&["runs", "--json"]))).unwrap();
    assert_eq!(runs[1]["commit"], serde_json::json!(head));
    assert_eq!(runs[1]["dirty"], serde_json::json!(false));
    assert_eq!(runs[0]["dirty"], serde_json::json!(true));
}

#[test]
fn previous_gates_compare_with_the_last_green_run_only() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      eval: {cmd: 'cp score.json metrics.json', deps: [score.json], metrics: [metrics.json]}\n    gates: [\"accuracy >= previous.accuracy - 0.02\"]\n",
    );
    project.write("score.json", r#"{"accuracy": 0.95}"#);
    run_ok(&project, &[]);
    project.write("score.json", r#"{"accuracy": 0.5}"#);
    assert_eq!(project.kiln(&["run"]).status.code(), Some(4));
    // Nothing changed: the failed run must not become the bar.
    assert_eq!(project.kiln(&["run"]).status.code(), Some(4));
}

#[test]
fn tightened_checks_fail_a_cached_stage() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      prep: {cmd: 'cp raw.csv out.csv', deps: [raw.csv], outs: [out.csv], checks: {out.csv: {rows: {min: 1}}}}\n",
    );
    project.write("raw.csv", "x\n1\n");
    run_ok(&project, &[]);
    project.write(
        "kiln.yaml",
        "models:\n  m:\n    stages:\n      prep: {cmd: 'cp raw.csv out.csv', deps: [raw.csv], outs: [out.csv], checks: {out.csv: {rows: {min: 5}}}}\n",
    );
    let output = project.kiln(&["run"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("1 rows, expected at least 5")
            || stderr(&output).contains("expected at least 5"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn nothing_a_stage_starts_outlives_it() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: '(sleep 30; echo late > late.txt) & echo $! > background.pid; echo x > a.txt', outs: [a.txt]}\n",
    );
    run_ok(&project, &[]);
    // Killed before the stage's outs were stored (signals are delivered asynchronously, hence
    // the wait; the process would otherwise live for 30 s).
    let pid: i32 = project.read("background.pid").trim().parse().unwrap();
    wait_for(|| (!process_running(pid)).then_some(()));
    assert!(!project.path("late.txt").exists());
}

#[test]
fn set_reaches_only_the_models_that_have_the_param() {
    let project = TestProject::new(
        r#"models:
  features:
    dir: features
    stages:
      build: {cmd: "python3 -c \"import json,os; p=json.load(open(os.environ['KILN_PARAMS'])); open('f.txt','w').write(str(p['bins']))\"", params: [bins], outs: [f.txt]}
  model:
    dir: model
    stages:
      train: {cmd: "python3 -c \"import json,os; p=json.load(open(os.environ['KILN_PARAMS'])); open('m.txt','w').write(open('../features/f.txt').read() + str(p['train']['C']))\"", deps: [../features/f.txt], params: [train], outs: [m.txt]}
"#,
    );
    project.write("features/params.yaml", "bins: 10\n");
    project.write("model/params.yaml", "train:\n  C: 1\n");
    run_ok(&project, &[]);
    assert_eq!(
        run_ok(&project, &["model", "--set", "train.C=2"]),
        ["build: cached", "train: ran"]
    );
    assert_eq!(project.read("model/m.txt"), "102");
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.kiln(&["runs", "--json"]))).unwrap();
    let overrides: Vec<&serde_json::Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|r| &r["overrides"])
        .collect();
    assert!(
        overrides.contains(&&serde_json::json!({"train.C": 2}))
            && overrides.contains(&&serde_json::json!({})),
        "{runs}"
    );
}

#[test]
fn status_agrees_with_run_about_restoring() {
    let project = chain();
    run_ok(&project, &[]);
    run_ok(&project, &["--set", "train.C=3.0"]);
    // Back to 1.0 (as `git checkout params.yaml` would), which already ran: train's result is
    // restored, not rerun.
    project.write("params.yaml", "train:\n  C: 1.0\nprepare:\n  seed: 1\n");
    let status = stdout(&project.kiln(&["status", "--json"]));
    let items: serde_json::Value = serde_json::from_str(&status).unwrap();
    let train = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["stage"] == "m/train")
        .unwrap();
    assert_eq!(
        train["status"], "will be restored from the cache",
        "{status}"
    );
    assert_eq!(
        run_ok(&project, &[]),
        [
            "evaluate: cached",
            "lint: cached",
            "prepare: cached",
            "train: restored"
        ]
    );
    std::fs::write(project.path("lint.txt"), "tampered").unwrap();
    let status = stdout(&project.kiln(&["status"]));
    assert!(
        status.contains("m/lint: will be restored from the cache"),
        "{status}"
    );
    assert!(status.contains("m/train: up to date"), "{status}");
}

#[test]
fn an_unreadable_metrics_file_is_named() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      eval: {cmd: 'echo \"{accuracy: [\" > metrics.json', metrics: [metrics.json]}\n    gates: [\"accuracy >= 0.9\"]\n",
    );
    let output = project.kiln(&["run"]);
    assert_eq!(output.status.code(), Some(4));
    let text = stderr(&output);
    assert!(
        text.contains("warning: metrics of stage `m/eval`: `")
            && text.contains("metrics.json` is not valid YAML or JSON"),
        "{text}"
    );
}

/// Starts `kiln run` in the background and waits (up to 10 s) until the stage has written
/// `marker`, i.e. until a stage command is running.
fn spawn_run_until(project: &TestProject, marker: &str) -> std::process::Child {
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .arg("run")
        .current_dir(project.root())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(|| project.path(marker).exists().then_some(()));
    child
}

/// Polls `probe` until it gives a value; panics after 30 s (a generous bound for loaded CI
/// machines: the tests wait on events, not on durations).
fn wait_for<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for an event");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The python that has PyYAML (`KILN_TEST_PYTHON`, else `python3`).
fn test_python() -> String {
    std::env::var("KILN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

const PARAMS_YAML: &str = "# Tuned by hand: keep the comments.\ntrain:\n  C: 1.0        # regularisation\n  epochs: 5\n  solver: lbfgs\nlayers: [16, 8]\nseed: 7\n";

/// A project whose script reads `params.yaml` itself (as most DVC projects' scripts do) and
/// writes what it saw into its metrics.
fn reads_params_yaml() -> TestProject {
    let project = TestProject::new(&format!(
        "models:\n  m:\n    stages:\n      train:\n        cmd: {} train.py\n        params: [train, layers]\n        metrics: [metrics.json]\n",
        test_python()
    ));
    project.write("params.yaml", PARAMS_YAML);
    project.write(
        "train.py",
        "import json, yaml\n\
         p = yaml.safe_load(open('params.yaml'))\n\
         t = p['train']\n\
         seen = {'C': t['C'], 'epochs': t['epochs'], 'layer0': p['layers'][0],\n\
                 'solver_is_saga': float(t['solver'] == 'saga'),\n\
                 'C_is_float': float(isinstance(t['C'], float))}\n\
         json.dump(seen, open('metrics.json', 'w'))\n",
    );
    project
}

/// A metric of a run record, whether metrics are listed as pairs or as an object.
fn recorded_metric(run: &serde_json::Value, name: &str) -> Option<f64> {
    match &run["metrics"] {
        serde_json::Value::Object(map) => map.get(name)?.as_f64(),
        serde_json::Value::Array(pairs) => pairs
            .iter()
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].as_f64()),
        _ => None,
    }
}

#[test]
fn set_reaches_scripts_that_read_params_yaml_and_the_record_matches() {
    let project = reads_params_yaml();
    let output = project.kiln(&[
        "run",
        "--set",
        "train.C=0.5",
        "--set",
        "train.epochs=10",
        "--set",
        "train.solver=saga",
        "--set",
        "layers.0=32",
    ]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("params.yaml: train.C = 0.5 (was 1.0)")
            && text.contains("params.yaml: train.epochs = 10 (was 5)")
            && text.contains("params.yaml: train.solver = saga (was lbfgs)"),
        "{text}"
    );
    // Only the values changed: comments, order and layout are the user's.
    assert_eq!(
        project.read("params.yaml"),
        PARAMS_YAML
            .replace("C: 1.0 ", "C: 0.5 ")
            .replace("epochs: 5", "epochs: 10")
            .replace("lbfgs", "saga")
            .replace("[16, 8]", "[32, 8]")
    );
    // What the script saw...
    let seen: serde_json::Value =
        serde_json::from_str(&project.read("metrics.json")).expect("metrics.json");
    assert_eq!(
        seen,
        serde_json::json!({"C": 0.5, "epochs": 10, "layer0": 32, "solver_is_saga": 1.0, "C_is_float": 1.0})
    );
    // ...is what the run records.
    let shown = stdout(&project.kiln(&["runs", "show", "1", "--json"]));
    let run: serde_json::Value = serde_json::from_str(&shown).expect("runs show --json");
    assert_eq!(run["params"]["train.C"], serde_json::json!(0.5), "{shown}");
    assert_eq!(
        run["params"]["train.epochs"],
        serde_json::json!(10),
        "{shown}"
    );
    assert_eq!(
        run["params"]["train.solver"],
        serde_json::json!("saga"),
        "{shown}"
    );
    assert_eq!(run["params"]["layers.0"], serde_json::json!(32), "{shown}");
    assert_eq!(recorded_metric(&run, "C"), Some(0.5), "{shown}");
    assert_eq!(recorded_metric(&run, "epochs"), Some(10.0), "{shown}");
    assert_eq!(
        recorded_metric(&run, "solver_is_saga"),
        Some(1.0),
        "{shown}"
    );

    // The file now holds the values: a plain run is a no-op.
    assert_eq!(run_ok(&project, &[]), ["train: cached"]);
}

#[test]
fn set_refuses_a_section_and_writes_nothing() {
    let project = reads_params_yaml();
    let output = project.kiln(&["run", "--set", "train.C=2", "--set", "train=3"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("cannot apply `--set` to `params.yaml`")
            && text.contains("`train` is a mapping, not a single value; set one of its keys instead: `train.C`, `train.epochs`, `train.solver`"),
        "{text}"
    );
    assert_eq!(project.read("params.yaml"), PARAMS_YAML);
    assert!(!project.path("metrics.json").exists());
}

#[test]
fn status_with_set_explains_what_would_run_without_writing() {
    let project = chain();
    run_ok(&project, &[]);
    let before = project.read("params.yaml");
    let output = project.kiln(&["status", "--set", "train.C=7"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let status = stdout(&output);
    assert!(
        status.contains("m/train: stale") && status.contains("param `train.C` changed: 1.0 -> 7"),
        "{status}"
    );
    assert!(status.contains("m/prepare: up to date"), "{status}");
    assert_eq!(project.read("params.yaml"), before);
    let typo = project.kiln(&["status", "--set", "train.c=7"]);
    assert_eq!(typo.status.code(), Some(2), "{}", stderr(&typo));
}

#[test]
fn outs_go_into_the_gitignore_of_their_folder() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      prep: {cmd: 'mkdir -p data/processed && cp raw.csv data/processed/clean.csv', deps: [raw.csv], outs: [data/processed]}\n      train: {cmd: 'mkdir -p models cache && cp data/processed/clean.csv models/model.pkl && cp raw.csv kept.txt && cp raw.csv cache/scratch.csv', deps: [data/processed], outs: [models/model.pkl, kept.txt, cache/scratch.csv]}\n",
    );
    project.write("raw.csv", "x\n1\n");
    project.write("data/.gitignore", "# mine\n*.tmp");
    project.write("kept.txt", "x\n1\n");
    // An out that a pattern higher up already ignores gets no line of its own.
    project.write(".gitignore", "/cache/\n");
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .current_dir(project.root())
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    git(&["init", "-q"]);
    // `kept.txt` is tracked: the user's choice, left alone.
    git(&[
        "add",
        "kiln.yaml",
        "raw.csv",
        "data/.gitignore",
        "kept.txt",
        ".gitignore",
    ]);
    git(&["commit", "-qm", "first"]);
    run_ok(&project, &[]);
    assert_eq!(
        project.read("data/.gitignore"),
        "# mine\n*.tmp\n/processed\n"
    );
    assert_eq!(project.read("models/.gitignore"), "/model.pkl\n");
    assert_eq!(
        project.read(".gitignore"),
        "/cache/\n",
        "kept.txt is tracked"
    );
    assert!(
        !project.path("cache/.gitignore").exists(),
        "cache/ is ignored already"
    );
    // Again, and after the outs were deleted and restored: no line twice.
    run_ok(&project, &["--force"]);
    std::fs::remove_dir_all(project.path("data/processed")).unwrap();
    run_ok(&project, &[]);
    assert_eq!(
        project.read("data/.gitignore"),
        "# mine\n*.tmp\n/processed\n"
    );
    assert_eq!(project.read("models/.gitignore"), "/model.pkl\n");
    // git sees no untracked out.
    let untracked = git(&["status", "--porcelain", "--untracked-files=all"]);
    assert!(
        !untracked.contains("processed/") && !untracked.contains("model.pkl"),
        "{untracked}"
    );
}

#[test]
fn outside_git_no_gitignore_is_written() {
    let project = chain();
    run_ok(&project, &[]);
    assert!(!project.path(".gitignore").exists());
}

#[test]
fn a_failed_environment_build_names_its_log() {
    let project = TestProject::new(
        "models:\n  m:\n    python: {requirements: requirements.txt}\n    stages:\n      a: {cmd: echo x > a.txt, outs: [a.txt]}\n",
    );
    // A requirement naming a local folder that does not exist: the installer fails at once.
    project.write("requirements.txt", "./no-such-package-dir\n");
    let output = project.kiln(&["run"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let log = text
        .split("(installer log: `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("the build should name its log first:\n{text}"));
    assert!(log.ends_with("kiln-install.log"), "{text}");
    assert!(
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("no-such-package-dir")),
        "{log}"
    );
    assert!(
        text.contains("error: installing requirements for `")
            && text.contains(&format!("the full log is `{log}`")),
        "{text}"
    );
    assert!(!project.path("a.txt").exists());
}

#[test]
fn set_refuses_a_param_no_stage_declares_and_writes_nothing() {
    // The script reads params.yaml, but the stage does not declare it: with the value written,
    // the stage would stay cached and the run would claim a value nothing trained with.
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      train: {cmd: 'cat params.yaml > seen.txt', outs: [seen.txt]}\n",
    );
    project.write("params.yaml", "train:\n  epochs: 3\n");
    run_ok(&project, &[]);
    for command in ["run", "status"] {
        let output = project.kiln(&[command, "--set", "train.epochs=10"]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{command}: {text}");
        assert!(
            text.contains("no stage of model `m` declares param `train.epochs`")
                && text.contains("hint: add `params: [train]` to the stage that reads it"),
            "{command}: {text}"
        );
        assert_eq!(project.read("params.yaml"), "train:\n  epochs: 3\n");
    }
}
