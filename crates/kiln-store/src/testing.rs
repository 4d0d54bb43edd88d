//! The test harness's S3-compatible server: a real `moto` server on loopback, shared by the
//! tests of one process while any of them holds it, and stopped (killed by pid) when the last
//! one drops it. `KILN_TEST_S3_ENDPOINT` names a server started outside (CI starts one from
//! `.ci/services/moto.sh`); otherwise `$KILN_TEST_VENV/bin/moto_server` is started on a free
//! port. Tests never skip: without either, they fail saying what is missing. Each test takes a
//! bucket of its own ([`S3TestServer::new_bucket`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::S3Config;

/// The endpoint of a server started outside the tests, e.g. `http://127.0.0.1:5123`.
pub const KILN_TEST_S3_ENDPOINT: &str = "KILN_TEST_S3_ENDPOINT";

/// A running S3-compatible server (see the module documentation).
#[derive(Debug)]
pub struct S3TestServer {
    endpoint: String,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
}

static SHARED: Mutex<Weak<S3TestServer>> = Mutex::new(Weak::new());
static BUCKETS: AtomicU64 = AtomicU64::new(0);

/// The shared server, started if none is running.
pub fn s3_test_server() -> Arc<S3TestServer> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return server;
    }
    let server = Arc::new(S3TestServer::start());
    *shared = Arc::downgrade(&server);
    server
}

impl S3TestServer {
    fn start() -> S3TestServer {
        if let Some(endpoint) = std::env::var(KILN_TEST_S3_ENDPOINT)
            .ok()
            .filter(|e| !e.is_empty())
        {
            return S3TestServer {
                endpoint: endpoint.trim_end_matches('/').to_string(),
                child: None,
                _data: None,
            };
        }
        let venv = std::env::var_os("KILN_TEST_VENV").unwrap_or_else(|| {
            panic!(
                "the S3 tests need a moto server: set `{KILN_TEST_S3_ENDPOINT}`, or \
                 `KILN_TEST_VENV` to the test virtualenv (`bash .ci/setup` installs moto[server])"
            )
        });
        let program = PathBuf::from(venv).join("bin/moto_server");
        let data = tempfile::tempdir().expect("a temporary folder for moto");
        let log_path = data.path().join("moto.log");
        let log = std::fs::File::create(&log_path).expect("moto's log file");
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(data.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("moto's log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", program.display()));
        let mut server = S3TestServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            _data: Some(data),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("moto did not start on port {port} ({exited:?}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Creates a bucket no other test uses and returns its name.
    pub fn new_bucket(&self) -> String {
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let bucket = format!("kiln-test-{}-{n}-{nanos}", std::process::id());
        let response = self.request("PUT", &format!("/{bucket}"), b"");
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "creating bucket `{bucket}` failed:\n{response}"
        );
        bucket
    }

    /// The configuration of a store in `bucket` under `prefix`.
    pub fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".to_string(),
            access_key_id: Some("testing".to_string()),
            secret_access_key: Some("testing".to_string()),
            session_token: None,
            allow_http: true,
        }
    }

    /// The environment that points Kiln at `bucket` (for tests of the binary).
    pub fn env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        [
            ("KILN_STORE_URL", format!("s3://{bucket}/{prefix}")),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Writes `bytes` under `key` in `bucket` directly, past Kiln's checks (to plant a corrupt
    /// blob, say).
    pub fn put_raw(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let store = crate::S3Store::open(&self.config(bucket, "")).expect("open the test bucket");
        store
            .put_key(key, bytes)
            .unwrap_or_else(|e| panic!("writing `{key}` failed: {e}"));
    }

    /// One plain HTTP/1.1 request; the whole response.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> String {
        let authority = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(authority).expect("connect to the S3 test server");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a read timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .and_then(|()| stream.write_all(body))
        .expect("send a request to the S3 test server");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}
