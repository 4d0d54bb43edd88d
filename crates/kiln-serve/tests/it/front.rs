//! The deployment front: switching backends under load, waiting for a restarted one, the 503s after
//! `hold`, what is forwarded unchanged, draining, and the health and smoke checks; against small axum
//! backends on loopback and against a real `kiln serve`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use kiln_serve::Front;
use kiln_serve::front::{check_live, check_ready, predict_example};
use serde_json::{Value, json};

use crate::common::{TestServer, client, config, fixtures, server_log};

const HOLD: Duration = Duration::from_secs(5);

/// A small HTTP server standing in for a `kiln serve` process, on its own runtime.
struct TestBackend {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl TestBackend {
    /// Answers `/who` with `name` (after 1 ms, so that requests overlap a switch), `/echo` with what
    /// it received, `/slow?MS` after MS milliseconds, and the health and inference routes with 200.
    fn healthy(name: &str) -> TestBackend {
        let name = name.to_string();
        let who = move || {
            let name = name.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ([("x-backend", name.clone())], name)
            }
        };
        let router = Router::new()
            .route("/who", any(who))
            .route("/echo", any(echo))
            .route("/slow", get(slow))
            .route("/v2/health/live", get(|| async { StatusCode::OK }))
            .route("/v2/health/ready", get(|| async { StatusCode::OK }))
            .route("/invocations", post(mlflow_only))
            .route("/v2/models/iris/infer", post(v2_only));
        TestBackend::start(router)
    }

    /// Fails every check: live 500, ready 503, inference 500 / 404, with JSON bodies.
    fn failing() -> TestBackend {
        let router = Router::new()
            .route(
                "/v2/health/live",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "dying") }),
            )
            .route(
                "/v2/health/ready",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "") }),
            )
            .route(
                "/invocations",
                post(|| async {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(json!({"error": "the model raised", "code": "model_error"})),
                    )
                }),
            );
        TestBackend::start(router)
    }

    fn start(router: Router) -> TestBackend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = runtime.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestBackend {
            addr,
            runtime: Some(runtime),
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// Stops like a killed process: the listener and every connection close at once.
    fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(served) = self.served.take() {
                let _ = runtime
                    .block_on(async { tokio::time::timeout(Duration::from_secs(5), served).await });
            }
            runtime.shutdown_background();
        }
    }
}

async fn echo(request: Request) -> axum::Json<Value> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn slow(request: Request) -> &'static str {
    let ms: u64 = request.uri().query().unwrap_or("0").parse().unwrap();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "slow"
}

async fn mlflow_only(body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    if body.get("dataframe_split").is_some() || body.get("inputs").is_some() {
        axum::Json(json!({"predictions": [0]})).into_response()
    } else {
        StatusCode::BAD_REQUEST.into_response()
    }
}

async fn v2_only(body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    if body["inputs"][0]["datatype"].is_string() {
        axum::Json(json!({"model_name": "iris", "outputs": []})).into_response()
    } else {
        StatusCode::BAD_REQUEST.into_response()
    }
}

fn front(hold: Duration) -> Front {
    Front::bind("127.0.0.1:0".parse().unwrap(), hold).expect("front binds")
}

fn url(front: &Front, path: &str) -> String {
    format!("http://{}{path}", front.local_addr())
}

/// A loopback address nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn switching_backends_under_load_fails_no_request() {
    let front = Arc::new(front(HOLD));
    let mut current = TestBackend::healthy("b0");
    front.set_backend(Some(current.addr));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let answered_by = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (front, stop, ok, failures, answered_by) = (
                Arc::clone(&front),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failures),
                Arc::clone(&answered_by),
            );
            std::thread::spawn(move || {
                // One keep-alive client per thread: 16 connections, reused across switches.
                let client = client();
                while !stop.load(Ordering::SeqCst) {
                    let sent = client
                        .post(url(&front, "/who"))
                        .body(format!("client {i}"))
                        .send();
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            let name = response.text().unwrap();
                            *answered_by.lock().unwrap().entry(name).or_default() += 1;
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(response) => failures.lock().unwrap().push(format!(
                            "{}: {}",
                            response.status(),
                            response.text().unwrap_or_default()
                        )),
                        Err(error) => failures.lock().unwrap().push(error.to_string()),
                    }
                }
            })
        })
        .collect();

    for generation in 1..=6 {
        std::thread::sleep(Duration::from_millis(150));
        let next = TestBackend::healthy(&format!("b{generation}"));
        let drain = front.set_backend(Some(next.addr));
        assert_eq!(front.backend(), Some(next.addr));
        assert!(
            drain.wait(Duration::from_secs(5)),
            "requests to the old backend did not finish"
        );
        // Stopped the hard way right after its drain: no request may be on it, or go to it.
        std::mem::replace(&mut current, next).kill();
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let answered_by = answered_by.lock().unwrap();
    assert_eq!(
        answered_by.keys().cloned().collect::<Vec<_>>(),
        ["b0", "b1", "b2", "b3", "b4", "b5", "b6"],
        "every backend answered its share: {answered_by:?}"
    );
    assert!(ok.load(Ordering::SeqCst) > 100);
}

