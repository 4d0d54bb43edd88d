//! Python models that take tables: an MLflow model folder saved by the real `mlflow` package, and
//! `predict.py` models declaring `INPUT = "dataframe"` or `INPUT = "records"`, over `/invocations` and v2
//! (tritonclient).

use serde_json::{Value, json};

use crate::common::{TestServer, assert_close, config, run_python, table_fixtures};

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(table_fixtures().join("expected.json")).unwrap())
        .unwrap()
}

/// Runs tritonclient against `model`, sending one FP64 input per column (`[N, 1]`, as the pandas codec
/// of v2 clients does), and prints the named output as JSON.
fn triton_infer(server: &TestServer, model: &str, output: &str) -> Value {
    let script = format!(
        r#"
import json, sys
import numpy as np
import tritonclient.http as httpclient

expected = json.load(open(sys.argv[1]))
client = httpclient.InferenceServerClient(url="{addr}")
assert client.is_model_ready("{model}")
rows = np.array(expected["rows"], dtype=np.float64)
inputs = []
for j, name in enumerate(expected["columns"]):
    column = httpclient.InferInput(name, [len(rows), 1], "FP64")
    column.set_data_from_numpy(rows[:, j:j + 1].copy(), binary_data=True)
    inputs.append(column)
result = client.infer("{model}", inputs)
print(json.dumps(result.as_numpy("{output}").reshape(-1).tolist()))
"#,
        addr = server.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("triton_client.py");
    std::fs::write(&path, script).unwrap();
    let out = run_python(&[
        path.as_os_str(),
        table_fixtures().join("expected.json").as_os_str(),
    ]);
    serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("tritonclient printed {out}"))
}

#[test]
fn mlflow_saved_sklearn_model_serves_over_v2_and_invocations() {
    let server = TestServer::start(config(&[("iris", table_fixtures().join("mlflow_lr"))]));
    let expected = expected();
    let body =
        json!({"dataframe_split": {"columns": expected["columns"], "data": expected["rows"]}});
    let (status, answer) = server.post_json("/invocations", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"], expected["labels"], "{answer}");

    // The signature comes from the MLmodel file: columns and types are checked as for any model.
    let (status, meta) = server.get("/v2/models/iris");
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["platform"], "mlflow_pyfunc", "{meta}");
    let names: Vec<&str> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    );
    let (status, answer) = server.post_json(
        "/invocations",
        &json!({"dataframe_split": {"columns": ["sepal_length"], "data": [[1.0]]}}),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "missing_input", "{answer}");
    let (status, answer) = server.post_json(
        "/invocations",
        &json!({"dataframe_records": [{"sepal_length": "long", "sepal_width": 1, "petal_length": 1, "petal_width": 1}]}),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "invalid_datatype", "{answer}");

    assert_eq!(
        triton_infer(&server, "iris", "predictions"),
        expected["labels"]
    );
}

#[test]
fn predict_py_taking_a_dataframe_serves_over_v2_and_invocations() {
    let server = TestServer::start(config(&[("frame", table_fixtures().join("py_dataframe"))]));
    let expected = expected();
    let body =
        json!({"dataframe_split": {"columns": expected["columns"], "data": expected["rows"]}});
    let (status, answer) = server.post_json("/invocations", &body);
    assert_eq!(status, 200, "{answer}");
    // A returned DataFrame becomes one output per column: a record per row over MLflow.
    let predictions = answer["predictions"].as_array().unwrap();
    let labels: Vec<Value> = predictions.iter().map(|p| p["label"].clone()).collect();
    assert_eq!(Value::Array(labels), expected["labels"], "{answer}");
    let confidence: Vec<Value> = predictions
        .iter()
        .map(|p| p["confidence"].clone())
        .collect();
    assert_close(&Value::Array(confidence), &expected["confidence"], 1e-9);

    assert_eq!(triton_infer(&server, "frame", "label"), expected["labels"]);
    assert_close(
        &triton_infer(&server, "frame", "confidence"),
        &expected["confidence"],
        1e-9,
    );
}

#[test]
fn predict_py_taking_records_gets_the_feature_names() {
    let server = TestServer::start(config(&[("rec", table_fixtures().join("py_records"))]));
    let (status, answer) = server.post_json(
        "/invocations",
        &json!({"dataframe_split": {"columns": ["b", "a"], "data": [[1, 2], [3, 4]]}}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"], json!([12.0, 34.0]), "{answer}");
    let (status, answer) = server.post_json(
        "/v2/models/rec/infer",
        &json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [5, 6]}]}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["name"], "total", "{answer}");
    assert_eq!(answer["outputs"][0]["data"], json!([65.0]), "{answer}");
}

#[test]
fn an_unknown_input_kind_is_a_load_error_naming_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("predict.py"),
        "INPUT = \"frame\"\n\ndef predict(inputs):\n    return inputs\n",
    )
    .unwrap();
    let error = match TestServer::try_start(config(&[("odd", dir.path().to_path_buf())])) {
        Ok(_) => panic!("an unknown INPUT must stop the model from loading"),
        Err(e) => kiln_serve::error_chain(&e),
    };
    assert!(
        error.contains("'frame'") && error.contains("'dataframe'") && error.contains("'records'"),
        "{error}"
    );
}
