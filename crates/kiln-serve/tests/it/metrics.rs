//! `/metrics`: Prometheus text that `promtool check metrics` accepts, with the documented series.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::common::onnx_server;

#[test]
fn metrics_pass_promtool_and_count_requests() {
    let server = onnx_server();
    for _ in 0..3 {
        let (s, _) = server.post_json(
            "/models/lr/invocations",
            &json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
        );
        assert_eq!(s, 200);
    }
    let (s, _) = server.post_json("/models/lr/invocations", &json!({"inputs": [[5.1, 3.5]]}));
    assert_eq!(s, 400);
    let (s, _) = server.post_json("/models/nope/invocations", &json!({"inputs": [[5.1, 3.5]]}));
    assert_eq!(s, 404);
    let openmetrics = crate::common::client()
        .get(server.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .unwrap();
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(openmetrics.text().unwrap().ends_with("# EOF\n"));
    let response = crate::common::client()
        .get(server.url("/metrics"))
        .send()
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().unwrap();
    for series in [
        "kiln_requests_total{model=\"lr\",version=\"1\",status=\"200\"} 3",
        "kiln_requests_total{model=\"lr\",version=\"1\",status=\"400\"} 1",
        "kiln_requests_total{model=\"\",version=\"\",status=\"404\"} 1",
        "kiln_request_duration_seconds_count{model=\"lr\"} 4",
        "kiln_queue_duration_seconds_count{model=\"lr\"} 3",
        "kiln_inference_duration_seconds_count{model=\"lr\"}",
        "kiln_batch_rows_count{model=\"lr\"} 3",
        "kiln_requests_in_flight{model=\"lr\"} 0",
        "kiln_model_load_duration_seconds{model=\"lr\"}",
        "kiln_model_loads_total{model=\"lr\",result=\"ok\"} 1",
    ] {
        assert!(text.contains(series), "missing `{series}` in:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("`promtool` not found: install the Debian package `prometheus` (listed in .ci/apt-packages.txt)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
