//! `kiln check`: every mistake is reported with file:line:column, the text underlined, a hint.

use crate::common::{TestProject, stderr};

/// Runs `kiln check` and returns its stderr, asserting exit code 2.
fn check_fails(project: &TestProject) -> String {
    let output = project.kiln(&["check"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "stderr:\n{}",
        stderr(&output)
    );
    stderr(&output)
}

#[test]
fn a_valid_project_passes() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: echo a > a.txt, outs: [a.txt]}\n",
    );
    let output = project.kiln(&["check"]);
    assert_eq!(output.status.code(), Some(0));
    insta::assert_snapshot!(stderr(&output), @"`kiln.yaml` is valid: 1 model, 1 stage");
}

#[test]
fn unknown_key_with_suggestion() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a:\n        cmd: echo\n        depz: [x]\n",
    );
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn wrong_type() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a:\n        cmd: echo\n        deps: {a: b}\n",
    );
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn dep_that_nobody_produces() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      train:\n        cmd: python train.py\n        deps: [train.py, data/processed]\n",
    );
    project.write("train.py", "");
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn cycle() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: cp b.txt a.txt, deps: [b.txt], outs: [a.txt]}\n      b: {cmd: cp a.txt b.txt, deps: [a.txt], outs: [b.txt]}\n",
    );
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn two_stages_write_one_out() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: mkdir -p data, outs: [data]}\n      b: {cmd: echo > data/x.csv, outs: [data/x.csv]}\n",
    );
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn gate_with_unknown_metric() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      eval: {cmd: echo, metrics: [metrics.json]}\n    gates: [\"accuracy >= 0.9\", \"recall > 0.5\"]\n",
    );
    project.write("metrics.json", r#"{"accuracy": 0.95, "f1": 0.9}"#);
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn bad_gate_expression() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      eval: {cmd: echo, metrics: [metrics.json]}\n    gates:\n      - \"accuracy = 0.9\"\n      - accuracy >= \n",
    );
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn yaml_syntax_error() {
    let project = TestProject::new("models:\n  m:\n    stages:\n      a: {cmd: echo\n");
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn duplicate_key() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: echo}\n      a: {cmd: echo}\n",
    );
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn unknown_param() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      train: {cmd: echo, params: [train.lr, prepare]}\n",
    );
    project.write("params.yaml", "train:\n  C: 1\n");
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn path_outside_the_project_and_missing_files() {
    let project = TestProject::new(
        "models:\n  m:\n    dir: models/m\n    python: {requirements: requirements.txt}\n    stages:\n      a: {cmd: echo, deps: [../../../etc/passwd]}\n",
    );
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn no_project_file() {
    let project = TestProject::empty();
    let output = project.kiln(&["check"]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.starts_with("error: no `kiln.yaml` (or `dvc.yaml`) in"),
        "{text}"
    );
    assert!(text.contains("hint: run `kiln init`"), "{text}");
}

#[test]
fn outs_that_would_delete_the_project_are_refused() {
    let project = TestProject::new(
        "models:\n  m:\n    dir: models/m\n    stages:\n      a: {cmd: echo hi > x, outs: [.]}\n      b: {cmd: echo, outs: [../../.kiln/x]}\n      c: {cmd: echo, outs: [../../kiln.yaml]}\n",
    );
    std::fs::create_dir_all(project.path("models/m")).unwrap();
    insta::assert_snapshot!(check_fails(&project));
    let run = project.kiln(&["run"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(project.path("kiln.yaml").exists());
}

#[test]
fn a_bad_gate_in_a_block_scalar_is_underlined_whole() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      eval: {cmd: echo, metrics: [metrics.json]}\n    gates:\n      - >- # précis\n        accuracy= 0.9\n",
    );
    let text = check_fails(&project);
    assert!(
        text.contains("invalid gate `accuracy= 0.9`: unexpected character `=`"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn anchors_aliases_and_merge_keys_are_accepted() {
    // Top-level `x-` keys are where shared blocks live; Kiln ignores them.
    let project = TestProject::new(
        "x-stage: &stage\n  cmd: echo hi > out.txt\n  outs: [out.txt]\nmodels:\n  m:\n    stages:\n      a:\n        <<: *stage\n      b:\n        <<: *stage\n        cmd: cat out.txt > b.txt\n        deps: [out.txt]\n        outs: [b.txt]\n",
    );
    let output = project.kiln(&["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    insta::assert_snapshot!(stderr(&output), @"`kiln.yaml` is valid: 1 model, 2 stages");
    let run = project.kiln(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_eq!(project.read("b.txt"), "hi\n");

    // A mistake inside a merged block is reported where the block is written.
    let project = TestProject::new(
        "x-stage: &stage\n  cmd: echo\n  depz: [x]\nmodels:\n  m:\n    stages:\n      a:\n        <<: *stage\n",
    );
    insta::assert_snapshot!("a_mistake_in_a_merged_block", check_fails(&project));
}

#[test]
fn an_alias_bomb_is_refused() {
    let mut text = String::from(
        "models:\n  m:\n    stages:\n      a:\n        cmd: echo\n        deps: &a0 [x, x, x, x, x, x, x, x, x]\n",
    );
    for level in 1..10 {
        let items = vec![format!("*a{}", level - 1); 9].join(", ");
        text.push_str(&format!("        outs{level}: &a{level} [{items}]\n"));
    }
    let project = TestProject::new(&text);
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn a_malformed_params_file_is_located() {
    let project = TestProject::new(
        "models:\n  m:\n    dir: models/m\n    stages:\n      train: {cmd: echo, params: [train]}\n",
    );
    project.write("models/m/params.yaml", "train:\n  C: 1\n  solver: [lbfgs\n");
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn a_tab_used_as_indentation_is_reported_on_its_line() {
    let project =
        TestProject::new("models:\n  m:\n    stages:\n      a:\n        cmd: echo\n\tdeps: [x]\n");
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn a_file_that_is_not_utf8_is_named_with_its_line() {
    let project = TestProject::new("");
    std::fs::write(
        project.path("kiln.yaml"),
        b"models:\n  m:\n    stages:\n      a: {cmd: echo caf\xe9}\n",
    )
    .unwrap();
    insta::assert_snapshot!(check_fails(&project));
    let project = TestProject::new("models:\n  m:\n    stages:\n      a: {cmd: echo}\n");
    std::fs::write(project.path("params.yaml"), b"train:\n  name: \xff\n").unwrap();
    insta::assert_snapshot!("a_params_file_that_is_not_utf8", check_fails(&project));
}

#[test]
fn an_example_that_is_missing_or_not_csv_or_json() {
    let project = TestProject::new(
        "models:\n  m:\n    dir: models/m\n    stages:\n      a: {cmd: echo, outs: [data]}\n    example: examples/rows.csv\n  n:\n    stages:\n      b: {cmd: echo}\n    example: rows.txt\n",
    );
    std::fs::create_dir_all(project.path("models/m")).unwrap();
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn training_data_that_is_missing_or_not_csv() {
    let project = TestProject::new(
        "models:\n  m:\n    dir: models/m\n    stages:\n      a: {cmd: echo, outs: [data]}\n    training_data: raw/train.csv\n  n:\n    stages:\n      b: {cmd: echo}\n    training_data: train.parquet\n",
    );
    std::fs::create_dir_all(project.path("models/m")).unwrap();
    insta::assert_snapshot!(check_fails(&project));
}

#[test]
fn deploy_mistakes_are_located() {
    let project = TestProject::new(
        "models:\n  a:\n    stages:\n      t: {cmd: echo, outs: [a.onnx]}\n    artifact: a.onnx\n    deploy:\n      staging: {approve: auto, port: 8100}\n      v2: {auto: true}\n      production: {approve: manual, port: 8100}\n  b:\n    stages:\n      t: {cmd: echo}\n    deploy:\n      staging: {}\n",
    );
    insta::assert_snapshot!(check_fails(&project));
}
