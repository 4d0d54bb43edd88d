//! The registry API on a real socket, asked by a real HTTP client, over a registry filled by
//! real registrations (SQLite under a temporary `.kiln/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use kiln_api::ApiConfig;
use kiln_registry::{
    AliasCommand, Lineage, MoveBy, NewRun, Registry, RunOutcome, ServableSummary, Status,
};
use serde_json::{Value, json};

/// A server on a free loopback port, stopped (and its thread joined) when dropped, also when a
/// test fails.
struct TestServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(root: &Path, token: Option<&str>) -> TestServer {
        let config = ApiConfig {
            root: root.to_path_buf(),
            token: token.map(str::to_string),
            on_alias_moved: None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                axum::serve(listener, kiln_api::router(config))
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        TestServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::blocking::get(self.url(path)).unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// `PUT` with an optional `Authorization` header and a raw body.
    fn put(&self, path: &str, authorization: Option<&str>, body: &str) -> (u16, Value) {
        let mut request = reqwest::blocking::Client::new()
            .put(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lineage(run_id: i64, accuracy: f64) -> Lineage {
    Lineage {
        run_id,
        commit: Some("0123abcd".into()),
        dirty: false,
        params: json!({"train.C": accuracy}),
        metrics: vec![("accuracy".into(), accuracy)],
        deps: BTreeMap::from([("data/train.csv".to_string(), Some("ab".repeat(32)))]),
        environment: Some(vec!["scikit-learn==1.5.0".into()]),
        servable: Some(ServableSummary {
            passed: true,
            message: "predicted 1 row".into(),
        }),
        signature: Some(json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})),
        example: None,
        profile: None,
    }
}

/// Registers `count` versions of `model` as green runs do: a run, then its version.
fn register(registry: &mut Registry, model: &str, count: usize) {
    for n in 0..count {
        let run = registry
            .start_run(&NewRun {
                model: model.into(),
                params: json!({}),
                overrides: json!({}),
            })
            .unwrap();
        registry
            .finish_run(run, &RunOutcome::bare(Status::Succeeded, None, None))
            .unwrap();
        let digest = blake3::hash(format!("{model}-{n}").as_bytes())
            .to_hex()
            .to_string();
        registry
            .register_version(model, &digest, &lineage(run, 0.9 + n as f64 / 100.0))
            .unwrap();
    }
}

fn by(reason: &str) -> MoveBy<'_> {
    MoveBy {
        command: AliasCommand::Promote,
        run_id: None,
        reason: Some(reason),
    }
}

/// A project folder whose registry holds `iris` v1-v3 (`production` on v2) and `wine` v1.
fn filled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::open(&dir.path().join(".kiln/kiln.db")).unwrap();
    register(&mut registry, "iris", 3);
    register(&mut registry, "wine", 1);
    registry
        .move_alias("iris", "production", 2, by("first release"))
        .unwrap();
    dir
}

#[test]
fn models_versions_aliases_and_history_read_as_json() {
    let dir = filled();
    let server = TestServer::start(dir.path(), None);

    let models = server.ok("/v1/models");
    assert_eq!(
        models,
        json!({"models": [
            {"model": "iris", "versions": 3, "latest_version": 3, "aliases": {"latest": 3, "production": 2}},
            {"model": "wine", "versions": 1, "latest_version": 1, "aliases": {"latest": 1}},
        ]})
    );
    assert_eq!(server.ok("/v1/models/wine"), models["models"][1]);

    let v2 = server.ok("/v1/models/iris/versions/2");
    assert_eq!(v2["model"], json!("iris"));
    assert_eq!(v2["version"], json!(2));
    assert_eq!(v2["aliases"], json!(["production"]));
    assert_eq!(v2["lineage"]["metrics"], json!({"accuracy": 0.91}));
    assert_eq!(v2["lineage"]["commit"], json!("0123abcd"));
    assert_eq!(v2["lineage"]["servable"]["passed"], json!(true));
    assert_eq!(v2["lineage"]["signature"]["inputs"][0]["name"], json!("x"));
    assert_eq!(v2["origin"], json!(null));
    assert_eq!(server.ok("/v1/models/iris/versions/v2"), v2);
    assert_eq!(server.ok("/v1/models/iris/aliases/production"), v2);
    assert_eq!(
        server.ok("/v1/models/iris/aliases/latest")["version"],
        json!(3)
    );
    assert_eq!(
        server.ok("/v1/models/iris/aliases"),
        json!({"model": "iris", "aliases": {"latest": 3, "production": 2}})
    );

    let history = server.ok("/v1/models/iris/history?alias=production");
    assert_eq!(history["alias"], json!("production"));
    let moves = history["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{history}");
    assert_eq!(moves[0]["from_version"], json!(null));
    assert_eq!(moves[0]["to_version"], json!(2));
    assert_eq!(moves[0]["command"], json!("promote"));
    assert_eq!(moves[0]["reason"], json!("first release"));
    let all = server.ok("/v1/models/iris/history");
    assert_eq!(all["moves"].as_array().unwrap().len(), 4, "{all}");
    assert_eq!(all["moves"][0]["command"], json!("run"));
}

