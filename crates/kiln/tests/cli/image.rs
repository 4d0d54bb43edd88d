//! `kiln image build` on the trained iris example: skopeo and umoci read the image back
//! (labels, non-root user, entrypoint, files); a rebuild gives the same digest; a second version
//! reuses the base layer; the SBOM is attached with the image as its subject; podman (runc)
//! runs the image with a read-only root filesystem, it answers a prediction, and SIGTERM drains
//! it to a clean exit. Also bad references.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestProject, assert_refused, copy_tree, kiln_command, stderr, stdout};
use crate::serve::{free_port, post};

/// The iris example in a temporary folder, run once (version 1 registered).
fn trained_iris() -> TestProject {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/iris");
    let dir = TestProject::empty();
    copy_tree(
        &source,
        dir.root(),
        &[".kiln", "data", "model.onnx", "metrics.json", "__pycache__"],
    );
    let run = kiln_command(dir.root()).arg("run").output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    dir
}

/// `kiln image build ARGS --json` in `dir`: what it built.
fn build(dir: &Path, args: &[&str]) -> Value {
    let output = kiln_command(dir)
        .args(["image", "build"])
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        stderr(&output)
    );
    output
}

fn json_of(program: &str, args: &[&str]) -> Value {
    serde_json::from_slice(&run(program, args).stdout).unwrap()
}

