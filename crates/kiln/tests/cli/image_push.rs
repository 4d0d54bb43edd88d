//! `kiln image push` for real: the iris example trained in a git checkout, its version built
//! and pushed to `docker-registry` on loopback (tags, the digest recorded on the version, a
//! re-push that uploads nothing), read back by `skopeo`, then pulled by digest and run by
//! `podman` (runc), answering a prediction and draining on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_image::testing::TestRegistry;
use serde_json::{Value, json};

use crate::common::{copy_tree, kiln_command, stderr, stdout};
use crate::image::{Podman, stop_cleanly};
use crate::serve::{free_port, post};

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=Kiln Test",
            "-c",
            "user.email=test@kiln.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// The iris example, committed, run green: `iris@v1` registered from that commit.
fn trained_iris(dir: &Path) -> String {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/iris");
    copy_tree(
        &source,
        dir,
        &[".kiln", "data", "model.onnx", "metrics.json", "__pycache__"],
    );
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "iris"]);
    let run = kiln_command(dir).arg("run").output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8(head.stdout).unwrap().trim().to_owned()
}

fn push(dir: &Path, destination: &str) -> Value {
    let output = kiln_command(dir)
        .args(["image", "push", "iris@v1", destination, "--json"])
        .env_remove("KILN_REGISTRY_USERNAME")
        .env_remove("KILN_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", dir.join("no-docker-config"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).unwrap()
}

#[test]
fn a_version_is_pushed_recorded_and_runs_from_the_registry_in_podman() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let commit = trained_iris(dir.path());
    let destination = format!("{}/kiln/iris", registry.address);

    let first = push(dir.path(), &destination);
    let short = &commit[..7];
    assert_eq!(first["repository"], json!(destination));
    assert_eq!(first["tags"], json!(["v1", short, "latest"]));
    assert_eq!(first["blobs_skipped"], json!(0));
    let digest = first["digest"].as_str().unwrap().to_owned();

    // Recorded on the version.
    let shown = kiln_command(dir.path())
        .args(["models", "show", "iris@v1", "--json"])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(shown["images"][0]["repository"], json!(destination));
    assert_eq!(shown["images"][0]["digest"], json!(digest));
    assert_eq!(shown["images"][0]["tags"], json!(["v1", short, "latest"]));

    let text = kiln_command(dir.path())
        .args(["models", "show", "iris@v1"])
        .output()
        .unwrap();
    assert!(
        stdout(&text).contains(&format!(
            "image       {destination}@{digest} (v1, {short}, latest), pushed "
        )),
        "{}",
        stdout(&text)
    );

    // The registry has it under every tag.
    let inspected = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{destination}:{short}"))
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["Digest"], json!(digest));
    for tag in ["v1", short, "latest"] {
        assert!(
            inspected["RepoTags"]
                .as_array()
                .unwrap()
                .contains(&json!(tag)),
            "{inspected}"
        );
    }

    // Pushed again: every blob is there already.
    let again = push(dir.path(), &destination);
    assert_eq!(again["digest"], json!(digest));
    assert_eq!(again["blobs_pushed"], json!(0));
    assert_eq!(again["bytes"], json!(0));

    run_in_podman(&format!("{destination}@{digest}"));

    // Mistakes: a destination without a registry (exit code 2), a registry that is not there.
    let refused = kiln_command(dir.path())
        .args(["image", "push", "iris@v1", "kiln/iris"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let text = stderr(&refused);
    assert!(
        text.contains("error: invalid destination `kiln/iris`: it names no registry"),
        "{text}"
    );
    assert!(text.contains("hint: give the registry's host"), "{text}");
    let nobody = format!("127.0.0.1:{}/kiln/iris", free_port());
    let unreachable = kiln_command(dir.path())
        .args(["image", "push", "iris@v1", &nobody])
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(1),
        "{}",
        stderr(&unreachable)
    );
    let text = stderr(&unreachable);
    assert!(
        text.contains(&format!(
            "error: cannot reach the registry `{}` over plain HTTP",
            &nobody[..nobody.find('/').unwrap()]
        )),
        "{text}"
    );
}

/// Pulls `image` by digest with podman (runc, a root of its own) and runs it read-only on the
/// host's network, on a free port instead of the image's 8080; it answers a prediction, and
/// SIGTERM drains it to exit code 0.
fn run_in_podman(image: &str) {
    let podman = Podman::new();
    let pulled = podman.run(&["pull", "--quiet", "--tls-verify=false", image]);
    assert!(pulled.status.success(), "{}", stderr(&pulled));
    let inspected = podman.run(&["image", "inspect", image]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let mut entrypoint: Vec<String> =
        serde_json::from_value(inspected[0]["Config"]["Entrypoint"].clone()).unwrap();
    let port = free_port();
    let at = entrypoint.iter().position(|arg| arg == "--port").unwrap();
    entrypoint[at + 1] = port.to_string();
    let entrypoint = serde_json::to_string(&entrypoint).unwrap();
    let started = podman.run(&[
        "run",
        "-d",
        "--name",
        &podman.container,
        "--read-only",
        "--network",
        "host",
        "--entrypoint",
        &entrypoint,
        image,
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/health/ready"))
        .is_ok_and(|response| response.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the container did not get ready: {}",
            podman.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = post(
        port,
        "/v2/models/iris/infer",
        &json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [6.7, 3.0, 5.2, 2.3]}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], json!("iris"));
    stop_cleanly(&podman);
}