#[test]
fn versions_come_newest_first_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::open(&dir.path().join(".kiln/kiln.db")).unwrap();
    register(&mut registry, "iris", 7);
    let server = TestServer::start(dir.path(), None);
    let page = |query: &str| {
        let body = server.ok(&format!("/v1/models/iris/versions{query}"));
        let numbers: Vec<i64> = body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect();
        (numbers, body["next_after"].clone())
    };
    assert_eq!(page(""), (vec![7, 6, 5, 4, 3, 2, 1], json!(null)));
    assert_eq!(page("?limit=3"), (vec![7, 6, 5], json!(5)));
    assert_eq!(page("?limit=3&after=5"), (vec![4, 3, 2], json!(2)));
    assert_eq!(page("?limit=3&after=2"), (vec![1], json!(null)));
    assert_eq!(page("?limit=1&after=v2"), (vec![1], json!(null)));
    assert_eq!(page("?limit=6"), (vec![7, 6, 5, 4, 3, 2], json!(2)));
    assert_eq!(page("?limit=7"), (vec![7, 6, 5, 4, 3, 2, 1], json!(null)));
    assert_eq!(page("?limit=2&after=100"), (vec![7, 6], json!(6)));
    assert_eq!(page("?after=1"), (vec![], json!(null)));

    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit"),
        ("?after=0", "after"),
        ("?after=x", "after"),
    ] {
        let (status, body) = server.get(&format!("/v1/models/iris/versions{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["field"], json!(field), "{query}: {body}");
    }
    let (status, body) = server.get("/v1/models/iris/versions?limt=3");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], json!("invalid_request"));
    assert!(body["error"].as_str().unwrap().contains("limt"), "{body}");
}

#[test]
fn unknown_names_are_404_and_bad_names_400_in_the_one_error_shape() {
    let dir = filled();
    let server = TestServer::start(dir.path(), None);
    let error = |path: &str, status: u16, code: &str, message: &str| {
        let (got, body) = server.get(path);
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["code"], json!(code), "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{path}: {body}"
        );
    };
    let unknown = "no version of model `nope` is registered";
    error("/v1/models/nope", 404, "model_not_found", unknown);
    error("/v1/models/nope/versions", 404, "model_not_found", unknown);
    error(
        "/v1/models/nope/versions/1",
        404,
        "model_not_found",
        unknown,
    );
    error("/v1/models/nope/aliases", 404, "model_not_found", unknown);
    error(
        "/v1/models/nope/aliases/latest",
        404,
        "model_not_found",
        unknown,
    );
    error("/v1/models/nope/history", 404, "model_not_found", unknown);
    error(
        "/v1/models/iris/versions/9",
        404,
        "model_version_not_found",
        "model `iris` has no version 9",
    );
    error(
        "/v1/models/iris/aliases/canary",
        404,
        "alias_not_found",
        "no version of model `iris` is in `canary`",
    );
    error(
        "/v1/models/.hidden",
        400,
        "invalid_path",
        "`.hidden` is not a model name",
    );
    error(
        "/v1/models/a%20b/versions",
        400,
        "invalid_path",
        "`a b` is not a model name",
    );
    error(
        "/v1/models/iris/versions/three",
        400,
        "invalid_path",
        "`three` is not a version number",
    );
    error(
        "/v1/models/iris/versions/0",
        400,
        "invalid_path",
        "versions start at 1",
    );
    error(
        "/v1/models/iris/aliases/Prod",
        400,
        "invalid_path",
        "`Prod` is not an alias: an alias starts with a lowercase letter",
    );
    error(
        "/v1/models/iris/aliases/v2",
        400,
        "invalid_path",
        "see `/v1/models/iris/versions/2`",
    );
    error(
        "/v1/models/iris/history?alias=Prod",
        400,
        "invalid_path",
        "`Prod` is not an alias",
    );
    error("/v1/nothing", 404, "not_found", "no such endpoint");
    let response = reqwest::blocking::Client::new()
        .post(server.url("/v1/models"))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().unwrap();
    assert_eq!(body["code"], json!("method_not_allowed"));
}

