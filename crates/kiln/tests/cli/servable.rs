//! Green means servable: after its gates, a run's artifact is loaded by the engine that would
//! serve it and predicts on the example input; a model that cannot fails the run (exit code 5)
//! and is not published for serving.

use serde_json::Value;

use crate::common::{TestProject, kiln_command, stderr, stdout};
use crate::serve::test_python;

/// A project whose artifact is the folder `model`, holding `predict.py` (copied from the
/// project root by its one stage), with two example rows.
fn python_model(predict_py: &str) -> TestProject {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      package: {cmd: 'mkdir -p model && cp predict.py model/', deps: [predict.py], outs: [model]}\n    artifact: model\n    example: example.csv\n",
    );
    project.write("predict.py", predict_py);
    project.write("example.csv", "a,b\n1,2\n3,4\n");
    project
}

fn run(project: &TestProject) -> std::process::Output {
    kiln_command(project.root())
        .env("KILN_PYTHON", test_python())
        .args(["run"])
        .output()
        .unwrap()
}

const SUMS: &str = r#"
SIGNATURE = {
    "inputs": [{"name": "a", "datatype": "FP64", "shape": [-1]},
               {"name": "b", "datatype": "FP64", "shape": [-1]}],
    "outputs": [{"name": "sum", "datatype": "FP64", "shape": [-1]}],
}

def predict(inputs):
    return {"sum": inputs["a"] + inputs["b"]}
"#;

#[test]
fn a_model_that_answers_its_example_goes_green_and_is_published() {
    let project = python_model(SUMS);
    let output = run(&project);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("servable check of `m` passed: loaded and predicted 2 rows of `example.csv`"),
        "{text}"
    );
    assert!(project.path(".kiln/serving/m").exists());
    let shown: Value =
        serde_json::from_str(&stdout(&project.kiln(&["runs", "show", "1", "--json"]))).unwrap();
    assert_eq!(shown["servable"]["passed"], Value::Bool(true), "{shown}");
}

#[test]
fn a_predict_py_that_raises_on_its_example_fails_the_run_with_exit_code_5() {
    let project =
        python_model("def predict(inputs):\n    raise ValueError('the weights file is missing')\n");
    let output = run(&project);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{text}");
    assert!(
        text.contains("error: the artifact of `m` could not be served")
            && text.contains("ValueError: the weights file is missing"),
        "{text}"
    );
    assert!(text.contains("run 1 of `m` failed (unservable)"), "{text}");
    // Nothing is published: `kiln serve m` would still serve the last green run (none here).
    assert!(!project.path(".kiln/serving/m").exists());
    let runs = stdout(&project.kiln(&["runs"]));
    assert!(runs.contains("failed (unservable)"), "{runs}");
}

#[test]
fn a_folder_with_nothing_to_serve_fails_the_run() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      package: {cmd: 'mkdir -p model && echo notes > model/README', outs: [model]}\n    artifact: model\n",
    );
    let output = run(&project);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{text}");
    assert!(
        text.contains("predict.py") && text.contains("MLmodel"),
        "the error names what a served folder holds: {text}"
    );
}

#[test]
fn an_example_that_does_not_fit_the_model_fails_the_run() {
    let project = python_model(SUMS);
    project.write("example.csv", "a,c\n1,2\n");
    let output = run(&project);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{text}");
    assert!(
        text.contains("the example for model `m` does not fit it"),
        "{text}"
    );
}

#[test]
fn a_passed_check_is_remembered_for_the_same_artifact_example_and_environment() {
    let project = python_model(SUMS);
    assert_eq!(run(&project).status.code(), Some(0));
    let again = run(&project);
    let text = stderr(&again);
    assert_eq!(again.status.code(), Some(0), "{text}");
    assert!(
        text.contains("(remembered: same artifact, example and environment)"),
        "{text}"
    );
    // A new example is a new check.
    project.write("example.csv", "a,b\n5,6\n");
    let text = stderr(&run(&project));
    assert!(!text.contains("remembered"), "{text}");
}

#[test]
fn a_model_with_nothing_to_predict_on_is_loaded_and_the_run_warns() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      package: {cmd: 'mkdir -p model && cp predict.py model/', deps: [predict.py], outs: [model]}\n    artifact: model\n",
    );
    project.write("predict.py", "def predict(inputs):\n    return inputs\n");
    let output = run(&project);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("warning: the servable check of `m` only loaded the model")
            && text.contains("declare `example:`"),
        "{text}"
    );
}

#[test]
fn without_example_the_rows_come_from_the_csv_a_stage_writes() {
    let project = TestProject::new(
        "models:\n  m:\n    stages:\n      prepare: {cmd: 'mkdir -p data && printf \"a,b,label\\n1,2,x\\n\" > data/train.csv', outs: [data]}\n      package: {cmd: 'mkdir -p model && cp predict.py model/', deps: [predict.py, data], outs: [model]}\n    artifact: model\n",
    );
    project.write("predict.py", SUMS);
    let output = run(&project);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("loaded and predicted 1 row of `data/train.csv`"),
        "{text}"
    );
}