#[test]
fn requests_wait_for_a_killed_backend_to_be_replaced() {
    server_log();
    let front = Arc::new(front(HOLD));
    let first = TestBackend::healthy("first");
    let first_addr = first.addr;
    front.set_backend(Some(first.addr));
    // Warm the front's pool to the first backend, so that its connections die with it.
    let kept_alive = client();
    for _ in 0..4 {
        let response = kept_alive.post(url(&front, "/who")).send().unwrap();
        assert_eq!(response.text().unwrap(), "first");
    }

    first.kill();
    let killed = Instant::now();
    let waiting: Vec<_> = (0..6)
        .map(|i| {
            let front = Arc::clone(&front);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30 * i));
                let sent = Instant::now();
                let response = client().post(url(&front, "/who")).send().unwrap();
                let status = response.status().as_u16();
                (status, response.text().unwrap(), sent.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let second = TestBackend::healthy("second");
    front
        .set_backend(Some(second.addr))
        .wait(Duration::from_secs(1));
    let replaced = killed.elapsed();

    for request in waiting {
        let (status, body, took) = request.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "second"));
        assert!(
            took < replaced + Duration::from_millis(500),
            "took {took:?}"
        );
    }
    // The kept-alive client, whose connection to the front survived, is answered too.
    let response = kept_alive.post(url(&front, "/who")).send().unwrap();
    assert_eq!(response.text().unwrap(), "second");
    // The outage is logged once, not per request.
    let log = server_log();
    let front_addr = front.local_addr();
    let unreachable = format!("front {front_addr}: backend {first_addr} unreachable");
    assert_eq!(log.matches(&unreachable).count(), 1, "{log}");
    assert!(
        log.contains(&format!(
            "front {front_addr}: new requests go to {}",
            second.addr
        )),
        "{log}"
    );
}