#[test]
fn an_alias_moves_only_with_the_token_and_the_move_is_audited() {
    let dir = filled();
    let server = TestServer::start(dir.path(), Some("s3cret-token"));
    let path = "/v1/models/iris/aliases/production";
    let body = r#"{"version": 3, "reason": "beats v2 on the holdout"}"#;

    let (status, refused) = server.put(path, None, body);
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["code"], json!("unauthorized"));
    let response = reqwest::blocking::Client::new()
        .put(server.url(path))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer"
    );
    let (status, refused) = server.put(path, Some("Bearer wrong"), body);
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["code"], json!("forbidden"));
    let (status, _) = server.put(path, Some("Basic czNjcmV0LXRva2Vu"), body);
    assert_eq!(status, 401);
    assert_eq!(
        server.ok("/v1/models/iris/aliases/production")["version"],
        json!(2),
        "a refused move moves nothing"
    );

    let (status, moved) = server.put(path, Some("Bearer s3cret-token"), body);
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["from_version"], json!(2));
    assert_eq!(moved["to_version"], json!(3));
    // No project here to lay the version out for: said, and the move is made all the same.
    assert!(moved["serving_warning"].is_string(), "{moved}");
    assert_eq!(
        server.ok("/v1/models/iris/aliases/production")["version"],
        json!(3)
    );
    // A new alias, without a reason.
    let (status, moved) = server.put(
        "/v1/models/iris/aliases/staging",
        Some("Bearer s3cret-token"),
        r#"{"version": 1}"#,
    );
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["from_version"], json!(null));

    let history = server.ok("/v1/models/iris/history?alias=production");
    let last = history["moves"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["command"], json!("alias"));
    assert_eq!(last["from_version"], json!(2));
    assert_eq!(last["to_version"], json!(3));
    assert_eq!(last["reason"], json!("beats v2 on the holdout"));
    let staging = server.ok("/v1/models/iris/history?alias=staging");
    assert_eq!(
        staging["moves"][0]["reason"],
        json!("moved through the registry API")
    );

    let token = Some("Bearer s3cret-token");
    let refused = |path: &str, body: &str, status: u16, code: &str, message: &str| {
        let (got, answer) = server.put(path, token, body);
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert_eq!(answer["code"], json!(code), "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "{answer}"
        );
    };
    refused(
        "/v1/models/iris/aliases/latest",
        r#"{"version": 1}"#,
        400,
        "invalid_path",
        "`latest` moves by itself",
    );
    refused(
        "/v1/models/iris/aliases/Prod",
        r#"{"version": 1}"#,
        400,
        "invalid_path",
        "`Prod` cannot be an alias",
    );
    refused(
        path,
        r#"{"version": 9}"#,
        404,
        "model_version_not_found",
        "model `iris` has no version 9",
    );
    refused(
        "/v1/models/nope/aliases/production",
        r#"{"version": 1}"#,
        404,
        "model_not_found",
        "no version of model `nope` is registered",
    );
    refused(path, "{\"version\": ", 400, "bad_json", "alias move");
    refused(
        path,
        r#"{"version": 1, "why": "x"}"#,
        400,
        "bad_json",
        "unknown field `why`",
    );
    refused(
        path,
        r#"{"version": 0}"#,
        400,
        "invalid_request",
        "versions start at 1",
    );
    assert_eq!(
        server.ok("/v1/models/iris/aliases/production")["version"],
        json!(3)
    );
}

#[test]
fn without_a_configured_token_no_alias_moves() {
    let dir = filled();
    let server = TestServer::start(dir.path(), None);
    let (status, refused) = server.put(
        "/v1/models/iris/aliases/production",
        Some("Bearer anything"),
        r#"{"version": 3}"#,
    );
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("set `KILN_REGISTRY_TOKEN`"),
        "{refused}"
    );
    assert_eq!(
        server.ok("/v1/models/iris/aliases/production")["version"],
        json!(2)
    );
}

#[test]
fn reads_are_answered_while_registrations_go_on() {
    let dir = filled();
    let server = TestServer::start(dir.path(), None);
    let root = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let mut registry = Registry::open(&root.join(".kiln/kiln.db")).unwrap();
        register(&mut registry, "churn", 20);
    });
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let url = server.url("/v1/models");
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let response = reqwest::blocking::get(&url).unwrap();
                    assert_eq!(response.status().as_u16(), 200);
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(server.ok("/v1/models/churn")["latest_version"], json!(20));
}
