//! `kiln_serve::probe`: load a model as `kiln serve` would, predict on an example, stop; the model's own
//! error comes back when it fails.

use serde_json::json;

use crate::common::{config, fixtures, table_fixtures};

const COLUMNS: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

#[test]
fn probe_a_good_onnx_model_with_and_without_an_example() {
    let cfg = config(&[("lr", fixtures().join("iris_lr.onnx"))]);
    let mut columns = COLUMNS.to_vec();
    columns.push("species");
    // Taken from training data: the label column is dropped first.
    let example = json!({"dataframe_split": {"columns": columns, "data": [[5.1, 3.5, 1.4, 0.2, 0], [7.7, 3.0, 6.1, 2.3, 2]]}});
    let probe = kiln_serve::probe(cfg.clone(), "lr", Some(&example)).unwrap();
    assert_eq!(probe.rows, 2);
    let response = probe.response.unwrap();
    assert_eq!(response["predictions"][0]["output_label"], 0, "{response}");
    assert_eq!(response["predictions"][1]["output_label"], 2, "{response}");
    // What the probe learnt: the signature from the ONNX graph, and the body it sent.
    let signature = &probe.signature;
    assert_eq!(signature["platform"], "onnxruntime_onnx", "{signature}");
    assert_eq!(signature["inputs"][0]["datatype"], "FP32", "{signature}");
    assert_eq!(
        signature["inputs"][0]["shape"],
        json!([-1, 4]),
        "{signature}"
    );
    assert!(
        signature["outputs"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["name"] == "output_label")),
        "{signature}"
    );
    assert_eq!(
        probe.example,
        Some(
            json!({"dataframe_split": {"columns": COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]]}})
        )
    );
    let probe = kiln_serve::probe(cfg, "lr", None).unwrap();
    assert_eq!(probe.rows, 1, "a row is generated from the signature");
    assert!(probe.response.is_some());
    let example = probe.example.unwrap();
    assert_eq!(example["inputs"][0]["shape"], json!([1, 4]), "{example}");
    assert_eq!(
        example["inputs"][0]["data"],
        json!([0.0, 0.0, 0.0, 0.0]),
        "{example}"
    );
}

#[test]
fn probe_a_good_predict_py_and_an_mlflow_model() {
    let cfg = config(&[("py", fixtures().join("py_model"))]);
    let example =
        json!({"dataframe_split": {"columns": ["a", "target", "b"], "data": [[1, 9, 2]]}});
    let probe = kiln_serve::probe(cfg, "py", Some(&example)).unwrap();
    assert_eq!(probe.rows, 1);
    assert_eq!(probe.response.unwrap()["predictions"], json!([3.5]));

    let cfg = config(&[("iris", table_fixtures().join("mlflow_lr"))]);
    let example = json!({"dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2, "target": 0}]});
    let probe = kiln_serve::probe(cfg, "iris", Some(&example)).unwrap();
    assert_eq!(
        probe.signature["platform"], "mlflow_pyfunc",
        "{}",
        probe.signature
    );
    assert_eq!(probe.response.unwrap()["predictions"], json!([0]));
}

#[test]
fn probe_reports_the_models_own_error() {
    let cfg = config(&[("py", fixtures().join("py_model"))]);
    let example = json!({"dataframe_split": {"columns": ["a", "b"], "data": [[13, 1]]}});
    let error = kiln_serve::probe(cfg.clone(), "py", Some(&example)).unwrap_err();
    assert!(
        matches!(error, kiln_serve::Error::ModelFailed { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("ValueError: unlucky input"),
        "{error}"
    );
    let traceback = error.traceback().expect("a traceback for the CLI");
    assert!(
        traceback.contains("Traceback") && traceback.contains("predict.py"),
        "{traceback}"
    );
    // An example that does not fit the signature is its own error.
    let example = json!({"dataframe_split": {"columns": ["a"], "data": [[1]]}});
    let error = kiln_serve::probe(cfg, "py", Some(&example)).unwrap_err();
    assert!(
        matches!(error, kiln_serve::Error::BadExample { .. }) && error.to_string().contains("`b`"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("predict.py"),
        "raise RuntimeError('no weights found')\n",
    )
    .unwrap();
    let error =
        kiln_serve::probe(config(&[("bad", dir.path().to_path_buf())]), "bad", None).unwrap_err();
    assert!(
        error.to_string().contains("RuntimeError: no weights found"),
        "{error}"
    );
    assert!(error.traceback().is_some_and(|t| t.contains("Traceback")));
}

#[test]
fn probe_an_empty_folder_names_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let error = kiln_serve::probe(
        config(&[("empty", dir.path().to_path_buf())]),
        "empty",
        None,
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("`predict.py`")
            && message.contains("`model.onnx`")
            && message.contains("`MLmodel`"),
        "{message}"
    );
    assert!(error.hint().is_some());
}

#[test]
fn probe_a_pickle_says_it_is_not_onnx_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = dir.path().join("model.pkl");
    std::fs::write(&pickle, b"\x80\x04not onnx").unwrap();
    let error = kiln_serve::probe(config(&[("m", pickle)]), "m", None).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("model.pkl` is not an ONNX model"),
        "{error}"
    );
    assert!(error.hint().unwrap().contains("predict.py"));
}
