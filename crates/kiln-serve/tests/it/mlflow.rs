//! MLflow scoring protocol: the four JSON input formats, `/ping`, `/health`, `/version`.

use serde_json::{Value, json};

use crate::common::{assert_close, expected, onnx_server};

const COLUMNS: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

#[test]
fn mlflow_four_input_formats_agree_with_scikit_learn() {
    let server = onnx_server();
    let expected = expected();
    let sample = expected["iris_sample"].clone();
    let rows = sample.as_array().unwrap();
    let records: Vec<Value> = rows
        .iter()
        .map(|r| {
            Value::Object(
                COLUMNS
                    .iter()
                    .zip(r.as_array().unwrap())
                    .map(|(c, v)| (c.to_string(), v.clone()))
                    .collect(),
            )
        })
        .collect();
    // Columns in a different order than the model's: they are matched by name.
    let mut reversed_columns = COLUMNS.to_vec();
    reversed_columns.reverse();
    let reversed_rows: Vec<Value> = rows
        .iter()
        .map(|r| Value::Array(r.as_array().unwrap().iter().rev().cloned().collect()))
        .collect();
    let bodies = [
        json!({"dataframe_split": {"columns": COLUMNS, "data": sample}}),
        json!({"dataframe_split": {"columns": reversed_columns, "data": reversed_rows}}),
        json!({"dataframe_records": records}),
        json!({"instances": sample}),
        json!({"instances": records}),
        json!({"inputs": sample}),
        json!({"inputs": {"float_input": sample}}),
    ];
    for body in &bodies {
        let (status, answer) = server.post_json("/models/lr/invocations", body);
        assert_eq!(status, 200, "{body} -> {answer}");
        let predictions = answer["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 3);
        let labels: Vec<Value> = predictions
            .iter()
            .map(|p| p["output_label"].clone())
            .collect();
        assert_eq!(Value::Array(labels), expected["iris_lr_labels"], "{body}");
        // ZipMap probabilities come back as {class: probability}.
        let probabilities = &predictions[0]["output_probability"];
        assert!(probabilities.is_object(), "{answer}");
        let p0: Vec<Value> = ["0", "1", "2"]
            .iter()
            .map(|k| probabilities[k].clone())
            .collect();
        assert_close(&Value::Array(p0), &expected["iris_lr_proba"][0], 1e-4);
    }
    // Without ZipMap, probabilities are a list per row.
    let (status, answer) = server.post_json("/models/lrn/invocations", &bodies[0]);
    assert_eq!(status, 200, "{answer}");
    assert_close(
        &answer["predictions"][1]["probabilities"],
        &expected["iris_lr_proba"][1],
        1e-4,
    );
    // A regressor gives one number per row.
    let (status, answer) = server.post_json(
        "/models/reg/invocations",
        &json!({"inputs": expected["diabetes_sample"]}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer["predictions"], &expected["diabetes_rf"], 1e-4);
}

#[test]
fn mlflow_single_model_invocations_ping_health_version() {
    let f = crate::common::fixtures();
    let server =
        crate::common::TestServer::start(crate::common::config(&[("rf", f.join("iris_rf.onnx"))]));
    let (status, answer) = server.post_json(
        "/invocations",
        &json!({"dataframe_split": {"columns": COLUMNS, "data": expected()["iris_sample"]}}),
    );
    assert_eq!(status, 200, "{answer}");
    let labels: Vec<Value> = answer["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["output_label"].clone())
        .collect();
    assert_eq!(Value::Array(labels), expected()["iris_rf_labels"]);
    assert_eq!(server.get("/ping").0, 200);
    assert_eq!(server.get("/health").0, 200);
    let (status, version) = server.get("/version");
    assert_eq!(status, 200);
    assert!(!version.is_empty());
}

#[test]
fn mlflow_takes_csv_as_pandas_writes_it_and_refuses_bad_csv() {
    let server = onnx_server();
    let expected = expected();
    let sample = expected["iris_sample"].to_string();
    // The body a client makes with `DataFrame.to_csv(index=False)`, columns in another order.
    let csv = crate::common::run_python(&[
        "-c".as_ref(),
        "import json, sys, pandas as pd\n\
         frame = pd.DataFrame(json.loads(sys.argv[1]), columns=sys.argv[2].split(','))\n\
         sys.stdout.write(frame[list(reversed(frame.columns))].to_csv(index=False))"
            .as_ref(),
        sample.as_ref(),
        COLUMNS.join(",").as_ref(),
    ]);
    let (status, answer) = server.post_raw(
        "/models/lr/invocations",
        Some("text/csv; charset=utf-8"),
        csv.clone().into_bytes(),
    );
    assert_eq!(status, 200, "{csv} -> {answer}");
    let labels: Vec<Value> = answer["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["output_label"].clone())
        .collect();
    assert_eq!(Value::Array(labels), expected["iris_lr_labels"]);

    let refused = [
        (
            "a,b,c,d\n1,2,3,4\n1,2,3\n".as_bytes().to_vec(),
            400,
            "`csv` row 1 has 3 values, row 0 has 4",
        ),
        (
            b"sepal_length,sepal_width,petal_length,petal_width\n1,2,\xff,4\n".to_vec(),
            400,
            "the request body is not valid CSV",
        ),
        (
            "sepal_length,sepal_width,petal_length,petal_width\n"
                .as_bytes()
                .to_vec(),
            400,
            "`csv` has no rows",
        ),
    ];
    for (body, code, message) in refused {
        let (status, answer) = server.post_raw("/models/lr/invocations", Some("text/csv"), body);
        assert_eq!(status, code, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{answer}"
        );
    }
    let (status, answer) = server.post_raw(
        "/models/lr/invocations",
        Some("text/plain"),
        csv.into_bytes(),
    );
    assert_eq!(status, 415, "{answer}");
    assert_eq!(
        answer["error"],
        "expected `Content-Type: application/json` or `text/csv`, got `text/plain`"
    );
}
