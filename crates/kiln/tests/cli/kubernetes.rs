//! `kiln deploy` to a Kubernetes environment, end to end, on the real control plane of
//! `KILN_TEST_KUBECONFIG` and a real registry: the trained iris example with `production` on
//! Kubernetes. `--dry-run -o yaml` prints objects that pass `kubernetes-validate` and name the
//! image by digest; a deploy pushes the image (tags `v1`, digest recorded on the version),
//! applies the objects and waits until the pods are Ready (and a cluster that cannot be
//! reached stops it before the alias moves) (the stand-in kubelet makes them so);
//! `kiln ps` lists the deployment; a version whose pods crash-loop is rolled back: exit 6, the
//! reason, the alias back on v1 with `rollback` in its history, and v1's image in the cluster.

use std::path::Path;
use std::process::Command;

use kiln_deploy::kubernetes::testing::{Fate, TestCluster, kubeconfig};
use kiln_image::testing::TestRegistry;
use serde_json::Value;

use crate::common::{TestProject, copy_tree, kiln_command, stderr, stdout};

/// The iris example, trained once (v1), with `production` on Kubernetes in the test's
/// namespace and its images in `registry`.
fn iris_on_kubernetes(registry: &TestRegistry, cluster: &TestCluster) -> TestProject {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/iris");
    let dir = TestProject::empty();
    copy_tree(
        &source,
        dir.root(),
        &[".kiln", "data", "model.onnx", "metrics.json", "__pycache__"],
    );
    let file = dir.root().join("kiln.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let deploy = format!(
        "    image: {{repository: {}/kiln/iris}}\n    deploy:\n      staging: {{auto: false}}\n      production: {{target: k8s, namespace: {}, rollout_timeout: 10s}}\n",
        registry.address, cluster.namespace
    );
    std::fs::write(&file, format!("{}\n{deploy}", text.trim_end())).unwrap();
    let run = kiln_command(dir.root()).arg("run").output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    dir
}

/// `kiln ARGS` in `dir`, talking to the test cluster.
fn kiln(dir: &Path, args: &[&str]) -> std::process::Output {
    kiln_command(dir)
        .env("KUBECONFIG", kubeconfig())
        .args(args)
        .output()
        .unwrap()
}

fn json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}\n{}", stdout(output), stderr(output)))
}

/// The image the environment's Deployment runs.
fn deployed_image(cluster: &TestCluster) -> String {
    let deployment = cluster.deployment("iris-production").unwrap();
    deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

#[test]
fn kiln_deploy_rolls_out_to_kubernetes_and_rolls_a_crash_looping_version_back() {
    let registry = TestRegistry::start();
    let mut cluster = TestCluster::start("cli");
    // Version 2's pods crash; every other version's become Ready.
    cluster.kubelet(|pod| {
        let version = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("kiln.dev/version"))
            .cloned();
        if version.as_deref() == Some("2") {
            Fate::CrashLoop
        } else {
            Fate::Ready
        }
    });
    let iris = iris_on_kubernetes(&registry, &cluster);
    let repository = format!("{}/kiln/iris", registry.address);

    // --dry-run: the objects, valid for Kubernetes 1.28, naming the image by digest; nothing
    // pushed or applied.
    let dry = kiln(
        iris.root(),
        &[
            "deploy",
            "iris@v1",
            "--env",
            "production",
            "--dry-run",
            "-o",
            "yaml",
        ],
    );
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    let yaml = stdout(&dry);
    assert!(
        yaml.contains(&format!("image: {repository}@sha256:")),
        "{yaml}"
    );
    for kind in ["Deployment", "Service", "PodDisruptionBudget"] {
        assert!(yaml.contains(&format!("kind: {kind}")), "{yaml}");
    }
    let manifests = iris.root().join("manifests.yaml");
    std::fs::write(&manifests, &yaml).unwrap();
    let python = std::env::var("KILN_TEST_PYTHON").expect("KILN_TEST_PYTHON is set by .ci/run");
    let validated = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.28.0"])
        .arg(&manifests)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "{}{}",
        stdout(&validated),
        stderr(&validated)
    );
    let shown = json(&kiln(iris.root(), &["models", "show", "iris@v1", "--json"]));
    assert!(shown.get("images").is_none(), "nothing was pushed: {shown}");

    // A cluster that cannot be reached stops the deploy before the alias moves.
    let unreachable = kiln_command(iris.root())
        .env("KUBECONFIG", iris.root().join("no-such-kubeconfig"))
        .args(["deploy", "iris@v1", "--env", "production"])
        .output()
        .unwrap();
    assert_ne!(
        unreachable.status.code(),
        Some(0),
        "{}",
        stderr(&unreachable)
    );
    assert!(
        stderr(&unreachable).contains("kubeconfig"),
        "{}",
        stderr(&unreachable)
    );
    let shown = json(&kiln(iris.root(), &["models", "show", "iris@v1", "--json"]));
    assert_eq!(shown["aliases"], serde_json::json!(["latest"]), "{shown}");

    // A deploy: pushed, applied, Ready.
    let deployed = kiln(
        iris.root(),
        &["deploy", "iris@v1", "--env", "production", "--json"],
    );
    assert_eq!(deployed.status.code(), Some(0), "{}", stderr(&deployed));
    let report = json(&deployed);
    assert_eq!(report["outcome"], "served", "{report}");
    assert_eq!(report["deployment"]["target"], "kubernetes", "{report}");
    assert_eq!(report["deployment"]["version"], 1, "{report}");
    let said = stderr(&deployed);
    assert!(said.contains("pushing"), "{said}");
    let shown = json(&kiln(iris.root(), &["models", "show", "iris@v1", "--json"]));
    let digest = shown["images"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(
        shown["images"][0]["repository"],
        repository.as_str(),
        "{shown}"
    );
    assert_eq!(deployed_image(&cluster), format!("{repository}@{digest}"));
    let inspected = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{repository}:v1"))
        .output()
        .unwrap();
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    assert_eq!(json(&inspected)["Digest"], digest.as_str());
    // No environment tag: the alias may move back if the rollout fails; the tag would not.
    let environment_tag = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{repository}:production"))
        .output()
        .unwrap();
    assert!(
        !environment_tag.status.success(),
        "{}",
        stdout(&environment_tag)
    );

    // `kiln ps` lists it.
    let ps = json(&kiln(iris.root(), &["ps", "--json"]));
    let rows = ps["deployments"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|row| row["target"] == "kubernetes")
        .unwrap_or_else(|| panic!("{ps}"));
    assert_eq!(row["environment"], "production");
    assert_eq!(row["version"], 1);
    assert_eq!(row["health"], "ready", "{ps}");

    // Version 2 crash-loops: rolled back, and the alias with it.
    let run = kiln_command(iris.root())
        .args(["run", "--set", "train.C=0.5"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let failed = kiln(iris.root(), &["deploy", "iris@v2", "--env", "production"]);
    assert_eq!(failed.status.code(), Some(6), "{}", stderr(&failed));
    let said = stderr(&failed);
    assert!(said.contains("CrashLoopBackOff"), "{said}");
    assert!(said.contains("back on v1"), "{said}");
    let history = json(&kiln(iris.root(), &["models", "history", "iris", "--json"]));
    let last = history
        .as_array()
        .unwrap()
        .iter()
        .rfind(|moved| moved["alias"] == "production")
        .unwrap_or_else(|| panic!("{history}"));
    assert_eq!(last["command"], "rollback", "{history}");
    assert_eq!(last["to_version"], 1, "{history}");
    assert_eq!(deployed_image(&cluster), format!("{repository}@{digest}"));
}
