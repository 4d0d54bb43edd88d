//! `kiln runs`, `kiln runs show`, `kiln run --json` and `kiln metrics diff --json`: failures told
//! apart, and typed JSON (objects and arrays, never JSON inside strings).

use serde_json::{Value, json};

use crate::common::{TestProject, stderr, stdout};

/// A data check, a stage that fails on demand, metrics, a gate and an artifact folder (a
/// `predict.py` model, which the servable check loads and feeds rows of `train.csv`).
const PROJECT: &str = r#"models:
  m:
    stages:
      prepare:
        cmd: cp raw.csv train.csv
        deps: [raw.csv]
        outs: [train.csv]
        checks:
          train.csv:
            columns:
              x: {min: 0}
      train:
        cmd: "test \"$(cat fail.txt)\" = no && mkdir -p model && cp train.csv model/data.csv && cp predict.py model/ && cp score.json metrics.json"
        deps: [train.csv, predict.py, score.json, fail.txt]
        params: [train]
        outs: [model]
        metrics: [metrics.json]
    artifact: model
    gates: ["accuracy >= 0.9"]
"#;

const PREDICT_PY: &str = "def predict(inputs):\n    return {\"y\": inputs[\"x\"] * 2}\n";

/// The project, its data and a model that passes its data check and gate.
fn green_project() -> TestProject {
    let project = TestProject::new(PROJECT);
    project.write("params.yaml", "train:\n  C: 1.0\n");
    project.write("predict.py", PREDICT_PY);
    project.write("raw.csv", "x\n1\n2\n");
    project.write("score.json", r#"{"accuracy": 0.95}"#);
    project.write("fail.txt", "no\n");
    project
}

fn json_of(output: &std::process::Output) -> Value {
    let text = stdout(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// No string anywhere in `value` is itself a JSON object or array.
fn assert_no_json_in_strings(value: &Value) {
    match value {
        Value::String(text) => assert!(
            !serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object() || v.is_array()),
            "JSON inside a string: {text}"
        ),
        Value::Array(items) => items.iter().for_each(assert_no_json_in_strings),
        Value::Object(map) => map.values().for_each(assert_no_json_in_strings),
        _ => {}
    }
}

fn assert_is_out(out: &Value, path: &str, kind: &str) {
    assert_eq!(out["path"], json!(path), "{out}");
    assert_eq!(out["kind"], json!(kind), "{out}");
    assert_eq!(out["executable"], json!(false), "{out}");
    let digest = out["digest"].as_str().expect("the digest is a string");
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );
}

#[test]
fn runs_tell_failures_apart_and_speak_typed_json() {
    let project = green_project();

    // 1: green, with an override.
    let green = project.kiln(&["run", "--set", "train.C=0.5", "--json"]);
    assert_eq!(green.status.code(), Some(0), "{}", stderr(&green));
    let report = json_of(&green);
    assert_no_json_in_strings(&report);
    assert_eq!(report["failure"], Value::Null);
    let model = &report["models"][0];
    assert_eq!(model["status"], json!("succeeded"));
    assert_eq!(model["metrics"], json!({"accuracy": 0.95}));
    let train = &model["stages"][1];
    assert_eq!(train["outcome"], json!("ran"));
    assert_is_out(&train["outs"][0], "model", "dir");
    assert_is_out(&model["stages"][0]["outs"][0], "train.csv", "file");
    let checks = model["stages"][0]["checks"].as_array().unwrap();
    assert!(
        checks.contains(&json!({"stage": "prepare", "file": "train.csv", "column": "x", "rule": "min", "passed": true, "message": checks[1]["message"]})),
        "{checks:?}"
    );
    assert!(checks.iter().all(|c| c["passed"].is_boolean()));
    assert_eq!(model["gates"][0]["verdict"], json!("pass"));

    // 2: a gate fails.
    project.write("score.json", r#"{"accuracy": 0.5}"#);
    let gate = project.kiln(&["run", "--json"]);
    assert_eq!(gate.status.code(), Some(4), "{}", stderr(&gate));
    assert!(
        stderr(&gate).contains("run 2 of `m` failed (gate)"),
        "{}",
        stderr(&gate)
    );
    let report = json_of(&gate);
    assert_eq!(report["failure"], json!("gate"));
    assert_eq!(report["models"][0]["failure"], json!("gate"));
    assert_eq!(report["models"][0]["gates"][0]["verdict"], json!("fail"));
    assert_eq!(
        report["models"][0]["gates"][0]["values"],
        json!({"accuracy": 0.5})
    );

    // 3: a data check fails.
    project.write("raw.csv", "x\n-1\n");
    assert_eq!(project.kiln(&["run"]).status.code(), Some(3));

    // 4: a stage fails.
    project.write("raw.csv", "x\n1\n2\n");
    project.write("fail.txt", "yes\n");
    assert_eq!(project.kiln(&["run"]).status.code(), Some(1));

    let table = stdout(&project.kiln(&["runs"]));
    let statuses: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|line| {
            [
                "failed (stage)",
                "failed (check)",
                "failed (gate)",
                "succeeded",
            ]
            .into_iter()
            .find(|word| line.contains(word))
            .unwrap_or(line)
        })
        .collect();
    assert_eq!(
        statuses,
        [
            "failed (stage)",
            "failed (check)",
            "failed (gate)",
            "succeeded"
        ],
        "{table}"
    );

    let runs = json_of(&project.kiln(&["runs", "--json"]));
    assert_no_json_in_strings(&runs);
    let failures: Vec<&Value> = runs
        .as_array()
        .expect("an array of runs")
        .iter()
        .map(|r| &r["failure"])
        .collect();
    assert_eq!(
        failures,
        [
            &json!("stage"),
            &json!("check"),
            &json!("gate"),
            &Value::Null
        ]
    );
    assert_eq!(runs[3]["params"], json!({"train.C": 0.5}));
    assert_eq!(runs[3]["overrides"], json!({"train.C": 0.5}));
    assert_eq!(runs[2]["overrides"], json!({}));
    assert!(
        runs[0]["message"]
            .as_str()
            .unwrap()
            .contains("stage `train`")
    );

    let shown = json_of(&project.kiln(&["runs", "show", "1", "--json"]));
    assert_no_json_in_strings(&shown);
    assert_eq!(shown["metrics"], json!({"accuracy": 0.95}));
    assert_eq!(shown["overrides"], json!({"train.C": 0.5}));
    assert_eq!(shown["stages"][1]["outcome"], json!("ran"));
    assert_is_out(&shown["stages"][1]["outs"][0], "model", "dir");
    let rules: Vec<(&Value, &Value)> = shown["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (&c["column"], &c["rule"]))
        .collect();
    assert_eq!(
        rules,
        [
            (&json!("x"), &json!("present")),
            (&json!("x"), &json!("min"))
        ]
    );
    assert_eq!(shown["gates"][0]["verdict"], json!("pass"));
    let failed_stage = json_of(&project.kiln(&["runs", "show", "4", "--json"]));
    assert_eq!(failed_stage["stages"][1]["outcome"], json!("failed"));
    assert_eq!(failed_stage["stages"][1]["outs"], json!([]));

    let diff = json_of(&project.kiln(&["metrics", "diff", "1", "2", "--json"]));
    assert_no_json_in_strings(&diff);
    let accuracy = &diff["metrics"]["accuracy"];
    assert_eq!(
        (&accuracy["old"], &accuracy["new"]),
        (&json!(0.95), &json!(0.5))
    );
    assert!(accuracy["delta"].as_f64().is_some(), "{diff}");
}

#[test]
fn runs_show_prints_why_a_run_failed() {
    let project = green_project();
    project.write("score.json", r#"{"accuracy": 0.5}"#);
    assert_eq!(project.kiln(&["run"]).status.code(), Some(4));
    let shown = stdout(&project.kiln(&["runs", "show", "1"]));
    assert!(shown.contains("failed (gate)"), "{shown}");
    assert!(
        shown.contains("gate `accuracy >= 0.9` failed (accuracy=0.5)"),
        "{shown}"
    );
    assert!(shown.contains("x.min"), "{shown}");
}

/// `kiln ARGS` whose stdout is a pipe closed before Kiln writes to it.
fn with_stdout_closed(project: &TestProject, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .args(args)
        .current_dir(project.root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_reader_that_closes_stdout_early_ends_kiln_quietly() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: echo x > a.txt, outs: [a.txt]}\n",
    );
    assert_eq!(project.kiln(&["run"]).status.code(), Some(0));
    for args in [&["runs", "show", "1"][..], &["runs"], &["runs", "--json"]] {
        // As `kiln runs show 1 | head -0`.
        let output = with_stdout_closed(&project, args);
        let text = stderr(&output);
        assert!(!text.contains("panicked"), "{args:?}: {text}");
        assert_eq!(output.status.code(), Some(0), "{args:?}: {text}");
    }
}

#[test]
fn a_closed_stdout_keeps_the_exit_code_of_a_failed_run() {
    let project =
        TestProject::new("models:\n  m:\n    stages:\n      a: {cmd: 'exit 3', outs: [a.txt]}\n");
    // As `kiln run --json | true` in CI: the reader is gone, the run's failure is not.
    let output = with_stdout_closed(&project, &["run", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}
