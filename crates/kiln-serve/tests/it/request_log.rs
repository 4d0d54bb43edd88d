//! The sampled request log: entries with inputs, outputs, version, latency, id and time; rotated by size.

use serde_json::{Value, json};

use crate::common::{TestServer, config, fixtures};

#[test]
fn request_log_records_and_rotates() {
    let logs = tempfile::tempdir().unwrap();
    let mut cfg = config(&[("lr", fixtures().join("iris_lr.onnx"))]);
    cfg.request_log = Some(kiln_serve::RequestLogConfig {
        dir: logs.path().join("requests"),
        sample_rate: 1.0,
        max_file_bytes: 4096,
        max_files: 2,
    });
    let server = TestServer::start(cfg);
    let response = crate::common::client()
        .post(server.url("/invocations"))
        .header("x-request-id", "trace-42")
        .json(&json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]}))
        .send()
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    for _ in 0..60 {
        let (s, _) = server.post_json("/v2/models/lr/infer", &json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}));
        assert_eq!(s, 200);
    }
    drop(server); // the writer thread flushes and rotates on its own: wait for it
    let dir = logs.path().join("requests");
    let list = || {
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let last_line_is_whole = || {
        std::fs::read_to_string(dir.join("requests.jsonl"))
            .ok()
            .and_then(|text| text.lines().last().map(str::to_string))
            .is_some_and(|line| serde_json::from_str::<Value>(&line).is_ok())
    };
    while !(list().len() == 3 && last_line_is_whole()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let files = list();
    assert_eq!(
        files,
        ["requests.1.jsonl", "requests.2.jsonl", "requests.jsonl"],
        "rotation keeps 2 old files"
    );
    for file in &files {
        let size = std::fs::metadata(dir.join(file)).unwrap().len();
        assert!(size <= 4096, "{file} has {size} bytes");
    }
    let current = std::fs::read_to_string(dir.join("requests.jsonl")).unwrap();
    let entry: Value = serde_json::from_str(current.lines().last().unwrap()).unwrap();
    assert_eq!(entry["model"], "lr");
    assert_eq!(entry["model_version"], "1");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["inputs"]["float_input"]["shape"], json!([1, 4]));
    assert_eq!(entry["outputs"]["output_label"]["data"], json!([0]));
    assert!(entry["latency_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        entry["timestamp"].as_str().unwrap().starts_with("20"),
        "{entry}"
    );
    assert!(
        entry["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}
