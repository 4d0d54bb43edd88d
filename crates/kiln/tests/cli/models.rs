//! The model registry through `kiln run`, `kiln models` and `kiln serve`: green runs register
//! versions with their lineage, failed runs nothing; aliases move and are audited; gates compare
//! with the version in `production`; a server follows an alias as it moves.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestProject, kiln_command, stderr, stdout};
use crate::serve::{free_port, post, spawn_serve, terminate, test_python, wait_listening};

/// A model whose artifact is the folder `model` (its `predict.py` and `score.json`), whose
/// accuracy is what `score.json` says, gated against the version in `production`.
pub fn project() -> TestProject {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      package: {cmd: 'mkdir -p model && cp predict.py score.json model/ && cp score.json metrics.json', deps: [predict.py, score.json], outs: [model], metrics: [metrics.json]}\n    artifact: model\n    example: example.csv\n    gates: [\"accuracy >= production.accuracy - 0.01\"]\n",
    );
    project.write("predict.py", &adder(0));
    project.write("example.csv", "a,b\n1,2\n");
    project
}

/// A `predict.py` answering `a + b + offset`.
pub fn adder(offset: i64) -> String {
    format!(
        "SIGNATURE = {{\n    \"inputs\": [{{\"name\": \"a\", \"datatype\": \"FP64\", \"shape\": [-1]}},\n               {{\"name\": \"b\", \"datatype\": \"FP64\", \"shape\": [-1]}}],\n    \"outputs\": [{{\"name\": \"sum\", \"datatype\": \"FP64\", \"shape\": [-1]}}],\n}}\n\ndef predict(inputs):\n    return {{\"sum\": inputs[\"a\"] + inputs[\"b\"] + {offset}}}\n"
    )
}

fn run_with_accuracy(project: &TestProject, accuracy: f64) -> Output {
    project.write("score.json", &format!("{{\"accuracy\": {accuracy}}}"));
    kiln_command(project.root())
        .env("KILN_PYTHON", test_python())
        .arg("run")
        .output()
        .unwrap()
}

