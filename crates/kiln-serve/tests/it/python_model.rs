//! `predict.py` models: served through both protocols; a crashing worker is replaced and the server stays up.

use serde_json::json;

use crate::common::{TestServer, config, fixtures};

#[test]
fn predict_py_model_serves_and_survives_a_worker_crash() {
    crate::common::server_log();
    let server = TestServer::start(config(&[("py", fixtures().join("py_model"))]));
    let (s, b) = server.post_json("/v2/models/py/infer", &json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["outputs"][0]["name"], "sum");
    assert_eq!(
        b["outputs"][0]["data"],
        json!([3.5, 7.5]),
        "load(model_dir) must have run"
    );
    let (s, b) = server.post_json(
        "/invocations",
        &json!({"dataframe_records": [{"b": 2, "a": 1}]}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["predictions"], json!([3.5]));
    let (s, b) = server.post_json(
        "/invocations",
        &json!({"dataframe_split": {"columns": ["a", "c"], "data": [[1, 2]]}}),
    );
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["code"], "missing_input");
    let (status, meta) = server.get("/v2/models/py");
    assert_eq!(status, 200);
    assert!(
        meta.contains("kiln_python") && meta.contains("FP64"),
        "{meta}"
    );

    // The model raises: a 500 with a stable code and the request id, the traceback stays in the server
    // log; the worker lives on.
    let response = crate::common::client()
        .post(server.url("/invocations"))
        .json(&json!({"inputs": [[13, 1]]}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let header_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = response.text().unwrap();
    let b: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["code"], "model_error", "{b}");
    assert_eq!(b["request_id"], header_id.as_str(), "{b}");
    let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["error", "code", "request_id"], "{b}");
    for leak in [
        "Traceback",
        "predict.py",
        "unlucky",
        "ValueError",
        "/tmp",
        "line ",
    ] {
        assert!(!text.contains(leak), "`{leak}` reached the client: {text}");
    }
    // The server log has the model's error and traceback under the same request id.
    let log = crate::common::server_log();
    // (A multi-line message is followed by its fields: the traceback comes before the id.)
    let lines: Vec<&str> = log.lines().collect();
    let line = lines
        .iter()
        .position(|l| l.contains(&header_id))
        .map(|i| lines[i.saturating_sub(30)..=i].join("\n"))
        .unwrap_or_else(|| panic!("request `{header_id}` is not in the server log:\n{log}"));
    assert!(
        line.contains("ValueError: unlucky input") && line.contains("Traceback"),
        "{line}"
    );
    // A client's own request id is echoed.
    let response = crate::common::client()
        .post(server.url("/invocations"))
        .header("x-request-id", "client-chosen-7")
        .json(&json!({"inputs": [[13, 1]]}))
        .send()
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-7");
    let b: serde_json::Value = response.json().unwrap();
    assert_eq!(b["request_id"], "client-chosen-7", "{b}");

    // The worker dies mid-request: a 502 that says so, then the replacement serves.
    let (s, b) = server.post_json("/invocations", &json!({"inputs": [[666, 1]]}));
    assert_eq!(s, 502, "{b}");
    assert_eq!(b["code"], "worker_crashed");
    assert!(b["error"].as_str().unwrap().contains("crashed"), "{b}");
    for _ in 0..6 {
        let (s, b) = server.post_json("/invocations", &json!({"inputs": [[1, 1]]}));
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["predictions"], json!([2.5]));
    }
    assert_eq!(server.get("/v2/health/ready").0, 200);
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("kiln_worker_restarts_total{model=\"py\"} 1"),
        "{metrics}"
    );
}

#[test]
fn predict_py_that_fails_to_load_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("predict.py"),
        "import no_such_module\n\ndef predict(inputs):\n    return inputs\n",
    )
    .unwrap();
    let error = match TestServer::try_start(config(&[("broken", dir.path().to_path_buf())])) {
        Ok(_) => panic!("a model that cannot load must stop the server from starting"),
        Err(e) => kiln_serve::error_chain(&e),
    };
    assert!(
        error.contains("model `broken`") && error.contains("no_such_module"),
        "{error}"
    );
}

#[test]
fn predict_py_model_reloads_on_change_without_failing_requests() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["predict.py", "offset.txt"] {
        std::fs::copy(
            fixtures().join("py_model").join(file),
            dir.path().join(file),
        )
        .unwrap();
    }
    let mut cfg = config(&[("py", dir.path().to_path_buf())]);
    cfg.watch_interval = Some(std::time::Duration::from_millis(100));
    let server = std::sync::Arc::new(TestServer::start(cfg));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (server, stop) = (std::sync::Arc::clone(&server), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut seen_new) = (0, Vec::new(), false);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (s, b) = server.post_json("/invocations", &json!({"inputs": [[1, 1]]}));
                if s == 200 {
                    ok += 1;
                    seen_new |= b["predictions"] == json!([102.0]);
                } else {
                    failed.push(b);
                }
            }
            (ok, failed, seen_new)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(dir.path().join("offset.txt"), "100").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !server
        .get("/v2/models/py")
        .1
        .contains("\"versions\":[\"2\"]")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "predict.py model was not reloaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, seen_new) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} requests failed during the reload: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 10 && seen_new, "ok={ok} seen_new={seen_new}");
}
