//! The registry under crashes and concurrency, through the real binary: `kill -9` at random
//! moments of registrations and alias moves leaves no version without its blobs, no alias
//! without its version and no hole in the history; runs registering into one registry at once
//! get distinct, gap-free numbers; a server following an alias counts each request under the
//! version that answered it.

// The crash test prints its seed and what its kills hit: a failure is replayed from them.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestProject, kiln_command, kiln_process, stderr, stdout};
use crate::models::{serve_production, sum_request};
use crate::serve::{post, terminate, test_python};

/// A model whose artifact is the folder `model`: `predict.py` and the `params.yaml` its stage
/// saw. It answers `a + b + train.offset`, so each `--set train.offset=N` registers a new version whose
/// answers tell it apart. `STAGE_PREFIX` runs first in the stage (a barrier, for the
/// concurrency test).
fn registry_project(stage_prefix: &str) -> TestProject {
    let project = TestProject::new(&format!(
        "models:\n  m:\n    params: params.yaml\n    stages:\n      package: {{cmd: '{stage_prefix}mkdir -p model && cp predict.py params.yaml model/', deps: [predict.py], params: [train], outs: [model]}}\n    artifact: model\n    example: example.csv\n"
    ));
    project.write("params.yaml", "train:\n  offset: 0\n");
    project.write("example.csv", "a,b\n1,2\n");
    project.write("predict.py", PREDICT_PY);
    project.write(".gitignore", ".kiln/\nmodel/\n");
    project
}

const PREDICT_PY: &str = r#"import os

SIGNATURE = {
    "inputs": [{"name": "a", "datatype": "FP64", "shape": [-1]},
               {"name": "b", "datatype": "FP64", "shape": [-1]}],
    "outputs": [{"name": "sum", "datatype": "FP64", "shape": [-1]}],
}


def load(model_dir):
    with open(os.path.join(model_dir, "params.yaml")) as f:
        return float(f.read().split("offset:")[1])


def predict(inputs, offset):
    return {"sum": inputs["a"] + inputs["b"] + offset}
"#;

/// `kiln ARGS` in `root`, started and left running, its output discarded.
fn spawn_kiln(root: &Path, args: &[&str]) -> Child {
    kiln_process(root)
        .env("KILN_PYTHON", test_python())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln")
}