pub fn green(project: &TestProject, accuracy: f64) {
    let output = run_with_accuracy(project, accuracy);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

pub fn json_of(project: &TestProject, args: &[&str]) -> Value {
    let output = project.kiln(args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

fn versions(project: &TestProject) -> Value {
    let listed = json_of(project, &["models", "list", "--json"]);
    listed[0]["versions"].clone()
}

#[test]
fn a_green_run_registers_a_version_with_its_lineage_and_a_failed_run_nothing() {
    let project = project();
    let output = run_with_accuracy(&project, 0.9);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("registered `m` v1 (now `latest`)"),
        "{}",
        stderr(&output)
    );
    // The same artifact with the same lineage is not registered twice.
    let again = run_with_accuracy(&project, 0.9);
    assert!(
        stderr(&again).contains("`m` v1 already holds this artifact"),
        "{}",
        stderr(&again)
    );
    green(&project, 0.95);
    // A model that cannot be served fails the run, which registers nothing.
    project.write(
        "predict.py",
        "def predict(inputs):\n    raise ValueError('no')\n",
    );
    assert_eq!(run_with_accuracy(&project, 0.97).status.code(), Some(5));

    let listed = json_of(&project, &["models", "list", "--json"]);
    assert_eq!(
        listed,
        json!([{"model": "m", "versions": 2, "latest_version": 2, "aliases": {"latest": 2}}])
    );
    let shown = json_of(&project, &["models", "show", "m@v1", "--json"]);
    assert_eq!(shown["version"], json!(1));
    assert_eq!(shown["lineage"]["run_id"], json!(1));
    assert_eq!(shown["lineage"]["metrics"], json!({"accuracy": 0.9}));
    assert_eq!(shown["lineage"]["dirty"], json!(false));
    assert_eq!(shown["lineage"]["servable"]["passed"], json!(true));
    let deps = shown["lineage"]["deps"].as_object().unwrap();
    assert_eq!(
        deps.keys().collect::<Vec<_>>(),
        ["predict.py", "score.json"],
        "{shown}"
    );
    assert!(deps["score.json"].as_str().is_some_and(|d| d.len() == 64));
    assert!(
        shown["artifact_digest"]
            .as_str()
            .is_some_and(|d| d.len() == 64)
    );
    assert_eq!(
        json_of(&project, &["models", "show", "m", "--json"])["aliases"],
        json!(["latest"])
    );

    let diff = json_of(&project, &["models", "diff", "m@v1", "m@latest", "--json"]);
    assert_eq!(diff["metrics"][0]["key"], json!("accuracy"));
    let delta = diff["metrics"][0]["delta"].as_f64().unwrap();
    assert!((delta - 0.05).abs() < 1e-9, "{diff}");
    assert_eq!(diff["deps"][0]["key"], json!("score.json"), "{diff}");
    assert_eq!(
        (diff["a"]["run_id"].clone(), diff["b"]["run_id"].clone()),
        (json!(1), json!(3))
    );

    let text = stdout(&project.kiln(&["models", "show", "m@v2"]));
    assert!(text.starts_with("m v2  (latest)\n"), "{text}");
    assert!(text.contains("accuracy"), "{text}");
    let text = stdout(&project.kiln(&["models", "diff", "m@v1", "m@v2"]));
    assert!(text.contains("0.9 -> 0.95  (+0.050000)"), "{text}");
}

#[test]
fn aliases_move_roll_back_and_every_move_is_audited() {
    let project = project();
    for accuracy in [0.9, 0.91, 0.92] {
        green(&project, accuracy);
    }
    assert_eq!(versions(&project), json!(3));
    let moved = |args: &[&str]| {
        let output = project.kiln(args);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        stderr(&output)
    };
    let text = moved(&[
        "models",
        "alias",
        "m@v1",
        "production",
        "--reason",
        "first release",
    ]);
    assert!(text.contains("`m@production`: - -> v1"), "{text}");
    assert_eq!(
        project.read(".kiln/serving/m@production/model/score.json"),
        "{\"accuracy\": 0.9}"
    );
    moved(&["models", "alias", "m@v3", "staging"]);
    moved(&[
        "models",
        "promote",
        "m",
        "--from",
        "staging",
        "--to",
        "production",
    ]);
    assert_eq!(
        json_of(&project, &["models", "show", "m@production", "--json"])["version"],
        json!(3)
    );
    let text = moved(&[
        "models",
        "rollback",
        "m",
        "production",
        "--reason",
        "bad canary",
    ]);
    assert!(text.contains("`m@production`: v3 -> v1"), "{text}");
    assert_eq!(
        project.read(".kiln/serving/m@production/model/score.json"),
        "{\"accuracy\": 0.9}"
    );

    let history = json_of(
        &project,
        &["models", "history", "m", "--alias", "production", "--json"],
    );
    let moves: Vec<(Value, Value, Value, Value)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["from_version"].clone(),
                m["to_version"].clone(),
                m["command"].clone(),
                m["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            (
                json!(null),
                json!(1),
                json!("alias"),
                json!("first release")
            ),
            (json!(1), json!(3), json!("promote"), json!(null)),
            (json!(3), json!(1), json!("rollback"), json!("bad canary")),
        ]
    );
    let all = json_of(&project, &["models", "history", "m", "--json"]);
    let latest_moves = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["alias"] == json!("latest"))
        .count();
    assert_eq!(latest_moves, 3, "every registration moves `latest`");
    let text = stdout(&project.kiln(&["models", "history", "m"]));
    assert!(text.contains("bad canary"), "{text}");

    // Bad input: a clear message and exit code 2, nothing moved.
    let refused = |args: &[&str], message: &str| {
        let output = project.kiln(args);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
    };
    refused(
        &["models", "alias", "m@v1", "Prod"],
        "`Prod` cannot be an alias: an alias starts with a lowercase letter",
    );
    refused(
        &["models", "alias", "m@v1", "latest"],
        "`latest` cannot be an alias",
    );
    refused(
        &["models", "alias", "m@v9", "staging"],
        "model `m` has no version 9",
    );
    refused(
        &["models", "show", "nope"],
        "no version of model `nope` is registered",
    );
    refused(
        &["models", "show", "m@canary"],
        "no version of model `m` is in `canary`",
    );
    refused(
        &["models", "rollback", "m", "staging"],
        "alias `staging` of model `m` named no version before this one",
    );
    assert_eq!(
        json_of(
            &project,
            &["models", "history", "m", "--alias", "production", "--json"]
        )
        .as_array()
        .unwrap()
        .len(),
        3
    );
}

