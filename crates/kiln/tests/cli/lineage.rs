//! What a registered version carries besides its lineage: the model's signature and the
//! example it answered (from the servable check, also when the check is remembered), and the
//! profile of its training data (`training_data:` in kiln.yaml, else a CSV file of its data);
//! `kiln models show` and `diff` on them, and a bad `training_data`.

use serde_json::{Value, json};

use crate::common::{TestProject, kiln_command, stderr, stdout};
use crate::serve::test_python;

/// A `predict.py` model (with a `SIGNATURE`) packaged from files; `train.csv` is a dep of the
/// package stage, so a change to it makes a new version of the same artifact.
fn project(training_data: Option<&str>) -> TestProject {
    let declared = training_data.map_or(String::new(), |d| format!("    training_data: {d}\n"));
    let project = TestProject::new(&format!(
        "models:\n  m:\n    stages:\n      package: {{cmd: 'mkdir -p model && cp predict.py model/ && echo \"{{\\\"accuracy\\\": 0.9}}\" > metrics.json', deps: [predict.py, train.csv], outs: [model], metrics: [metrics.json]}}\n    artifact: model\n    example: example.csv\n{declared}"
    ));
    project.write(
        "predict.py",
        "SIGNATURE = {\n    \"inputs\": [{\"name\": \"a\", \"datatype\": \"FP64\", \"shape\": [-1]},\n               {\"name\": \"b\", \"datatype\": \"FP64\", \"shape\": [-1]}],\n    \"outputs\": [{\"name\": \"sum\", \"datatype\": \"FP64\", \"shape\": [-1]}],\n}\n\ndef predict(inputs):\n    return {\"sum\": inputs[\"a\"] + inputs[\"b\"]}\n",
    );
    project.write("example.csv", "a,b,label\n1,2,x\n3,4,y\n");
    project.write("train.csv", "a,b,label\n1,2,x\n3,,y\n5,6,x\n");
    project
}

fn run(project: &TestProject) -> std::process::Output {
    kiln_command(project.root())
        .env("KILN_PYTHON", test_python())
        .arg("run")
        .output()
        .unwrap()
}

fn green(project: &TestProject) -> String {
    let output = run(project);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    stderr(&output)
}