fn json_of(project: &TestProject, args: &[&str]) -> Value {
    let output = project.kiln(args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

/// The newest version of `m`, 0 before the first.
fn latest_version(project: &TestProject) -> i64 {
    json_of(project, &["models", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|model| model["model"] == json!("m"))
        .map_or(0, |model| model["latest_version"].as_i64().unwrap())
}

fn alias_moves(project: &TestProject) -> usize {
    if latest_version(project) == 0 {
        return 0;
    }
    json_of(project, &["models", "history", "m", "--json"])
        .as_array()
        .unwrap()
        .len()
}

/// SplitMix64: a small seeded generator, so that a failing sequence of kills can be replayed
/// with `KILN_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// When to kill: the delay homes in on the moment the command commits, so that most kills fall
/// around it, which is the window that matters. A kill before the commit moves it later, a
/// command that finished first moves it earlier, and a kill between the commit and the end
/// (the narrowest window: the serving link moves there) keeps it. One kill in four is anywhere
/// in the command's life instead.
struct KillClock {
    delay_ms: f64,
    step_ms: f64,
}

impl KillClock {
    fn new(duration: Duration) -> KillClock {
        let ms = duration.as_secs_f64() * 1000.0;
        KillClock {
            delay_ms: ms * 0.9,
            step_ms: (ms / 50.0).max(1.0),
        }
    }

    fn next(&mut self, rng: &mut Rng) -> Duration {
        let ms = if rng.below(4) == 0 {
            rng.unit() * self.delay_ms * 1.5
        } else {
            self.delay_ms * (0.96 + 0.08 * rng.unit())
        };
        Duration::from_secs_f64(ms / 1000.0)
    }

    fn landed(&mut self, landed: Landed) {
        let step = match landed {
            Landed::BeforeCommit => self.step_ms,
            Landed::AfterCommit => 0.0,
            Landed::Finished => -self.step_ms,
        };
        self.delay_ms = (self.delay_ms + step).max(1.0);
    }
}

/// Where a kill landed.
#[derive(Debug, Clone, Copy)]
enum Landed {
    BeforeCommit,
    AfterCommit,
    /// The command ended before the kill.
    Finished,
}

/// How the killed commands ended.
#[derive(Debug, Default)]
struct Tally {
    killed_before_commit: u32,
    killed_after_commit: u32,
    finished: u32,
}

/// Starts `kiln ARGS`, kills it with SIGKILL after `delay` unless it finished first; returns
/// its exit code when it finished by itself.
fn kill_after(root: &Path, args: &[&str], delay: Duration) -> Option<i32> {
    let mut child = spawn_kiln(root, args);
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(
                status
                    .code()
                    .expect("kiln ended by a signal it was not sent"),
            );
        }
        std::thread::sleep(Duration::from_millis(2).min(delay));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    // It may have exited between the last look and the kill.
    status.code()
}

/// The seed: `KILN_TEST_SEED`, else the clock.
fn seed() -> u64 {
    std::env::var("KILN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// How long the crash loop runs (the checks after it take a few seconds more).
const CRASH_LOOP: Duration = Duration::from_secs(40);
const CRASH_LOOP_MAX: Duration = Duration::from_secs(120);

#[test]
fn kill_9_during_registrations_and_alias_moves_leaves_the_registry_consistent() {
    let seed = seed();
    eprintln!("crash test seed: {seed} (replay with KILN_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let project = registry_project("");
    let root = project.root();

    // Calibration: one run and one alias move left to finish, timed.
    let started = Instant::now();
    assert_eq!(
        kill_after(
            root,
            &["run", "--set", "train.offset=1"],
            Duration::from_secs(120)
        ),
        Some(0)
    );
    let mut runs = KillClock::new(started.elapsed());
    let started = Instant::now();
    assert_eq!(
        kill_after(
            root,
            &["models", "alias", "m@v1", "production"],
            Duration::from_secs(60)
        ),
        Some(0)
    );
    let mut moves = KillClock::new(started.elapsed());

    let (mut run_tally, mut move_tally) = (Tally::default(), Tally::default());
    let mut n = 1;
    let mut left_behind = 0;
    let loop_started = Instant::now();
    // Past `CRASH_LOOP`, it goes on (up to `CRASH_LOOP_MAX`) only until a kill has landed
    // between a registration and the end of its run.
    while loop_started.elapsed() < CRASH_LOOP
        || (loop_started.elapsed() < CRASH_LOOP_MAX && run_tally.killed_after_commit == 0)
    {
        let versions = latest_version(&project);
        if rng.below(3) > 0 {
            n += 1;
            let set = format!("train.offset={n}");
            let finished = kill_after(root, &["run", "--set", &set], runs.next(&mut rng));
            if !stale_serving_links(&project).is_empty() {
                left_behind += 1;
            }
            let committed = latest_version(&project) > versions;
            runs.landed(tally(&mut run_tally, finished, committed, seed, &[0]));
        } else {
            let version = format!("m@v{}", 1 + rng.below(versions as u64));
            let command: Vec<&str> = match rng.below(4) {
                0 => vec!["models", "alias", &version, "staging"],
                1 => vec!["models", "alias", &version, "production"],
                2 => vec![
                    "models",
                    "promote",
                    "m",
                    "--from",
                    "staging",
                    "--to",
                    "production",
                ],
                _ => vec!["models", "rollback", "m", "production"],
            };
            let before = alias_moves(&project);
            let finished = kill_after(root, &command, moves.next(&mut rng));
            if !stale_serving_links(&project).is_empty() {
                left_behind += 1;
            }
            let committed = alias_moves(&project) > before;
            // A promote from an unset alias or a rollback with nothing to undo exits 2.
            moves.landed(tally(&mut move_tally, finished, committed, seed, &[0, 2]));
        }
    }
    eprintln!(
        "runs: {run_tally:?}, killed around {:.0} ms; alias moves: {move_tally:?}, killed around {:.0} ms",
        runs.delay_ms, moves.delay_ms
    );
    assert!(
        run_tally.killed_before_commit > 0 && run_tally.killed_after_commit > 0,
        "the kills missed the registration window (seed {seed}): {run_tally:?}"
    );

    let versions = assert_registry_consistent(&project, seed);
    assert_store_holds_versions(root, &versions);
    // The commands of the checks above repaired any link a kill left behind.
    assert_eq!(stale_serving_links(&project), Vec::<String>::new());
    eprintln!("serving links left behind their alias by a kill (then repaired): {left_behind}");

    // The next run works, registers the next number and can be promoted.
    let output = kiln_command(root)
        .env("KILN_PYTHON", test_python())
        .args(["run", "--set", &format!("train.offset={}", n + 1)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let next = versions.len() as i64 + 1;
    assert!(
        stderr(&output).contains(&format!("registered `m` v{next} (now `latest`)")),
        "{}",
        stderr(&output)
    );
    let promoted = project.kiln(&[
        "models",
        "promote",
        "m",
        "--from",
        "latest",
        "--to",
        "production",
    ]);
    assert_eq!(promoted.status.code(), Some(0), "{}", stderr(&promoted));
    assert_eq!(
        std::fs::read_to_string(project.path(".kiln/serving/m@production/VERSION")).unwrap(),
        format!("{next}\n")
    );
}

fn tally(
    tally: &mut Tally,
    finished: Option<i32>,
    committed: bool,
    seed: u64,
    ok: &[i32],
) -> Landed {
    match finished {
        Some(code) => {
            assert!(
                ok.contains(&code),
                "a command that was not killed exited {code} (seed {seed})"
            );
            tally.finished += 1;
            Landed::Finished
        }
        None if committed => {
            tally.killed_after_commit += 1;
            Landed::AfterCommit
        }
        None => {
            tally.killed_before_commit += 1;
            Landed::BeforeCommit
        }
    }
}

/// The registry after the crashes: versions `1..=N` without a gap, each from a green run; every
/// alias names one of them; each alias's moves chain (each starts where the one before ended,
/// the last ends where the alias is), `latest` moved once per version, in order, by the run
/// that registered it; no run is left `running`. Returns each version's artifact digest.
fn assert_registry_consistent(project: &TestProject, seed: u64) -> Vec<String> {
    let listed = json_of(project, &["models", "list", "--json"]);
    let model = &listed[0];
    let count = model["versions"].as_i64().unwrap();
    assert_eq!(
        model["latest_version"],
        json!(count),
        "versions are not numbered 1..={count} (seed {seed}): {listed}"
    );
    let runs = json_of(project, &["runs", "--json", "--limit", "100000"]);
    let run_status: BTreeMap<i64, String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["id"].as_i64().unwrap(),
                run["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        !run_status.values().any(|status| status == "running"),
        "a killed run is still `running` (seed {seed}): {run_status:?}"
    );
    let mut digests = Vec::new();
    let mut run_of = BTreeMap::new();
    for version in 1..=count {
        let shown = json_of(
            project,
            &["models", "show", &format!("m@v{version}"), "--json"],
        );
        assert_eq!(shown["version"], json!(version));
        let run = shown["lineage"]["run_id"].as_i64().unwrap();
        assert_eq!(
            run_status.get(&run).map(String::as_str),
            Some("succeeded"),
            "version {version} names run {run}, which is not green (seed {seed})"
        );
        run_of.insert(version, run);
        digests.push(shown["artifact_digest"].as_str().unwrap().to_string());
    }
    let aliases = model["aliases"].as_object().unwrap();
    for (alias, version) in aliases {
        let version = version.as_i64().unwrap();
        assert!(
            (1..=count).contains(&version),
            "`{alias}` names version {version}, which does not exist (seed {seed})"
        );
    }
    let history = json_of(project, &["models", "history", "m", "--json"]);
    let mut by_alias: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for one in history.as_array().unwrap() {
        by_alias
            .entry(one["alias"].as_str().unwrap().to_string())
            .or_default()
            .push(one);
    }
    assert_eq!(
        by_alias.keys().collect::<Vec<_>>(),
        aliases.keys().collect::<Vec<_>>(),
        "the aliases with a history are not the aliases there are (seed {seed})"
    );
    for (alias, moves) in &by_alias {
        let mut at = Value::Null;
        for one in moves {
            assert_eq!(
                one["from_version"], at,
                "a move of `{alias}` does not start where the one before ended (seed {seed}): {one}"
            );
            let to = one["to_version"].as_i64().unwrap();
            assert!((1..=count).contains(&to), "{one}");
            at = json!(to);
        }
        assert_eq!(
            &at, &aliases[alias],
            "`{alias}` is not where its history ends (seed {seed})"
        );
    }
    let latest: Vec<(i64, i64)> = by_alias["latest"]
        .iter()
        .map(|one| {
            assert_eq!(one["command"], json!("run"), "{one}");
            (
                one["to_version"].as_i64().unwrap(),
                one["run_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        latest,
        run_of.into_iter().collect::<Vec<_>>(),
        "`latest` did not move once per version, by its run (seed {seed})"
    );
    digests
}

/// Every version's artifact is whole in the store: the object of a file artifact, or the tree
/// of a folder artifact and the object of each of its files, each re-hashed to its digest; and
/// `kiln store fsck`, which checks the whole store, finds nothing wrong.
fn assert_store_holds_versions(root: &Path, digests: &[String]) {
    let fsck = kiln_command(root)
        .args(["store", "fsck", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}{}",
        stdout(&fsck),
        stderr(&fsck)
    );
    let store = root.join(".kiln/store");
    let object = |digest: &str| store.join("objects").join(&digest[..2]).join(&digest[2..]);
    let assert_object = |digest: &str, what: &str| {
        let path = object(digest);
        let found = kiln_store::hash_file(&path)
            .unwrap_or_else(|e| panic!("{what}: object `{digest}` is missing: {e}"));
        assert_eq!(
            found.to_hex(),
            digest,
            "{what}: object `{digest}` is damaged"
        );
    };
    for (index, digest) in digests.iter().enumerate() {
        let what = format!("version {}", index + 1);
        if object(digest).exists() {
            assert_object(digest, &what);
            continue;
        }
        let tree = store.join("refs/trees").join(digest);
        let text = std::fs::read_to_string(&tree).unwrap_or_else(|e| {
            panic!("{what}: its artifact `{digest}` is neither an object nor a tree: {e}")
        });
        let tree: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: tree `{digest}` does not parse: {e}"));
        let entries = tree["entries"].as_array().unwrap();
        assert!(!entries.is_empty(), "{what}: tree `{digest}` is empty");
        for entry in entries {
            assert_object(entry["digest"].as_str().unwrap(), &what);
        }
    }
}

/// The aliases whose serving link (`.kiln/serving/m@<alias>`) names another version than the
/// registry: a kill between an alias move and the move of its link leaves it behind. The
/// registry is read through the library, since every `kiln models` command repairs the links.
fn stale_serving_links(project: &TestProject) -> Vec<String> {
    let registry = kiln_registry::Registry::open(&project.path(".kiln/kiln.db")).unwrap();
    let aliases = registry
        .models()
        .unwrap()
        .into_iter()
        .find(|model| model.model == "m")
        .map(|model| model.aliases)
        .unwrap_or_default();
    let mut stale = Vec::new();
    for (alias, version) in aliases {
        let link = project.path(&format!(".kiln/serving/m@{alias}"));
        if std::fs::symlink_metadata(&link).is_err() {
            stale.push(format!("{alias}: no link"));
            continue;
        }
        let served = std::fs::read_to_string(link.join("VERSION"))
            .unwrap_or_else(|e| panic!("the serving link of `{alias}` is dangling: {e}"));
        assert!(
            link.join("model/predict.py").is_file(),
            "the serving link of `{alias}` names no artifact"
        );
        if served.trim().parse::<i64>().ok() != Some(version) {
            stale.push(format!("{alias}: serves v{} for v{version}", served.trim()));
        }
    }
    stale
}

/// `kiln run --set train.offset=OFFSET` to the end, green.
fn run_green(project: &TestProject, offset: i64) -> String {
    let output = kiln_command(project.root())
        .env("KILN_PYTHON", test_python())
        .args(["run", "--set", &format!("train.offset={offset}")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    stderr(&output)
}

/// `kiln_requests_total` of model `m` at `version` with status 200 in a `/metrics` text; 0
/// when the series is not there.
fn requests_counted(metrics: &str, version: i64) -> u64 {
    let series =
        format!("kiln_requests_total{{model=\"m\",version=\"{version}\",status=\"200\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.trim().parse().unwrap())
}

#[test]
fn a_server_following_an_alias_counts_each_request_under_the_version_that_answered() {
    let project = registry_project("");
    run_green(&project, 10);
    run_green(&project, 20);
    let output = project.kiln(&["models", "alias", "m@v1", "production"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let (mut server, port) = serve_production(&project);
    let request = sum_request();
    // Which version answered, told by its offset: v1 adds 10, v2 adds 20.
    let mut answered = BTreeMap::from([(1, 0u64), (2, 0u64)]);
    let mut ask = || {
        let (status, body) = post(port, "/v2/models/m/infer", &request);
        assert_eq!(status, 200, "{body}");
        let version = match body["outputs"][0]["data"][0].as_f64() {
            Some(13.0) => 1,
            Some(23.0) => 2,
            _ => panic!("an answer from no registered version: {body}"),
        };
        *answered.get_mut(&version).unwrap() += 1;
        version
    };
    let get = |path: &str| {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}{path}"))
            .unwrap()
            .text()
            .unwrap()
    };
    let served_versions = || {
        let metadata: Value = serde_json::from_str(&get("/v2/models/m")).unwrap();
        metadata["versions"].clone()
    };
    for _ in 0..3 {
        assert_eq!(ask(), 1);
    }
    assert_eq!(served_versions(), json!(["1"]));
    let metrics = get("/metrics");
    assert_eq!(requests_counted(&metrics, 1), 3, "{metrics}");
    assert_eq!(requests_counted(&metrics, 2), 0, "{metrics}");

    let output = project.kiln(&[
        "models",
        "promote",
        "m",
        "--from",
        "latest",
        "--to",
        "production",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask() != 2 {
        assert!(
            Instant::now() < deadline,
            "the promoted version was not swapped in"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served_versions(), json!(["2"]));

    // After the swap: the old version's series stands still, the new one's counts every request.
    let before = get("/metrics");
    for _ in 0..5 {
        assert_eq!(ask(), 2);
    }
    let after = get("/metrics");
    assert_eq!(
        requests_counted(&after, 1),
        requests_counted(&before, 1),
        "the swapped-out version still counts:\n{after}"
    );
    assert_eq!(
        requests_counted(&after, 2),
        requests_counted(&before, 2) + 5,
        "{after}"
    );
    // Every request is counted once, under the version that answered it.
    assert_eq!(requests_counted(&after, 1), answered[&1], "{after}");
    assert_eq!(requests_counted(&after, 2), answered[&2], "{after}");
    assert!(terminate(&mut server).success());
}

/// Points `other`'s registry at `project`'s database, as two checkouts of one project sharing a
/// registry would be (`.kiln/kiln.db` linked; each keeps its own store and run lock). When the
/// registry can live in a server (`KILN_DATABASE_URL`), this becomes that variable.
fn share_registry(project: &TestProject, other: &TestProject) {
    let output = project.kiln(&["runs"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    std::fs::create_dir_all(other.path(".kiln")).unwrap();
    std::os::unix::fs::symlink(project.path(".kiln/kiln.db"), other.path(".kiln/kiln.db")).unwrap();
}

/// Rounds of the concurrency test: each registers two versions at once.
const ROUNDS: i64 = 6;

#[test]
fn two_runs_registering_into_one_registry_at_once_get_distinct_gap_free_versions() {
    // Each run's stage waits at a barrier, so that both runs reach the servable check and the
    // registration together.
    let barrier = "touch ready; while [ ! -f go ]; do sleep 0.01; done; ";
    let checkouts = [registry_project(barrier), registry_project(barrier)];
    share_registry(&checkouts[0], &checkouts[1]);
    let mut registered = Vec::new();
    for round in 0..ROUNDS {
        let runs: Vec<Child> = checkouts
            .iter()
            .enumerate()
            .map(|(i, checkout)| {
                kiln_process(checkout.root())
                    .env("KILN_PYTHON", test_python())
                    .args([
                        "run",
                        "--set",
                        &format!("train.offset={}", round * 2 + i as i64),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !checkouts.iter().all(|c| c.path("ready").exists()) {
            assert!(
                Instant::now() < deadline,
                "the runs never reached the barrier"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Both runs have the registry open: SQLite followed the link, so there is one
        // write-ahead log, next to the database itself.
        assert!(checkouts[0].path(".kiln/kiln.db-wal").exists());
        assert!(!checkouts[1].path(".kiln/kiln.db-wal").exists());
        for checkout in &checkouts {
            std::fs::remove_file(checkout.path("ready")).unwrap();
            checkout.write("go", "");
        }
        for run in runs {
            let output = run.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&output.stderr).into_owned();
            assert_eq!(output.status.code(), Some(0), "{text}");
            let version: i64 = text
                .split("registered `m` v")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse().ok())
                .unwrap_or_else(|| panic!("no version registered:\n{text}"));
            registered.push(version);
        }
        for checkout in &checkouts {
            std::fs::remove_file(checkout.path("go")).unwrap();
        }
    }
    registered.sort();
    assert_eq!(registered, (1..=ROUNDS * 2).collect::<Vec<_>>());
    for checkout in &checkouts {
        let listed = json_of(checkout, &["models", "list", "--json"]);
        assert_eq!(listed[0]["versions"], json!(ROUNDS * 2), "{listed}");
        assert_eq!(listed[0]["latest_version"], json!(ROUNDS * 2), "{listed}");
    }
    let latest: Vec<Value> = json_of(
        &checkouts[0],
        &["models", "history", "m", "--alias", "latest", "--json"],
    )
    .as_array()
    .unwrap()
    .iter()
    .map(|one| json!([one["from_version"], one["to_version"]]))
    .collect();
    let expected: Vec<Value> = (1..=ROUNDS * 2)
        .map(|v| json!([if v == 1 { Value::Null } else { json!(v - 1) }, v]))
        .collect();
    assert_eq!(latest, expected);
}

#[test]
fn a_serving_link_left_behind_by_an_interrupted_alias_move_is_repaired_by_the_next_command() {
    let project = registry_project("");
    run_green(&project, 10);
    run_green(&project, 20);
    let moved = |args: &[&str]| {
        let output = project.kiln(args);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        stderr(&output)
    };
    moved(&["models", "alias", "m@v1", "production"]);
    moved(&["models", "alias", "m@v2", "staging"]);
    // What `kill -9` between a move's commit and the move of its link leaves: the registry
    // says v2, the link a server follows still names v1.
    let leave_behind = |alias: &str| {
        moved(&["models", "alias", "m@v2", alias]);
        let link = project.path(&format!(".kiln/serving/m@{alias}"));
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("../versions/m/1", &link).unwrap();
        assert_eq!(stale_serving_links(&project).len(), 1);
    };
    leave_behind("production");
    let text = moved(&["models", "list"]);
    assert!(
        text.contains(
            "`m@production` was served from an older version (a move was interrupted): it serves v2 now"
        ),
        "{text}"
    );
    assert_eq!(stale_serving_links(&project), Vec::<String>::new());
    assert_eq!(
        std::fs::read_to_string(project.path(".kiln/serving/m@production/VERSION")).unwrap(),
        "2\n"
    );
    // A run (here a no-op) repairs them too.
    leave_behind("staging");
    run_green(&project, 20);
    assert_eq!(stale_serving_links(&project), Vec::<String>::new());
}

#[test]
fn commands_opening_a_new_registry_at_once_all_succeed() {
    // Four commands started together in a project with no `.kiln/` yet, ten times over: each
    // creates or opens the registry, and none may fail on the schema another is creating.
    for _ in 0..10 {
        let project = registry_project("");
        let commands: Vec<Child> = (0..4)
            .map(|_| {
                kiln_process(project.root())
                    .args(["models", "list"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for command in commands {
            let output = command.wait_with_output().unwrap();
            assert_eq!(
                output.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
