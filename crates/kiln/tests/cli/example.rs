//! The bundled example, for real: scikit-learn in a Kiln-managed virtualenv, ONNX export,
//! data checks and gates.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{copy_tree, kiln_command, outcomes, stderr};
use crate::serve::{free_port, post, spawn_serve, terminate, wait_listening};

#[test]
fn the_iris_example_trains_checks_and_gates() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/iris");
    let dir = tempfile::tempdir().unwrap();
    // What the pipeline writes is left behind, in case the example was run where it lies.
    copy_tree(
        &source,
        dir.path(),
        &[".kiln", "data", "model.onnx", "metrics.json", "__pycache__"],
    );

    let first = kiln_command(dir.path())
        .args(["run", "--junit", "junit.xml"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(
        outcomes(&first),
        ["evaluate: ran", "ingest: ran", "prepare: ran", "train: ran"]
    );
    assert!(dir.path().join("models/iris/model.onnx").is_file());
    let text = stderr(&first);
    assert!(text.contains("accuracy >= 0.9  pass"), "{text}");
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");

    // A param override that ruins the model is caught by the gates, and only train and
    // evaluate run again.
    let worse = kiln_command(dir.path())
        .args(["run", "--set", "train.C=0.0001"])
        .output()
        .unwrap();
    assert_eq!(worse.status.code(), Some(4), "{}", stderr(&worse));
    assert_eq!(
        outcomes(&worse),
        [
            "evaluate: ran",
            "ingest: cached",
            "prepare: cached",
            "train: ran"
        ]
    );

    // `--set` wrote the value into params.yaml, as `dvc exp run --set-param` does: setting it
    // back restores the green model from the cache.
    let again = kiln_command(dir.path())
        .args(["run", "--set", "train.C=1.0"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        outcomes(&again),
        [
            "evaluate: restored",
            "ingest: cached",
            "prepare: cached",
            "train: restored"
        ]
    );

    // The first green run registered version 1 with its lineage, the environment's exact
    // packages included; the failed run registered nothing.
    let shown = kiln_command(dir.path())
        .args(["models", "show", "iris@v1", "--json"])
        .output()
        .unwrap();
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["lineage"]["run_id"], json!(1), "{shown}");
    let packages = shown["lineage"]["environment"].as_array().unwrap();
    assert!(
        packages
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with("scikit_learn=="))),
        "{shown}"
    );
    assert!(
        shown["lineage"]["deps"]
            .as_object()
            .unwrap()
            .contains_key("models/iris/src/train.py"),
        "{shown}"
    );
    // The version carries the ONNX graph's signature, the example it answered and the profile
    // of the training data the example declares.
    let lineage = &shown["lineage"];
    assert_eq!(
        lineage["signature"]["platform"],
        json!("onnxruntime_onnx"),
        "{shown}"
    );
    assert!(
        lineage["signature"]["inputs"][0]["shape"].is_array(),
        "{shown}"
    );
    assert!(lineage["example"].is_object(), "{shown}");
    let profile = &lineage["profile"];
    assert_eq!(
        profile["source"]["path"],
        json!("models/iris/data/processed/train.csv"),
        "{shown}"
    );
    assert_eq!(profile["source"]["declared"], json!(true));
    assert_eq!(profile["rows"], json!(120), "{shown}");
    let columns: Vec<(&str, &str)> = profile["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["dtype"].as_str().unwrap()))
        .collect();
    assert_eq!(columns.last(), Some(&("species", "string")), "{shown}");

    // `kiln serve iris` serves the model of the latest green run, taken from the store: a
    // broken model in the workspace does not matter.
    std::fs::write(dir.path().join("models/iris/model.onnx"), b"garbage").unwrap();
    let port = free_port();
    let mut server = spawn_serve(dir.path(), &["iris", "--port", &port.to_string()]);
    let line = wait_listening(&mut server);
    assert!(line.contains("(models: iris)"), "{line}");
    let columns = json!(["sepal_length", "sepal_width", "petal_length", "petal_width"]);
    let (status, body) = post(
        port,
        "/invocations",
        &json!({"dataframe_split": {"columns": columns, "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}),
    );
    assert_eq!(status, 200, "{body}");
    let labels: Vec<&Value> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["label"])
        .collect();
    assert_eq!(labels, [&json!(0), &json!(2)]);
    let (status, body) = post(
        port,
        "/v2/models/iris/infer",
        &json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], json!("iris"));

    // A new green run is swapped in while serving.
    let newer = kiln_command(dir.path())
        .args(["run", "--set", "train.C=0.5"])
        .output()
        .unwrap();
    assert_eq!(newer.status.code(), Some(0), "{}", stderr(&newer));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata: Value =
            reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/models/iris"))
                .unwrap()
                .json()
                .unwrap();
        if metadata["versions"] == json!(["2"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new run was not swapped in: {metadata}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(terminate(&mut server).success());
}