#[test]
fn kiln_image_build_writes_an_image_that_skopeo_umoci_and_podman_read_and_run() {
    let iris = trained_iris();
    let v1 = build(iris.root(), &["iris@v1"]);
    let layout = iris.root().join(".kiln/images");
    assert_eq!(v1["reference"], "iris:v1");
    assert_eq!(v1["layers"][0]["role"], "base");
    assert_eq!(v1["layers"][1]["role"], "model");
    assert!(v1["size"].as_u64().unwrap() < 80 << 20, "{v1}");
    let image = format!("oci:{}:iris:v1", layout.display());

    // skopeo reads the manifest and config: labels, user, entrypoint, port.
    let inspected = json_of("skopeo", &["inspect", &image]);
    assert_eq!(inspected["Digest"], v1["manifest_digest"]);
    let labels = &inspected["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "v1");
    assert_eq!(labels["org.opencontainers.image.title"], "iris");
    assert_eq!(labels["dev.kiln.model"], "iris");
    let registered = crate::models::json_of(&iris, &["models", "show", "iris@v1", "--json"]);
    let registered_at = registered["registered_at_ms"].as_i64().unwrap();
    let created = labels["org.opencontainers.image.created"].as_str().unwrap();
    let created_ms = created.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    assert_eq!(created_ms / 1000, registered_at / 1000, "{created}");
    let config = json_of("skopeo", &["inspect", "--config", &image]);
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
    let entrypoint = config["config"]["Entrypoint"].as_array().unwrap();
    assert_eq!(
        entrypoint[..2],
        [json!("/usr/local/bin/kiln"), json!("serve")]
    );
    assert!(
        entrypoint.contains(&json!("iris=/model/model.onnx")),
        "{config}"
    );

    // umoci unpacks the layers: the server, ONNX Runtime, the loader, the user, the model.
    let unpacked = tempfile::tempdir().unwrap();
    let rootfs = unpacked.path().join("rootfs");
    run(
        "umoci",
        &[
            "raw",
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:iris:v1", layout.display()),
            rootfs.to_str().unwrap(),
        ],
    );
    for file in [
        "usr/local/bin/kiln",
        "model/model.onnx",
        "model/VERSION",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(rootfs.join(file).is_file(), "`{file}` is not in the image");
    }
    assert!(
        std::fs::read_dir(rootfs.join("opt/kiln/lib"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("libonnxruntime.so"))
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("kiln:x:65532:65532"), "{passwd}");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("model/VERSION")).unwrap(),
        "1\n"
    );
    drop(unpacked);

    // The same version again: the same digest, nothing written.
    let again = build(iris.root(), &["iris@v1"]);
    assert_eq!(again["manifest_digest"], v1["manifest_digest"]);
    assert!(
        again["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["reused"] == true)
    );

    // A second version: the base is reused, only the model layer is new.
    let second = kiln_command(iris.root())
        .args(["run", "--set", "train.C=0.5"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let v2 = build(iris.root(), &["iris@latest"]);
    assert_eq!(v2["reference"], "iris:v2");
    assert_eq!(v2["layers"][0]["digest"], v1["layers"][0]["digest"]);
    assert_eq!(v2["layers"][0]["reused"], true);
    assert_ne!(v2["layers"][1]["digest"], v1["layers"][1]["digest"]);
    assert_eq!(v2["layers"][1]["reused"], false);

    // The SBOM: listed in the index, its subject the image, SPDX naming what the image holds.
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let sbom = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == v1["sbom_digest"])
        .expect("the SBOM manifest is in index.json");
    assert_eq!(sbom["artifactType"], "application/spdx+json");
    let blob = |digest: &Value| -> Value {
        let hex = digest.as_str().unwrap().trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let manifest = blob(&v1["sbom_digest"]);
    assert_eq!(manifest["subject"]["digest"], v1["manifest_digest"]);
    let document = blob(&manifest["layers"][0]["digest"]);
    let packages: Vec<&str> = document["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["kiln", "onnxruntime", "libc6", "libstdc++6"] {
        assert!(packages.contains(&name), "{name} not in {packages:?}");
    }

    // Another name in a layout of its own.
    let elsewhere = iris.root().join("out");
    let tagged = build(
        iris.root(),
        &[
            "iris@v1",
            "--output",
            elsewhere.to_str().unwrap(),
            "--tag",
            "team/iris:prod",
        ],
    );
    assert_eq!(tagged["reference"], "team/iris:prod");
    assert_eq!(tagged["layers"][0]["digest"], v1["layers"][0]["digest"]);
    assert!(elsewhere.join("oci-layout").is_file());
    assert_refused(
        &iris,
        &["image", "build", "iris@v1", "--tag", "iris v1"],
        "not a valid image reference name",
    );

    // podman runs v2 with a read-only root filesystem: a prediction, then SIGTERM.
    let (podman, port) = start_in_podman(iris.root(), "iris@v2", "iris:v2");
    let (status, body) = post(
        port,
        "/v2/models/iris/infer",
        &json!({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}),
    );
    assert_eq!(status, 200, "{body}");
    let labels = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .expect("a label output");
    assert_eq!(labels["data"], json!([0, 2]), "{body}");
    let metadata: Value = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/models/iris"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(metadata["versions"], json!(["2"]), "{metadata}");
    stop_cleanly(&podman);

    // A version whose content is gone from the store is an error saying so, not an image.
    let digest = registered["artifact_digest"].as_str().unwrap();
    let state = iris.root().join(".kiln");
    std::fs::remove_file(
        state
            .join("store/objects")
            .join(&digest[..2])
            .join(&digest[2..]),
    )
    .unwrap();
    for folder in ["artifacts", "versions", "serving"] {
        std::fs::remove_dir_all(state.join(folder)).unwrap();
    }
    let gone = iris.kiln(&["image", "build", "iris@v1"]);
    assert_eq!(gone.status.code(), Some(1), "{}", stderr(&gone));
    assert!(
        stderr(&gone).contains("is missing from the store"),
        "{}",
        stderr(&gone)
    );
}

/// Builds `version` listening on a free port into a layout of its own, runs it with podman
/// (runc, read-only root filesystem, host network) and waits until it is ready.
fn start_in_podman(project: &Path, version: &str, reference: &str) -> (Podman, u16) {
    let port = free_port();
    let layout = project.join("podman-layout");
    build(
        project,
        &[
            version,
            "--output",
            layout.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ],
    );
    let podman = Podman::new();
    podman.copy_in(
        &format!("oci:{}:{reference}", layout.display()),
        &format!("localhost/{reference}"),
    );
    let started = podman.run(&[
        "run",
        "-d",
        "--name",
        &podman.container,
        "--read-only",
        "--network",
        "host",
        &format!("localhost/{reference}"),
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/health/ready"))
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return (podman, port);
        }
        assert!(
            Instant::now() < deadline,
            "the container did not get ready: {}",
            podman.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `podman stop` sends the image's stop signal (SIGTERM): the server drains and exits 0. The
/// server ran as the image's non-root user.
pub(crate) fn stop_cleanly(podman: &Podman) {
    let top = podman.run(&["top", &podman.container, "user", "args"]);
    let top = stdout(&top);
    assert!(
        top.contains("kiln ") && top.contains("/usr/local/bin/kiln serve"),
        "{top}"
    );
    let stopped = podman.run(&["stop", "-t", "20", &podman.container]);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let exit_code = podman.run(&[
        "inspect",
        &podman.container,
        "--format",
        "{{.State.ExitCode}}",
    ]);
    assert_eq!(stdout(&exit_code).trim(), "0", "{}", podman.logs());
    assert!(podman.logs().contains("draining"), "{}", podman.logs());
}

/// podman with a root of its own in a temporary folder, runc and explicit ulimits (the sandbox
/// lacks CAP_SYS_RESOURCE); the container is removed when dropped.
pub(crate) struct Podman {
    dir: tempfile::TempDir,
    pub(crate) container: String,
}

impl Podman {
    pub(crate) fn new() -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let limits = run("bash", &["-c", "ulimit -Hn; ulimit -Hu"]);
        let limits = stdout(&limits);
        let mut limits = limits
            .lines()
            .map(|l| l.trim().parse::<u64>().unwrap_or(1024));
        let files = limits.next().unwrap_or(1024);
        let processes = limits.next().unwrap_or(4096).min(32768);
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={files}:{files}\", \"nproc={processes}:{processes}\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
            ),
        )
        .unwrap();
        let container = format!("kiln-image-test-{}", std::process::id());
        Podman { dir, container }
    }

    fn storage(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("root"),
            self.dir.path().join("runroot"),
        )
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let (root, runroot) = self.storage();
        Command::new("podman")
            .arg("--root")
            .arg(root)
            .arg("--runroot")
            .arg(runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output()
            .unwrap()
    }

    /// Copies `image` into this podman's storage as `name`.
    fn copy_in(&self, image: &str, name: &str) {
        let (root, runroot) = self.storage();
        run(
            "skopeo",
            &[
                "copy",
                "-q",
                image,
                &format!(
                    "containers-storage:[vfs@{}+{}]{name}",
                    root.display(),
                    runroot.display()
                ),
            ],
        );
    }

    pub(crate) fn logs(&self) -> String {
        let output = self.run(&["logs", &self.container]);
        format!("{}{}", stdout(&output), stderr(&output))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-t", "0", &self.container]);
    }
}

/// A `predict.py` model with a Python environment of its own (numpy): its image carries the
/// interpreter, its standard library and the virtualenv, and answers from podman.
#[test]
fn a_python_model_image_serves_from_its_virtualenv() {
    let project = TestProject::new(
        "models:\n  m:\n    python: {requirements: requirements.txt}\n    stages:\n      package: {cmd: 'mkdir -p model && cp predict.py model/ && cp score.json metrics.json', deps: [predict.py, score.json], outs: [model], metrics: [metrics.json]}\n    artifact: model\n    example: example.csv\n",
    );
    project.write("requirements.txt", "numpy\n");
    project.write(
        "predict.py",
        &format!("import numpy\n{}", crate::models::adder(10)),
    );
    project.write("example.csv", "a,b\n1,2\n");
    project.write("score.json", "{\"accuracy\": 1}");
    let run = project.kiln(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let built = build(project.root(), &["m@v1"]);
    assert!(
        built["layers"][0]["description"]
            .as_str()
            .unwrap()
            .contains("virtualenv"),
        "{built}"
    );
    let (podman, port) = start_in_podman(project.root(), "m@v1", "m:v1");
    let (status, body) = post(port, "/v2/models/m/infer", &crate::models::sum_request());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([13.0]), "{body}");
    stop_cleanly(&podman);
}

#[test]
fn kiln_image_build_refuses_what_it_cannot_build() {
    let project = crate::models::project();
    crate::models::green(&project, 0.9);
    assert_refused(&project, &["image", "build", "nosuch@v1"], "nosuch");
    assert_refused(&project, &["image", "build", "m@v9"], "no version 9");
    assert_refused(&project, &["image", "build", "m@@"], "m@@");
    // A `predict.py` model with no Python environment of its own has none to put in an image.
    assert_refused(
        &project,
        &["image", "build", "m@v1"],
        "declares no Python environment",
    );
}
