//! Health and smoke checks of a backend (a `kiln serve` process), for the supervisor: blocking, each
//! bounded by a timeout, each answering `Err` with what went wrong in words (what was asked, what
//! came back).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How much of an unexpected answer's body an error quotes.
const QUOTED_BODY_CHARS: usize = 200;

/// `GET /v2/health/live` answers 200: the process serves HTTP.
pub fn check_live(backend: SocketAddr, timeout: Duration) -> Result<(), String> {
    expect_ok(backend, Method::GET, "/v2/health/live", None, timeout).map(|_| ())
}

/// `GET /v2/health/ready` answers 200: every model of the process is loaded.
pub fn check_ready(backend: SocketAddr, timeout: Duration) -> Result<(), String> {
    expect_ok(backend, Method::GET, "/v2/health/ready", None, timeout).map(|_| ())
}

/// Sends a model version's stored example to the endpoint its shape calls for and requires a 200:
/// `POST /v2/models/{model}/infer` for an Open Inference Protocol v2 request (`inputs` a list of
/// `{name, datatype, shape, data}`), `POST /invocations` for an MLflow scoring body
/// (`dataframe_split`, `dataframe_records`, `instances`, `inputs`). Answers how long the
/// exchange took.
pub fn predict_example(
    backend: SocketAddr,
    model: &str,
    example: &Value,
    timeout: Duration,
) -> Result<Duration, String> {
    let path = example_path(model, example);
    let body =
        serde_json::to_vec(example).map_err(|e| format!("cannot encode the example: {e}"))?;
    let started = Instant::now();
    expect_ok(backend, Method::POST, &path, Some(body), timeout)?;
    Ok(started.elapsed())
}

/// Where `example` goes: `/v2/models/{model}/infer` for an Open Inference Protocol v2 request,
/// `/invocations` for an MLflow scoring body.
pub fn example_path(model: &str, example: &Value) -> String {
    if is_v2_request(example) {
        format!("/v2/models/{model}/infer")
    } else {
        "/invocations".to_string()
    }
}

/// Whether `example` is an Open Inference Protocol v2 request rather than an MLflow scoring body.
fn is_v2_request(example: &Value) -> bool {
    example
        .get("inputs")
        .and_then(Value::as_array)
        .is_some_and(|inputs| {
            !inputs.is_empty()
                && inputs.iter().all(|input| {
                    input.get("name").is_some_and(Value::is_string)
                        && input.get("datatype").is_some_and(Value::is_string)
                        && input.get("shape").is_some_and(Value::is_array)
                        && input.get("data").is_some()
                })
        })
}

/// One request on a fresh connection; `Err` unless it answers 200.
fn expect_ok(
    backend: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Bytes, String> {
    let what = format!("`{method} {path}` on `{backend}`");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot check {what}: {e}"))?;
    let exchange = exchange(backend, method, path, body);
    let result = runtime.block_on(async { tokio::time::timeout(timeout, exchange).await });
    let (status, body) = match result {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => return Err(format!("{what}: {error}")),
        Err(_) => return Err(format!("{what} did not answer within {timeout:?}")),
    };
    if status != StatusCode::OK {
        return Err(format!("{what} answered {status}: {}", quote(&body)));
    }
    Ok(body)
}

async fn exchange(
    backend: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(backend)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot talk HTTP: {}", crate::error_chain(&e)))?;
    tokio::spawn(connection);
    let mut request = Request::new(Full::new(Bytes::from(body.clone().unwrap_or_default())));
    *request.method_mut() = method;
    *request.uri_mut() = path
        .parse()
        .map_err(|_| format!("`{path}` is not a valid request path"))?;
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&backend.to_string()) {
        headers.insert(header::HOST, host);
    }
    if body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {}", crate::error_chain(&e)))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the answer broke off: {}", crate::error_chain(&e)))?
        .to_bytes();
    Ok((status, body))
}

/// The start of a body, on one line, for an error message.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(QUOTED_BODY_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_requests_are_told_from_mlflow_bodies() {
        let v2 = serde_json::json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]});
        assert!(is_v2_request(&v2));
        for mlflow in [
            serde_json::json!({"inputs": [[1, 2, 3, 4]]}),
            serde_json::json!({"inputs": {"x": [[1, 2]]}}),
            serde_json::json!({"inputs": [{"a": 1, "b": 2}]}),
            serde_json::json!({"dataframe_split": {"columns": ["a"], "data": [[1]]}}),
            serde_json::json!({"instances": [[1, 2]]}),
            serde_json::json!({"inputs": []}),
        ] {
            assert!(!is_v2_request(&mlflow), "{mlflow}");
        }
    }

    #[test]
    fn quotes_keep_the_start_of_a_body_on_one_line() {
        assert_eq!(quote(b""), "(empty body)");
        assert_eq!(quote(b"{\"error\":\n  \"boom\"}"), "{\"error\": \"boom\"}");
        let long = "é".repeat(300);
        assert_eq!(
            quote(long.as_bytes()).chars().count(),
            QUOTED_BODY_CHARS + 3
        );
    }
}