#[test]
fn no_backend_within_hold_answers_503() {
    let hold = Duration::from_millis(300);
    let front = front(hold);
    let started = Instant::now();
    let response = client().post(url(&front, "/invocations")).send().unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().unwrap();
    assert_eq!(body["code"], "no_version_serving");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("no version of this model is serving yet"),
        "{body}"
    );
    assert!(
        took >= hold && took < hold + Duration::from_millis(250),
        "answered after {took:?}"
    );

    // A backend set while a request waits takes it at once.
    let backend = TestBackend::healthy("late");
    let waiting = {
        let url = url(&front, "/who");
        std::thread::spawn(move || {
            let sent = Instant::now();
            let text = client().post(url).send().unwrap().text().unwrap();
            (text, sent.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    front.set_backend(Some(backend.addr));
    let (text, took) = waiting.join().unwrap();
    assert_eq!(text, "late");
    assert!(took < hold, "took {took:?}");

    // Back to none: new requests wait again.
    assert!(front.set_backend(None).wait(Duration::from_secs(1)));
    assert_eq!(front.backend(), None);
    let response = client().get(url(&front, "/who")).send().unwrap();
    assert_eq!(response.status(), 503);
}

#[test]
fn an_unreachable_backend_answers_503_after_hold() {
    let hold = Duration::from_millis(300);
    let front = front(hold);
    front.set_backend(Some(closed_port()));
    let started = Instant::now();
    let response = client().post(url(&front, "/who")).send().unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().unwrap();
    assert_eq!(body["code"], "backend_unavailable");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 300 ms"),
        "{body}"
    );
    assert!(
        took >= hold && took < hold + Duration::from_millis(250),
        "answered after {took:?}"
    );
}

#[test]
fn requests_and_answers_pass_through_unchanged() {
    let backend = TestBackend::healthy("echo");
    let front = front(HOLD);
    front.set_backend(Some(backend.addr));
    let response = client()
        .put(url(&front, "/echo?a=1&b=two%20words"))
        .header("x-custom", "kept")
        .header("authorization", "Bearer secret")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .body("the body")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().unwrap();
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["uri"], "/echo?a=1&b=two%20words");
    assert_eq!(echoed["body"], "the body");
    let headers = &echoed["headers"];
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["authorization"], "Bearer secret");
    assert_eq!(headers["content-length"], "8");
    for hop in ["x-hop", "keep-alive", "te", "proxy-connection"] {
        assert!(headers.get(hop).is_none(), "{hop} was forwarded: {headers}");
    }

    // Status, headers and body of the backend's answer are the client's, errors included.
    let response = client().get(url(&front, "/who")).send().unwrap();
    assert_eq!(response.headers()["x-backend"], "echo");
    let response = client().get(url(&front, "/missing")).send().unwrap();
    assert_eq!(response.status(), 404);

    // A body over the server's limit is refused by the front itself, before it is sent (a raw
    // socket: the front answers without reading it), and also when no length is announced.
    use std::io::{Read, Write};
    let limit = 4 * 1024 * 1024;
    let mut socket = std::net::TcpStream::connect(front.local_addr()).unwrap();
    write!(
        socket,
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        limit + 1
    )
    .unwrap();
    let mut answer = String::new();
    let _ = socket.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{answer}"
    );
    let mut socket = std::net::TcpStream::connect(front.local_addr()).unwrap();
    write!(
        socket,
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        limit + 1
    )
    .unwrap();
    let _ = socket.write_all(&vec![b'x'; limit + 1]);
    let _ = socket.write_all(b"\r\n0\r\n\r\n");
    let mut answer = String::new();
    let _ = socket.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[test]
fn http2_with_prior_knowledge_is_served() {
    let backend = TestBackend::healthy("h2");
    let front = front(HOLD);
    front.set_backend(Some(backend.addr));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, body) = runtime.block_on(async {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(front.local_addr())
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .uri(format!("http://{}/who", front.local_addr()))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"h2");
}

