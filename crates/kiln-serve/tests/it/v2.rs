//! Open Inference Protocol v2: health, metadata, inference (JSON and binary) with reqwest and tritonclient.

use serde_json::{Value, json};

use crate::common::{assert_close, expected, onnx_server, run_python};

fn iris_request(rows: &Value) -> Value {
    let flat: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    json!({"id": "req-1", "inputs": [{"name": "float_input", "shape": [rows.as_array().unwrap().len(), 4], "datatype": "FP32", "data": flat}]})
}

#[test]
fn v2_health_metadata_and_versions() {
    let server = onnx_server();
    assert_eq!(server.get("/v2/health/live").0, 200);
    assert_eq!(server.get("/v2/health/ready").0, 200);
    assert_eq!(server.get("/v2/models/lr/ready").0, 200);
    assert_eq!(server.get("/v2/models/lr/versions/1/ready").0, 200);
    assert_eq!(server.get("/v2/models/lr/versions/7/ready").0, 404);
    let (status, body) = server.get("/v2/models/lr");
    assert_eq!(status, 200);
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "float_input", "datatype": "FP32", "shape": [-1, 4]})
    );
    assert_eq!(meta["parameters"]["class_labels"], json!([0, 1, 2]));
    let (status, body) = server.get("/v2/models/nope");
    assert_eq!(status, 404);
    assert!(body.contains("model_not_found"), "{body}");
}

#[test]
fn v2_infer_matches_scikit_learn() {
    let server = onnx_server();
    let expected = expected();
    let sample = &expected["iris_sample"];
    for model in ["lr", "lrn"] {
        let (status, body) =
            server.post_json(&format!("/v2/models/{model}/infer"), &iris_request(sample));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], "req-1");
        assert_eq!(body["model_name"], model);
        assert_eq!(
            body["outputs"][0]["data"], expected["iris_lr_labels"],
            "{body}"
        );
        assert_eq!(body["outputs"][1]["shape"], json!([3, 3]));
        let want: Vec<Value> = expected["iris_lr_proba"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .collect();
        assert_close(&body["outputs"][1]["data"], &Value::Array(want), 1e-4);
    }
    let (status, body) = server.post_json("/v2/models/rf/versions/1/infer", &iris_request(sample));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], expected["iris_rf_labels"]);
    // Regressor, and asking for one output only.
    let rows = expected["diabetes_sample"].as_array().unwrap();
    let flat: Vec<Value> = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    let request = json!({"inputs": [{"name": "float_input", "shape": [3, 10], "datatype": "FP32", "data": flat}], "outputs": [{"name": "variable"}]});
    let (status, body) = server.post_json("/v2/models/reg/infer", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_close(&body["outputs"][0]["data"], &expected["diabetes_rf"], 1e-4);
}

#[test]
fn tritonclient_http_against_v2_endpoints() {
    let server = onnx_server();
    let script = format!(
        r#"
import json, sys
import numpy as np
import tritonclient.http as httpclient

expected = json.load(open(sys.argv[1]))
client = httpclient.InferenceServerClient(url="{addr}")
assert client.is_server_live()
assert client.is_server_ready()
assert client.is_model_ready("lrn")
meta = client.get_model_metadata("lrn")
assert meta["inputs"][0]["name"] == "float_input", meta
x = np.array(expected["iris_sample"], dtype=np.float32)
for binary in (False, True):
    inp = httpclient.InferInput("float_input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput("label", binary_data=binary),
            httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer("lrn", [inp], outputs=outs)
    assert result.as_numpy("label").tolist() == expected["iris_lr_labels"], result.as_numpy("label")
    assert np.allclose(result.as_numpy("probabilities"), expected["iris_lr_proba"], atol=1e-4)
    result = client.infer("rf", [inp], model_version="1")
    assert result.as_numpy("output_label").tolist() == expected["iris_rf_labels"]
# A bad request is reported as an error, not a crash.
bad = httpclient.InferInput("float_input", [1, 3], "FP32")
bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32), binary_data=False)
try:
    client.infer("lrn", [bad])
    raise SystemExit("expected an error")
except httpclient.InferenceServerException as e:
    assert "expected shape [-1, 4]" in str(e), str(e)
print("ok")
"#,
        addr = server.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("triton_client.py");
    std::fs::write(&path, script).unwrap();
    let out = run_python(&[
        path.as_os_str(),
        crate::common::fixtures().join("expected.json").as_os_str(),
    ]);
    assert!(out.contains("ok"), "{out}");
}
