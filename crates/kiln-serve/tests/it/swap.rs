//! Hot swap: explicit load/unload and reload on file change, under load, with zero failed requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestServer, client, config, fixtures};

const ROW: [f64; 4] = [6.2, 2.9, 4.3, 1.3];

#[test]
fn swap_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("iris.onnx");
    std::fs::copy(fixtures().join("iris_lr.onnx"), &served).unwrap();
    let mut cfg = config(&[("iris", served.clone())]);
    cfg.watch_interval = Some(Duration::from_millis(100));
    let server = Arc::new(TestServer::start(cfg));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let versions = Arc::new(Mutex::new(std::collections::BTreeSet::<String>::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (server, stop, ok, failed, versions) = (Arc::clone(&server), Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&versions));
            std::thread::spawn(move || {
                let client = client();
                let body = json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]});
                while !stop.load(Ordering::Relaxed) {
                    match client.post(server.url("/v2/models/iris/infer")).json(&body).send() {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().unwrap();
                            versions.lock().unwrap().insert(v["model_version"].as_str().unwrap_or("").to_string());
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed.lock().unwrap().push(format!("{}: {}", r.status(), r.text().unwrap_or_default())),
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // 1. Explicit reloads through the repository API.
    for _ in 0..3 {
        let (s, b) = server.post_json("/v2/repository/models/iris/load", &json!({}));
        assert_eq!(s, 200, "{b}");
        std::thread::sleep(Duration::from_millis(150));
    }
    // 2. The file changes: replaced atomically by another model, picked up by the watcher.
    let staged = dir.path().join("staged.onnx");
    std::fs::copy(fixtures().join("iris_rf.onnx"), &staged).unwrap();
    std::fs::rename(&staged, &served).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, meta) = server.get("/v2/models/iris");
        if meta.contains("\"versions\":[\"5\"]") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changed file was not reloaded: {meta}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // 3. A broken file fails to load and the previous model keeps serving.
    std::fs::write(&staged, b"this is not an onnx model").unwrap();
    std::fs::rename(&staged, &served).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let (s, b) = server.post_json("/v2/repository/models/iris/load", &json!({}));
    assert_eq!(s, 500, "{b}");
    assert_eq!(b["code"], "model_load_failed");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during swaps: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "too few requests ran during the swaps: {ok}");
    let versions = versions.lock().unwrap();
    assert!(
        versions.contains("1") && versions.contains("5"),
        "requests should have seen old and new versions: {versions:?}"
    );
    let (_, meta) = server.get("/v2/models/iris");
    assert!(
        meta.contains("\"versions\":[\"5\"]"),
        "the broken file must not replace the serving model: {meta}"
    );

    // Unload and load again.
    let (s, _) = server.post_json("/v2/repository/models/iris/unload", &json!({}));
    assert_eq!(s, 200);
    let (s, b) = server.post_json("/v2/models/iris/infer", &json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}));
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["code"], "model_not_ready");
    assert_eq!(server.get("/v2/health/ready").0, 503);
    std::fs::copy(fixtures().join("iris_lr.onnx"), &served).unwrap();
    let (s, b) = server.post_json("/v2/repository/models/iris/load", &json!({}));
    assert_eq!(s, 200, "{b}");
    let (s, b) = server.post_json("/v2/repository/index", &json!({}));
    assert_eq!(s, 200);
    assert_eq!(b[0]["state"], "READY");
}

use std::sync::Mutex;
