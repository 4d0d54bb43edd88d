//! `kiln serve` as a process: the URL line, start-up time, a `predict.py` model, SIGTERM drain,
//! and a missing ONNX Runtime explained. (The protocols themselves are tested in kiln-serve.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The python with scikit-learn and onnxruntime (`KILN_TEST_PYTHON`, else `python3`).
pub fn test_python() -> PathBuf {
    std::env::var_os("KILN_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kiln serve ARGS` in `dir`, logging at info level, stderr piped.
pub fn spawn_serve(dir: &Path, args: &[&str]) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env("KILN_CACHE_DIR", crate::common::shared_cache_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads stderr until the "listening" line; returns it. The rest of stderr is drained in the
/// background so that the server never blocks on a full pipe.
pub fn wait_listening(child: &mut Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("listening on") {
            std::thread::spawn(move || for _ in lines {});
            return line;
        }
        seen.push(line);
    }
    panic!("server exited before listening:\n{}", seen.join("\n"));
}

pub fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .json(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    child.wait().unwrap()
}

const SLOW_MODEL: &str = r#"import os
import time

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "outputs": [{"name": "sum", "datatype": "FP64", "shape": [-1]}],
}


def predict(inputs):
    x = inputs["x"]
    if (x == 999).any():
        open(os.path.join(os.path.dirname(__file__), "slow-request-started"), "w").close()
        time.sleep(1.5)
    return {"sum": x.sum(axis=1) + 0.5}
"#;

#[test]
fn a_predict_py_model_serves_and_sigterm_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("slow")).unwrap();
    std::fs::write(dir.path().join("slow/predict.py"), SLOW_MODEL).unwrap();
    let port = free_port();
    let port_text = port.to_string();
    let python = test_python();
    let mut child = spawn_serve(
        dir.path(),
        &[
            "slow",
            "--port",
            &port_text,
            "--workers",
            "1",
            "--python",
            python.to_str().unwrap(),
        ],
    );
    let line = wait_listening(&mut child);
    assert!(line.contains(&format!("http://127.0.0.1:{port}")), "{line}");
    assert_eq!(
        post(port, "/invocations", &json!({"inputs": [[1, 2]]})),
        (200, json!({"predictions": [3.5]}))
    );

    // SIGTERM while a slow request is in flight: it completes, then the process exits 0.
    let request =
        std::thread::spawn(move || post(port, "/invocations", &json!({"inputs": [[999, 1]]})));
    let started = dir.path().join("slow/slow-request-started");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request never reached the model"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exit = terminate(&mut child);
    assert_eq!(
        request.join().unwrap(),
        (200, json!({"predictions": [1000.5]}))
    );
    assert!(exit.success(), "exit status {exit}");
}

