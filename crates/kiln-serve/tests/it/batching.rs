//! Adaptive batching: concurrent requests are coalesced into batches of more than one row.

use std::time::Duration;

use serde_json::json;

use crate::common::{TestServer, client, config, fixtures};

#[test]
fn concurrent_requests_are_batched() {
    let mut cfg = config(&[("lr", fixtures().join("iris_lr.onnx"))]);
    cfg.onnx_sessions = 1;
    cfg.batch = kiln_serve::BatchConfig {
        max_batch_size: 8,
        max_batch_delay: Duration::from_millis(50),
        ..kiln_serve::BatchConfig::default()
    };
    let server = std::sync::Arc::new(TestServer::start(cfg));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let server = std::sync::Arc::clone(&server);
            std::thread::spawn(move || {
                // Rows from different classes, so a mix-up between batch members would show.
                let row = if i % 2 == 0 { [5.1, 3.5, 1.4, 0.2] } else { [7.7, 3.0, 6.1, 2.3] };
                let body = json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": row}]});
                let answer: serde_json::Value = client().post(server.url("/v2/models/lr/infer")).json(&body).send().unwrap().json().unwrap();
                assert_eq!(answer["outputs"][0]["data"], json!([if i % 2 == 0 { 0 } else { 2 }]), "{answer}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (_, metrics) = server.get("/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in {metrics}"))
    };
    let (rows, batches) = (
        value("kiln_batch_rows_sum{model=\"lr\"}"),
        value("kiln_batch_rows_count{model=\"lr\"}"),
    );
    assert_eq!(rows, 16.0, "{metrics}");
    assert!(
        batches < 16.0,
        "expected coalescing, got {batches} batches for {rows} rows"
    );
    // No batch exceeds max_batch_size.
    assert!(
        metrics.contains("kiln_batch_rows_bucket{le=\"8.0\",model=\"lr\"} ")
            && !metrics.contains("kiln_batch_rows_bucket{le=\"16.0\",model=\"lr\"} 0")
    );
}