#[test]
fn drain_waits_for_the_requests_in_flight_to_the_old_backend() {
    let old = TestBackend::healthy("old");
    let new = TestBackend::healthy("new");
    let front = Arc::new(front(HOLD));
    front.set_backend(Some(old.addr));
    let slow = {
        let url = url(&front, "/slow?600");
        std::thread::spawn(move || client().get(url).send().unwrap().text().unwrap())
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let drain = front.set_backend(Some(new.addr));
    // New requests go to the new backend while the slow one is still on the old.
    let response = client().get(url(&front, "/who")).send().unwrap();
    assert_eq!(response.text().unwrap(), "new");
    assert!(drain.wait(Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(slow.join().unwrap(), "slow");

    // A drain that times out says so.
    let slow = {
        let url = url(&front, "/slow?600");
        std::thread::spawn(move || client().get(url).send().unwrap().text().unwrap())
    };
    std::thread::sleep(Duration::from_millis(100));
    let drain = front.set_backend(Some(old.addr));
    assert!(!drain.wait(Duration::from_millis(100)));
    assert_eq!(slow.join().unwrap(), "slow");
}

#[test]
fn shutdown_lets_requests_in_flight_finish() {
    let backend = TestBackend::healthy("b");
    let front = front(HOLD);
    front.set_backend(Some(backend.addr));
    let addr = front.local_addr();
    let slow = std::thread::spawn(move || {
        client()
            .get(format!("http://{addr}/slow?300"))
            .send()
            .map(|r| r.text().unwrap())
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    front.shutdown(Duration::from_secs(5));
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(slow.join().unwrap().unwrap(), "slow");
    // Not listening any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn a_front_dropped_in_async_code_stops_without_panicking() {
    let front = front(HOLD);
    let addr = front.local_addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move { drop(front) });
    std::thread::sleep(Duration::from_millis(50));
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn binding_a_port_in_use_says_which() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let error = match Front::bind(addr, HOLD) {
        Ok(_) => panic!("bound a port in use"),
        Err(error) => error,
    };
    let text = kiln_serve::error_chain(&error);
    assert!(
        text.starts_with(&format!("cannot listen on `{addr}`")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("in use"), "{text}");
}

#[test]
fn checks_pass_on_a_healthy_backend_and_say_what_failed_otherwise() {
    let timeout = Duration::from_secs(2);
    let mlflow = json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2.0]]}});
    let v2 =
        json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]});

    let healthy = TestBackend::healthy("ok");
    check_live(healthy.addr, timeout).unwrap();
    check_ready(healthy.addr, timeout).unwrap();
    predict_example(healthy.addr, "iris", &mlflow, timeout).unwrap();
    // The v2 body goes to the model's infer route: `/invocations` would refuse it.
    predict_example(healthy.addr, "iris", &v2, timeout).unwrap();
    let error = predict_example(healthy.addr, "other", &v2, timeout).unwrap_err();
    assert_eq!(
        error,
        format!(
            "`POST /v2/models/other/infer` on `{}` answered 404 Not Found: (empty body)",
            healthy.addr
        )
    );

    let failing = TestBackend::failing();
    let error = check_live(failing.addr, timeout).unwrap_err();
    assert_eq!(
        error,
        format!(
            "`GET /v2/health/live` on `{}` answered 500 Internal Server Error: dying",
            failing.addr
        )
    );
    let error = check_ready(failing.addr, timeout).unwrap_err();
    assert!(
        error.contains("answered 503 Service Unavailable"),
        "{error}"
    );
    let error = predict_example(failing.addr, "iris", &mlflow, timeout).unwrap_err();
    assert_eq!(
        error,
        format!(
            "`POST /invocations` on `{}` answered 500 Internal Server Error: \
             {{\"error\":\"the model raised\",\"code\":\"model_error\"}}",
            failing.addr
        )
    );

    let closed = closed_port();
    for error in [
        check_live(closed, timeout).unwrap_err(),
        check_ready(closed, timeout).unwrap_err(),
        predict_example(closed, "iris", &mlflow, timeout)
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert!(
            error.contains(&format!("on `{closed}`: cannot connect: ")),
            "{error}"
        );
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }

    // A backend that accepts and never answers is bounded by the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let error = check_ready(silent.local_addr().unwrap(), Duration::from_millis(200)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(error.ends_with("did not answer within 200ms"), "{error}");
}

#[test]
fn a_real_kiln_serve_behind_the_front() {
    let server = TestServer::start(config(&[(
        "iris",
        fixtures().join("iris_lr_nozipmap.onnx"),
    )]));
    let timeout = Duration::from_secs(10);
    check_live(server.addr, timeout).unwrap();
    check_ready(server.addr, timeout).unwrap();
    let mlflow = json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]});
    let v2 = json!({"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]});
    predict_example(server.addr, "iris", &mlflow, timeout).unwrap();
    predict_example(server.addr, "iris", &v2, timeout).unwrap();
    let error = predict_example(server.addr, "nope", &v2, timeout).unwrap_err();
    assert!(
        error.contains("answered 404 Not Found: {\"error\""),
        "{error}"
    );

    let front = front(HOLD);
    front.set_backend(Some(server.addr));
    // Through the front, the checks and the answers are the backend's own.
    check_ready(front.local_addr(), timeout).unwrap();
    predict_example(front.local_addr(), "iris", &v2, timeout).unwrap();
    let direct = client()
        .post(server.url("/invocations"))
        .json(&mlflow)
        .send()
        .unwrap();
    let proxied = client()
        .post(url(&front, "/invocations"))
        .json(&mlflow)
        .send()
        .unwrap();
    assert_eq!(proxied.status(), direct.status());
    assert_eq!(
        proxied.headers()["content-type"],
        direct.headers()["content-type"]
    );
    assert!(proxied.headers().contains_key("x-request-id"));
    assert_eq!(proxied.text().unwrap(), direct.text().unwrap());
    // The server's own errors pass through in its JSON shape.
    let response = client()
        .post(url(&front, "/invocations"))
        .json(&json!({"inputs": [[1.0, 2.0]]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().unwrap();
    assert!(body["code"].is_string(), "{body}");
}
