//! `predict.py` models: served through both protocols; a crashing worker is replaced and the server stays up.

use serde_json::json;

use crate::common::{TestServer, config, fixtures};

#[test]
fn predict_py_model_serves_and_survives_a_worker_crash() {
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

    // The model raises: a 500 that says so; the worker lives on.
    let (s, b) = server.post_json("/invocations", &json!({"inputs": [[13, 1]]}));
    assert_eq!(s, 500, "{b}");
    assert_eq!(b["code"], "inference_failed");
    assert!(
        b["error"].as_str().unwrap().contains("unlucky input"),
        "{b}"
    );

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
