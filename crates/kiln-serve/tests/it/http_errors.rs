//! Requests axum itself would reject (a path segment that is not UTF-8, a wrong method, an unknown route)
//! and an overloaded model: each answered in the one JSON error shape.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestServer, client, config, fixtures};

fn assert_json_error(response: reqwest::blocking::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{response:?}"
    );
    let text = response.text().unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    body
}

#[test]
fn rejections_before_any_handler_use_the_json_error_shape() {
    let server = TestServer::start(config(&[("lr", fixtures().join("iris_lr.onnx"))]));
    let row = json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    for path in [
        "/v2/models/%FF/infer",
        "/v2/models/lr/versions/%C3%28/infer",
    ] {
        let response = client().post(server.url(path)).json(&row).send().unwrap();
        let body = assert_json_error(response, 400, "invalid_path");
        assert!(body["error"].as_str().unwrap().contains("utf-8"), "{body}");
    }
    let response = client().get(server.url("/v2/models/%FF")).send().unwrap();
    assert_json_error(response, 400, "invalid_path");
    // A wrong method, an unknown route, a body that is not JSON.
    let response = client()
        .get(server.url("/v2/models/lr/infer"))
        .send()
        .unwrap();
    let body = assert_json_error(response, 405, "method_not_allowed");
    assert!(body["error"].as_str().unwrap().contains("`GET`"), "{body}");
    let response = client().delete(server.url("/invocations")).send().unwrap();
    assert_json_error(response, 405, "method_not_allowed");
    let response = client().get(server.url("/v3/anything")).send().unwrap();
    assert_json_error(response, 404, "not_found");
    let response = client()
        .post(server.url("/v2/models/lr/infer"))
        .header("content-type", "application/json")
        .body("{\"inputs\": [")
        .send()
        .unwrap();
    assert_json_error(response, 400, "bad_json");
    // A query string, even one that is not UTF-8, is ignored.
    let response = client()
        .post(server.url("/v2/models/lr/infer?%FF=%FE&x"))
        .json(&row)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(server.get("/v2/health/ready").0, 200);
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("predict.py"),
        "import time\n\ndef predict(inputs):\n    time.sleep(0.3)\n    return {\"y\": inputs[\"x\"]}\n",
    )
    .unwrap();
    let mut cfg = config(&[("slow", dir.path().to_path_buf())]);
    cfg.python_workers = 1;
    cfg.batch = kiln_serve::BatchConfig {
        max_batch_size: 1,
        max_queue: 2,
        ..kiln_serve::BatchConfig::default()
    };
    let server = std::sync::Arc::new(TestServer::start(cfg));
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let server = std::sync::Arc::clone(&server);
            std::thread::spawn(move || {
                let body = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [i]}]});
                let response = client()
                    .post(server.url("/v2/models/slow/infer"))
                    .json(&body)
                    .send()
                    .unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let body: Value = response.json().unwrap();
                (status, retry_after, body)
            })
        })
        .collect();
    let answers: Vec<(u16, Option<String>, Value)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers.iter().filter(|(s, ..)| *s == 200).count();
    let shed: Vec<_> = answers.iter().filter(|(s, ..)| *s == 503).collect();
    assert_eq!(
        ok + shed.len(),
        answers.len(),
        "only 200 and 503: {answers:?}"
    );
    assert!(ok >= 1 && !shed.is_empty(), "ok={ok} shed={}", shed.len());
    for (_, retry_after, body) in shed {
        assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
        assert_eq!(body["code"], "overloaded", "{body}");
        assert!(body["request_id"].is_string(), "{body}");
    }
    // Still healthy, and serving once the burst has passed.
    assert_eq!(server.get("/v2/health/ready").0, 200);
    // The burst drains at the model's pace (0.3 s a request): ask until it is through.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.post_json(
            "/v2/models/slow/infer",
            &json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [7]}]}),
        );
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never drained"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("kiln_requests_total{model=\"slow\",version=\"1\",status=\"503\"}"),
        "{metrics}"
    );
}