#[test]
fn a_missing_onnx_runtime_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model.onnx"),
        b"not read: the runtime is looked for first",
    )
    .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .args([
            "serve",
            "model.onnx",
            "--port",
            "0",
            "--python",
            "/nonexistent/python",
        ])
        .current_dir(dir.path())
        .env("PATH", empty.path())
        .env("KILN_CACHE_DIR", empty.path().join("cache"))
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("KILN_PYTHON")
        .env_remove("VIRTUAL_ENV")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot find the onnx runtime library"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint:")
            && stderr.contains("ORT_DYLIB_PATH")
            && stderr.contains("pip install onnxruntime"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_model_name_says_what_is_wrong() {
    let project = crate::common::TestProject::new(
        "models:\n  m:\n    stages:\n      a: {cmd: echo > a.onnx, outs: [a.onnx]}\n    artifact: a.onnx\n",
    );
    let output = project.kiln(&["serve", "nope"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        crate::common::stderr(&output).contains("no model `nope` in this project (models: m)"),
        "{}",
        crate::common::stderr(&output)
    );
    let output = project.kiln(&["serve", "m"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        crate::common::stderr(&output).contains(
            "no version of model `m` is registered\nhint: a green `kiln run m` registers its first version"
        ),
        "{}",
        crate::common::stderr(&output)
    );
}

/// Exports a LogisticRegression on iris with skl2onnx into `path`.
fn export_onnx_model(path: &Path) {
    let script = format!(
        "from sklearn.datasets import load_iris\nfrom sklearn.linear_model import LogisticRegression\nfrom skl2onnx import to_onnx\nX, y = load_iris(return_X_y=True)\nm = LogisticRegression(max_iter=500).fit(X.astype('float32'), y)\nopen({:?}, 'wb').write(to_onnx(m, X[:1].astype('float32'), options={{'zipmap': False}}).SerializeToString())\n",
        path.display().to_string()
    );
    let status = Command::new(test_python())
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "exporting the test model failed");
}

#[test]
fn onnx_runtime_is_installed_once_into_the_cache_when_no_python_has_it() {
    let dir = tempfile::tempdir().unwrap();
    export_onnx_model(&dir.path().join("model.onnx"));
    // A python without onnxruntime, first on PATH; uv (when there is one) stays reachable.
    let bare = dir.path().join("bare-python");
    assert!(
        Command::new(test_python())
            .args(["-m", "venv"])
            .arg(&bare)
            .status()
            .unwrap()
            .success()
    );
    let mut path = vec![bare.join("bin")];
    if let Some(uv) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("uv"))
            .find(|uv| uv.is_file())
    }) {
        path.push(uv.parent().unwrap().to_path_buf());
    }
    path.extend([PathBuf::from("/usr/bin"), PathBuf::from("/bin")]);
    let port = free_port();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .args(["serve", "model.onnx", "--port", &port.to_string()])
        .current_dir(dir.path())
        .env("PATH", std::env::join_paths(path).unwrap())
        .env("KILN_CACHE_DIR", dir.path().join("cache"))
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("KILN_PYTHON")
        .env_remove("VIRTUAL_ENV")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&mut child);
    let (status, body) = post(
        port,
        "/invocations",
        &json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(terminate(&mut child).success());
    let runtime = std::fs::read_dir(dir.path().join("cache/envs"))
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(runtime, 1, "one managed runtime environment");
}

#[test]
fn the_served_artifact_is_the_green_runs_even_after_a_forced_failing_rerun() {
    let project = crate::common::TestProject::new(
        "models:\n  m:\n    stages:\n      train: {cmd: 'mkdir -p model && cp predict.py model/ && date +%s%N > model/stamp && cp score.json metrics.json', deps: [predict.py], outs: [model], metrics: [metrics.json]}\n    artifact: model\n    gates: [\"accuracy >= 0.9\"]\n",
    );
    project.write("predict.py", "def predict(inputs):\n    return inputs\n");
    project.write("score.json", r#"{"accuracy": 0.95}"#);
    let first = project.kiln(&["run"]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        crate::common::stderr(&first)
    );
    let green = project.read("model/stamp");
    assert_eq!(project.read(".kiln/serving/m/model/stamp"), green);
    assert_eq!(project.read(".kiln/serving/m@latest/model/stamp"), green);
    // Same inputs, forced: a new model under the same stage-cache key, which fails its gate.
    project.write("score.json", r#"{"accuracy": 0.5}"#);
    assert_eq!(project.kiln(&["run", "--force"]).status.code(), Some(4));
    assert_ne!(project.read("model/stamp"), green);
    std::fs::remove_dir_all(project.path(".kiln/serving")).unwrap();
    std::fs::remove_dir_all(project.path(".kiln/artifacts")).unwrap();
    let output = project.kiln(&["serve", "m", "--python", "/nonexistent/python3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        crate::common::stderr(&output).contains("serving `m@latest`: version 1 of `m` (run 1,"),
        "{}",
        crate::common::stderr(&output)
    );
    assert_eq!(project.read(".kiln/serving/m@latest/model/stamp"), green);
}
