//! Shared fixtures: the test python, models generated once per run, in-process servers, HTTP helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kiln_serve::{ModelConfig, Server, ServerConfig};
use serde_json::Value;

/// The python with scikit-learn, skl2onnx, onnxruntime and tritonclient (`KILN_TEST_PYTHON`, else `python3`).
pub fn python() -> PathBuf {
    std::env::var_os("KILN_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Runs a python script, panicking with its output when it fails.
pub fn run_python(args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(python())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the test python `{}` ({e}); set KILN_TEST_PYTHON",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "python {:?} failed:\n{}\n{}",
        args,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A directory with `iris_lr.onnx`, `iris_lr_nozipmap.onnx`, `iris_rf.onnx`, `diabetes_rf.onnx`,
/// `expected.json` and the `predict.py` models, generated once per test run.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/make_models.py");
        run_python(&[script.as_os_str(), dir.path().as_os_str()]);
        write_python_models(dir.path());
        dir
    })
    .path()
}

/// A directory with `mlflow_lr/` (an MLflow model saved by `mlflow.sklearn.save_model`), `py_dataframe/`
/// and `py_records/` (predict.py models taking a DataFrame and records) and their `expected.json`.
pub fn table_fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/make_table_models.py");
        run_python(&[script.as_os_str(), dir.path().as_os_str()]);
        dir
    })
    .path()
}

pub fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

fn write_python_models(dir: &Path) {
    let model = dir.join("py_model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("predict.py"),
        r#"import os
import time

import numpy as np

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "outputs": [{"name": "sum", "datatype": "FP64", "shape": [-1]}],
    "feature_names": ["a", "b"],
}
OFFSET = 0.0


def load(model_dir):
    global OFFSET
    with open(os.path.join(model_dir, "offset.txt")) as f:
        OFFSET = float(f.read())


def predict(inputs):
    x = inputs["x"]
    if (x == 666).any():
        os._exit(3)  # simulates a crash (segfault, OOM kill) in the model
    if (x == 13).any():
        raise ValueError("unlucky input")
    if (x == 999).any():
        time.sleep(1.5)
    print("predict called")  # must not corrupt the worker protocol
    return {"sum": x.sum(axis=1) + OFFSET}
"#,
    )
    .unwrap();
    std::fs::write(model.join("offset.txt"), "0.5").unwrap();
}

/// Everything the servers of this test binary log (through `tracing`), from the first call on.
pub fn server_log() -> String {
    static LOG: OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogWriter(std::sync::Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buffer
    });
    String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A server running on its own runtime thread; stopped (and drained) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: ServerConfig) -> TestServer {
        Self::try_start(config)
            .unwrap_or_else(|e| panic!("server failed to start: {}", kiln_serve::error_chain(&e)))
    }

    pub fn try_start(config: ServerConfig) -> Result<TestServer, kiln_serve::Error> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, started) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                match Server::start(config).await {
                    Ok(server) => {
                        let _ = ready.send(Ok(server.local_addr()));
                        server
                            .run(async move {
                                let _ = stopped.await;
                            })
                            .await
                            .unwrap();
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            });
        });
        let addr = started.recv().expect("server thread died")?;
        Ok(TestServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = client()
            .post(self.url(path))
            .json(body)
            .send()
            .expect("request failed");
        read(response)
    }

    pub fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut request = client().post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        read(request.send().expect("request failed"))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let response = client().get(self.url(path)).send().expect("request failed");
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
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

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn read(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("response is not JSON (status {status}): {text}"));
    (status, value)
}

/// A config on a free loopback port with the test python, for the given `(name, path)` models.
pub fn config(models: &[(&str, PathBuf)]) -> ServerConfig {
    let models = models
        .iter()
        .map(|(name, path)| ModelConfig {
            name: name.to_string(),
            path: path.clone(),
            version_file: None,
        })
        .collect();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), models);
    config.python = Some(python());
    config.watch_interval = None;
    config.python_workers = 2;
    config.onnx_sessions = 2;
    config
}

/// The standard ONNX server: `lr` (ZipMap), `lrn` (no ZipMap), `rf`, `reg`.
pub fn onnx_server() -> TestServer {
    let f = fixtures();
    TestServer::start(config(&[
        ("lr", f.join("iris_lr.onnx")),
        ("lrn", f.join("iris_lr_nozipmap.onnx")),
        ("rf", f.join("iris_rf.onnx")),
        ("reg", f.join("diabetes_rf.onnx")),
    ]))
}

pub fn assert_close(got: &Value, want: &Value, tolerance: f64) {
    let (g, w) = (
        got.as_array().expect("array"),
        want.as_array().expect("array"),
    );
    assert_eq!(g.len(), w.len(), "{got} vs {want}");
    for (a, b) in g.iter().zip(w) {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!(
            (a - b).abs() <= tolerance * b.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}