fn json_of(project: &TestProject, args: &[&str]) -> Value {
    let output = project.kiln(args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

#[test]
fn a_version_carries_its_signature_example_and_training_data_profile() {
    let project = project(Some("train.csv"));
    green(&project);
    let shown = json_of(&project, &["models", "show", "m@v1", "--json"]);
    let lineage = &shown["lineage"];
    assert_eq!(
        lineage["signature"],
        json!({
            "platform": "kiln_python",
            "inputs": [{"name": "a", "datatype": "FP64", "shape": [-1]},
                       {"name": "b", "datatype": "FP64", "shape": [-1]}],
            "outputs": [{"name": "sum", "datatype": "FP64", "shape": [-1]}],
        })
    );
    // The body the check sent: the example's rows, without the column the model does not take.
    assert_eq!(
        lineage["example"],
        json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}})
    );
    let profile = &lineage["profile"];
    assert_eq!(profile["version"], json!(1));
    assert_eq!(profile["rows"], json!(3));
    assert_eq!(profile["source"]["path"], json!("train.csv"));
    assert_eq!(profile["source"]["declared"], json!(true));
    let b = &profile["columns"][1];
    assert_eq!(
        (&b["name"], &b["dtype"], &b["count"], &b["missing"]),
        (&json!("b"), &json!("float64"), &json!(2), &json!(1))
    );
    assert_eq!(b["stats"]["mean"], json!(4.0));
    assert_eq!(
        profile["columns"][2]["stats"]["top"],
        json!([{"value": "x", "count": 2}, {"value": "y", "count": 1}])
    );

    let text = stdout(&project.kiln(&["models", "show", "m"]));
    for line in [
        "signature (kiln_python):",
        "  input   a     FP64      [?]",
        "  output  sum   FP64      [?]",
        "example: 2 rows (MLflow dataframe_split, ",
        "training data: `train.csv`, 3 rows, 3 columns",
        "  a      int64    count 3, mean 3, std 2, min 1, median 3, max 5",
        "  b      float64  count 2, 1 missing (33.3%), mean 4, std 2.8284, min 2, median 4, max 6",
        "  label  string   count 3, 2 distinct: x 2, y 1",
    ] {
        assert!(text.contains(line), "`{line}` not in:\n{text}");
    }

    // New training data, same artifact: a new version, whose servable check is remembered and
    // still gives the signature and the example.
    project.write("train.csv", "a,b,label\n1,2,x\n3,4,y\n5,6,z\n7,,z\n");
    let log = green(&project);
    assert!(log.contains("remembered"), "{log}");
    let v2 = json_of(&project, &["models", "show", "m@v2", "--json"]);
    assert_eq!(v2["lineage"]["signature"], lineage["signature"]);
    assert_eq!(v2["lineage"]["example"], lineage["example"]);
    assert_eq!(v2["lineage"]["profile"]["rows"], json!(4));

    let diff = json_of(&project, &["models", "diff", "m@v1", "m@v2", "--json"]);
    let profile = &diff["profile"];
    assert_eq!(profile["same_content"], json!(false));
    assert_eq!(profile["rows"], json!([3, 4]));
    let a = &profile["columns"][0];
    assert_eq!(
        (&a["column"], &a["mean"]),
        (&json!("a"), &json!([3.0, 4.0]))
    );
    assert_eq!(a["mean_delta"], json!(1.0));
    let label = &profile["columns"][2];
    assert_eq!(label["distinct"], json!([2, 3]));
    let text = stdout(&project.kiln(&["models", "diff", "m@v1", "m@v2"]));
    for line in [
        "training data: 3 -> 4 rows",
        "  a      missing 0 -> 0 (+0.0 pts), mean 3 -> 4 (+1), std 2 -> 2.582",
        "  b      missing 1 -> 1 (-8.3 pts), mean 4 -> 4 (+0), std 2.8284 -> 2",
        "  label  missing 0 -> 0 (+0.0 pts), distinct 2 -> 3",
    ] {
        assert!(text.contains(line), "`{line}` not in:\n{text}");
    }
    let text = stdout(&project.kiln(&["models", "diff", "m@v2", "m@latest"]));
    assert!(
        text.contains("training data: unchanged (`train.csv`, same content)"),
        "{text}"
    );
}

#[test]
fn without_training_data_the_models_csv_data_is_profiled_and_show_says_so() {
    let project = project(None);
    green(&project);
    let shown = json_of(&project, &["models", "show", "m", "--json"]);
    let source = &shown["lineage"]["profile"]["source"];
    assert_eq!(
        (&source["path"], &source["declared"]),
        (&json!("train.csv"), &json!(false))
    );
    let text = stdout(&project.kiln(&["models", "show", "m"]));
    assert!(
        text.contains(
            "training data: `train.csv` (found among the model's data; declare `training_data:` to choose), 3 rows"
        ),
        "{text}"
    );
}

#[test]
fn a_bad_training_data_path_fails_the_run_before_any_stage() {
    for (declared, message) in [
        (
            "missing.csv",
            "training data `missing.csv` of model `m` does not exist and no stage writes it",
        ),
        (
            "train.parquet",
            "training data `train.parquet` is not a CSV file",
        ),
    ] {
        let project = project(Some(declared));
        project.write("train.parquet", "PAR1");
        let output = run(&project);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let text = stderr(&output);
        assert!(text.contains(message), "{text}");
        assert!(text.contains("kiln.yaml:"), "located: {text}");
        assert!(!project.path("model").exists(), "no stage ran");
    }
}

#[test]
fn training_data_that_does_not_read_as_csv_is_a_warning_and_the_version_has_no_profile() {
    let project = project(Some("train.csv"));
    project.write("train.csv", "a,b\n1,2\n1,2,3\n");
    let log = green(&project);
    assert!(
        log.contains(
            "version registered without a profile of its training data: cannot profile the training data `train.csv` of model `m`: row 3 of "
        ),
        "{log}"
    );
    let shown = json_of(&project, &["models", "show", "m", "--json"]);
    assert_eq!(shown["lineage"]["profile"], Value::Null);
    assert!(shown["lineage"]["signature"].is_object());
    let text = stdout(&project.kiln(&["models", "show", "m"]));
    assert!(text.contains("training data: (no profile"), "{text}");
}
