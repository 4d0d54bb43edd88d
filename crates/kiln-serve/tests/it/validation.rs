//! Bad requests: each gets a 4xx in the one error shape, naming the field and what was expected, and the
//! server keeps serving.

use serde_json::{Value, json};

use crate::common::{TestServer, config, fixtures};

const COLUMNS: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, mentions: &[&str]) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"));
    for needle in mentions {
        assert!(
            message.contains(needle),
            "`{message}` does not mention `{needle}`"
        );
    }
}

fn v2_body(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "float_input", "shape": shape, "datatype": datatype, "data": data}]})
}

#[test]
fn bad_inputs_get_precise_4xx_errors() {
    let f = fixtures();
    let mut cfg = config(&[
        ("lr", f.join("iris_lr.onnx")),
        ("rf", f.join("iris_rf.onnx")),
    ]);
    cfg.max_body_bytes = 4096;
    let server = TestServer::start(cfg);
    let infer = "/v2/models/lr/infer";
    let invocations = "/models/lr/invocations";

    // Wrong shape.
    let (s, b) = server.post_json(infer, &v2_body(json!([1, 3]), "FP32", json!([1, 2, 3])));
    assert_error(
        s,
        &b,
        400,
        "invalid_shape",
        &["float_input", "[-1, 4]", "[1, 3]"],
    );
    assert_eq!(b["field"], "inputs.float_input");
    let (s, b) = server.post_json(infer, &v2_body(json!([1, 4]), "FP32", json!([1, 2, 3])));
    assert_error(s, &b, 400, "invalid_shape", &["needs 4 values", "has 3"]);
    let (s, b) = server.post_json(
        infer,
        &v2_body(json!([2, 4]), "FP32", json!([[1, 2, 3, 4], [1, 2]])),
    );
    assert_error(s, &b, 400, "invalid_shape", &["ragged"]);
    let (s, b) = server.post_json(
        infer,
        &v2_body(
            json!([0, 4_294_967_296u64, 4_294_967_296u64]),
            "FP32",
            json!([]),
        ),
    );
    assert_error(s, &b, 400, "invalid_shape", &["too large"]);
    // Wrong type.
    let (s, b) = server.post_json(infer, &v2_body(json!([1, 4]), "FP64", json!([1, 2, 3, 4])));
    assert_error(
        s,
        &b,
        400,
        "invalid_datatype",
        &["expected datatype FP32", "got FP64"],
    );
    let (s, b) = server.post_json(
        infer,
        &v2_body(json!([1, 4]), "FP32", json!([1, "two", 3, 4])),
    );
    assert_error(
        s,
        &b,
        400,
        "invalid_datatype",
        &["element 1", "expected a number", "\"two\""],
    );
    let (s, b) = server.post_json(infer, &v2_body(json!([1, 4]), "FP99", json!([1, 2, 3, 4])));
    assert_error(s, &b, 400, "invalid_datatype", &["FP99"]);
    // Missing and extra inputs / columns.
    let (s, b) = server.post_json(
        infer,
        &json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
    );
    assert_error(s, &b, 400, "unexpected_input", &["`x`", "`float_input`"]);
    let (s, b) = server.post_json(infer, &json!({"inputs": []}));
    assert_error(
        s,
        &b,
        400,
        "missing_input",
        &["float_input", "FP32 [-1, 4]"],
    );
    let (s, b) = server.post_json(
        invocations,
        &json!({"dataframe_split": {"columns": &COLUMNS[..3], "data": [[1, 2, 3]]}}),
    );
    assert_error(
        s,
        &b,
        400,
        "missing_input",
        &["missing column `petal_width`"],
    );
    assert_eq!(b["field"], "dataframe_split.data.petal_width");
    let mut extra = COLUMNS.to_vec();
    extra.push("colour");
    let (s, b) = server.post_json(
        invocations,
        &json!({"dataframe_split": {"columns": extra, "data": [[1, 2, 3, 4, 5]]}}),
    );
    assert_error(
        s,
        &b,
        400,
        "unexpected_input",
        &["unexpected column `colour`"],
    );
    let (s, b) = server.post_json(invocations, &json!({"dataframe_records": [{"sepal_length": 1, "sepal_width": 2, "petal_length": 3, "petal_width": 4}, {"sepal_length": 1}]}));
    assert_error(s, &b, 400, "missing_input", &["record 1", "sepal_width"]);
    let (s, b) = server.post_json(
        invocations,
        &json!({"dataframe_split": {"columns": COLUMNS, "data": [[1, 2, "x", 4]]}}),
    );
    assert_error(
        s,
        &b,
        400,
        "invalid_datatype",
        &["row 0", "`petal_length`", "expected a number"],
    );
    let (s, b) = server.post_json(invocations, &json!({"instances": [[1, 2, 3]]}));
    assert_error(s, &b, 400, "invalid_shape", &["[-1, 4]"]);
    let (s, b) = server.post_json(invocations, &json!({"columns": COLUMNS}));
    assert_error(
        s,
        &b,
        400,
        "invalid_request",
        &["dataframe_split", "`columns`"],
    );
    let (s, b) = server.post_json(
        invocations,
        &json!({"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}),
    );
    assert_error(s, &b, 400, "invalid_request", &["exactly one"]);
    // NaN where not allowed.
    let (s, b) = server.post_json(
        infer,
        &v2_body(json!([1, 4]), "FP32", json!([1, null, 3, 4])),
    );
    assert_error(s, &b, 400, "nan_not_allowed", &["element 1", "NaN"]);
    let (s, b) = server.post_json(
        invocations,
        &json!({"dataframe_split": {"columns": COLUMNS, "data": [[1, 2, 3, "NaN"]]}}),
    );
    assert_error(s, &b, 400, "nan_not_allowed", &["`petal_width`"]);
    // Unknown output.
    let mut request = v2_body(json!([1, 4]), "FP32", json!([1, 2, 3, 4]));
    request["outputs"] = json!([{"name": "colour"}]);
    let (s, b) = server.post_json(infer, &request);
    assert_error(
        s,
        &b,
        400,
        "unknown_output",
        &["`colour`", "`output_label`"],
    );
    // Body over the size limit.
    let big = json!({"inputs": vec![[1.0, 2.0, 3.0, 4.0]; 500]});
    let (s, b) = server.post_json(invocations, &big);
    assert_error(s, &b, 413, "payload_too_large", &["4096 bytes"]);
    // The same without a `Content-Length` (one chunk): the limit holds while the body is read. A raw
    // socket, as the server answers before it has read the whole body.
    {
        use std::io::{Read, Write};
        let body = serde_json::to_vec(&big).unwrap();
        let mut socket = std::net::TcpStream::connect(server.addr).unwrap();
        write!(
            socket,
            "POST {invocations} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
            body.len()
        )
        .unwrap();
        socket.write_all(&body).unwrap();
        socket.write_all(b"\r\n0\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("\"code\":\"payload_too_large\""),
            "{answer}"
        );
    }
    // Bad JSON.
    let (s, b) = server.post_raw(
        invocations,
        Some("application/json"),
        b"{\"inputs\": [[1, 2, 3, 4]".to_vec(),
    );
    assert_error(s, &b, 400, "bad_json", &["not valid JSON", "line 1"]);
    let (s, b) = server.post_raw(
        infer,
        Some("application/json"),
        b"{\"inputs\": [NaN]}".to_vec(),
    );
    assert_error(s, &b, 400, "bad_json", &["not valid JSON"]);
    // Unsupported media types.
    let (s, b) = server.post_raw(invocations, Some("text/plain"), b"1,2,3,4\n".to_vec());
    assert_error(
        s,
        &b,
        415,
        "unsupported_media_type",
        &["application/json", "text/csv", "`text/plain`"],
    );
    let (s, b) = server.post_raw(infer, Some("text/csv"), b"1,2,3,4\n".to_vec());
    assert_error(s, &b, 415, "unsupported_media_type", &["application/json"]);
    let (s, b) = server.post_raw(invocations, None, b"{}".to_vec());
    assert_error(s, &b, 415, "unsupported_media_type", &["no `Content-Type`"]);
    // Unknown models and versions.
    let (s, b) = server.post_json(
        "/v2/models/nope/infer",
        &v2_body(json!([1, 4]), "FP32", json!([1, 2, 3, 4])),
    );
    assert_error(s, &b, 404, "model_not_found", &["`nope`", "`lr`"]);
    let (s, b) = server.post_json(
        "/v2/models/lr/versions/9/infer",
        &v2_body(json!([1, 4]), "FP32", json!([1, 2, 3, 4])),
    );
    assert_error(s, &b, 404, "model_version_not_found", &["`9`"]);
    let (s, b) = server.post_json("/invocations", &json!({"inputs": [[1, 2, 3, 4]]}));
    assert_error(s, &b, 400, "invalid_request", &["several models"]);

    // Garbage never gets a 5xx, and the server still answers correctly afterwards.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..300 {
        let len = (i * 7) % 200;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b"{}[]\":,0123456789.eE-+ntrufalsNaInputsdata"[(seed % 42) as usize]
            })
            .collect();
        for path in [infer, invocations] {
            let response = crate::common::client()
                .post(server.url(path))
                .header("content-type", "application/json")
                .body(bytes.clone())
                .send()
                .unwrap();
            assert!(
                response.status().is_client_error(),
                "{path} {:?} -> {}",
                String::from_utf8_lossy(&bytes),
                response.status()
            );
        }
    }
    let (s, b) = server.post_json(
        infer,
        &v2_body(json!([1, 4]), "FP32", json!([5.1, 3.5, 1.4, 0.2])),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["outputs"][0]["data"], json!([0]));
}

#[test]
fn nan_is_accepted_when_allowed() {
    let f = fixtures();
    let mut cfg = config(&[("reg", f.join("diabetes_rf.onnx"))]);
    cfg.allow_nan = true;
    let server = TestServer::start(cfg);
    let mut row = vec![json!(0.01); 10];
    row[3] = Value::Null;
    let (s, b) = server.post_json("/invocations", &json!({"inputs": [row]}));
    assert_eq!(s, 200, "{b}");
}