#[test]
fn a_gate_against_production_passes_without_one_and_fails_when_worse() {
    let project = project();
    let first = run_with_accuracy(&project, 0.9);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("no version of model `m` is in `production` yet"),
        "{}",
        stderr(&first)
    );
    project.kiln(&["models", "alias", "m@v1", "production"]);

    let worse = run_with_accuracy(&project, 0.85);
    assert_eq!(worse.status.code(), Some(4), "{}", stderr(&worse));
    assert!(
        stderr(&worse).contains("production.accuracy=0.9"),
        "{}",
        stderr(&worse)
    );
    assert_eq!(
        versions(&project),
        json!(1),
        "a failed run registers nothing"
    );

    let close_enough = run_with_accuracy(&project, 0.895);
    assert_eq!(
        close_enough.status.code(),
        Some(0),
        "{}",
        stderr(&close_enough)
    );
    assert_eq!(versions(&project), json!(2));
}

#[test]
fn kiln_serve_follows_an_alias_as_it_moves() {
    let project = project();
    green(&project, 0.9);
    project.write("predict.py", &adder(100));
    green(&project, 0.92);
    project.kiln(&["models", "alias", "m@v1", "production"]);

    let (mut server, port) = serve_production(&project);
    let request = sum_request();
    let answer = || {
        let (status, body) = post(port, "/v2/models/m/infer", &request);
        assert_eq!(status, 200, "{body}");
        body["outputs"][0]["data"][0].clone()
    };
    assert_eq!(answer(), json!(3.0));
    // The v2 API's version is the registry's.
    let versions = || {
        let metadata: Value =
            reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/models/m"))
                .unwrap()
                .json()
                .unwrap();
        metadata["versions"].clone()
    };
    assert_eq!(versions(), json!(["1"]));

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
    while answer() != json!(103.0) {
        assert!(
            Instant::now() < deadline,
            "the promoted version was not swapped in"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(versions(), json!(["2"]));
    assert!(terminate(&mut server).success());
}

#[test]
fn kiln_models_list_model_lists_its_versions_newest_first() {
    let project = project();
    for accuracy in [0.9, 0.91, 0.92] {
        green(&project, accuracy);
    }
    let output = project.kiln(&["models", "alias", "m@v2", "production"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let listed = json_of(&project, &["models", "list", "m", "--json"]);
    let shown: Vec<(i64, Value, f64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["aliases"].clone(),
                v["metrics"]["accuracy"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (3, json!(["latest"]), 0.92),
            (2, json!(["production"]), 0.91),
            (1, json!([]), 0.9)
        ]
    );
    let output = project.kiln(&["models", "list", "m", "--limit", "1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("VERSION"), "{text}");
    assert!(lines[1].starts_with("v3 "), "{text}");
    assert!(lines[1].contains("latest"), "{text}");
    assert!(lines[1].ends_with("accuracy=0.92"), "{text}");

    let unknown = project.kiln(&["models", "list", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no version of model `nope` is registered"),
        "{}",
        stderr(&unknown)
    );
    let stray = project.kiln(&["models", "list", "--limit", "1"]);
    assert_eq!(stray.status.code(), Some(2), "{}", stderr(&stray));
}

/// `kiln serve m@production` in `project`, watching the alias every 100 ms; with its port.
pub(crate) fn serve_production(project: &TestProject) -> (std::process::Child, u16) {
    let port = free_port();
    let python = test_python();
    let mut server = spawn_serve(
        project.root(),
        &[
            "m@production",
            "--port",
            &port.to_string(),
            "--watch-interval-ms",
            "100",
            "--python",
            python.to_str().unwrap(),
        ],
    );
    wait_listening(&mut server);
    (server, port)
}

/// A v2 request asking an adder model for `1 + 2`.
pub(crate) fn sum_request() -> Value {
    json!({"inputs": [
        {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]},
        {"name": "b", "shape": [1], "datatype": "FP64", "data": [2.0]},
    ]})
}
