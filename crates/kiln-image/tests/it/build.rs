//! `kiln_image::build` on this machine's own files: a stand-in server (a copy of `/bin/true`),
//! a stand-in ONNX Runtime (a copy of this machine's libc, a real shared library with a real
//! closure) and a small artifact. Reproducibility across layouts and caches, the base reused by
//! a new version, the cache noticing a changed input, what the layers hold, the SBOM artifact.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_image::{ImageSpec, LayerRole, Layout, Runtime, build};
use serde_json::Value;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::copy("/bin/true", dir.path().join("bin/kiln")).unwrap();
        let libc = std::fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        std::fs::copy(&libc, dir.path().join("libonnxruntime.so.1.2.3")).unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Version `version` of `m`, whose artifact says `content`.
    fn spec(&self, version: i64, content: &str) -> ImageSpec {
        let artifact = self.path(&format!("v{version}/model.onnx"));
        std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
        std::fs::write(&artifact, content).unwrap();
        ImageSpec {
            model: "m".to_string(),
            version,
            reference: format!("m:v{version}"),
            artifact,
            artifact_digest: "ab".repeat(32),
            runtime: Runtime::Onnx {
                library: self.path("libonnxruntime.so.1.2.3"),
            },
            kiln: self.path("bin/kiln"),
            kiln_version: "0.1.0".to_string(),
            revision: Some("0123456789abcdef0123456789abcdef01234567".to_string()),
            source: Some("https://example.com/models.git".to_string()),
            created_ms: 1_764_460_800_000,
            port: 8080,
        }
    }
}

fn read_json(layout: &Path, digest: &str) -> Value {
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The entries of a gzipped layer: path, mode, uid.
fn entries(layout: &Path, digest: &str) -> Vec<(String, u32, u64)> {
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.path().unwrap().to_string_lossy().into_owned(),
                entry.header().mode().unwrap(),
                entry.header().uid().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_same_version_gives_the_same_digest_in_any_layout_and_cache() {
    let fixture = Fixture::new();
    let spec = fixture.spec(1, "model one");
    let first = build(
        &spec,
        &fixture.path("a"),
        &fixture.path("cache-a"),
        &mut |_| {},
    )
    .unwrap();
    let second = build(
        &spec,
        &fixture.path("b"),
        &fixture.path("cache-b"),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert_eq!(first.sbom_digest, second.sbom_digest);
    assert!(first.layers.iter().all(|layer| !layer.reused));
    assert!(second.layers.iter().all(|layer| !layer.reused));
    // Rebuilt where it is: nothing new is written.
    let again = build(
        &spec,
        &fixture.path("a"),
        &fixture.path("cache-a"),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(again.manifest_digest, first.manifest_digest);
    assert!(again.layers.iter().all(|layer| layer.reused));
    // The index names the image once, and reads the same byte for byte.
    assert_eq!(
        std::fs::read(fixture.path("a/index.json")).unwrap(),
        std::fs::read(fixture.path("b/index.json")).unwrap()
    );
    let layout = Layout::open_or_create(&fixture.path("a")).unwrap();
    let named = layout.resolve("m:v1").unwrap().unwrap();
    assert_eq!(named.digest().to_string(), first.manifest_digest);
}

#[test]
fn a_new_version_reuses_the_base_and_only_its_model_layer_is_new() {
    let fixture = Fixture::new();
    let layout = fixture.path("images");
    let cache = fixture.path("cache");
    let mut lines = Vec::new();
    let v1 = build(
        &fixture.spec(1, "model one"),
        &layout,
        &cache,
        &mut |line| lines.push(line.to_string()),
    )
    .unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v2 = build(
        &fixture.spec(2, "model two"),
        &layout,
        &cache,
        &mut |line| lines.push(line.to_string()),
    )
    .unwrap();
    assert_eq!(lines.len(), 1, "the base was built again: {lines:?}");
    assert_eq!(v1.layers[0].role, LayerRole::Base);
    assert_eq!(v1.layers[0].digest, v2.layers[0].digest);
    assert!(v2.layers[0].reused);
    assert_ne!(v1.layers[1].digest, v2.layers[1].digest);
    assert!(!v2.layers[1].reused);
    assert_ne!(v1.manifest_digest, v2.manifest_digest);
    assert!(v2.elapsed_ms < 1000, "{} ms", v2.elapsed_ms);
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(names, ["m:v1", "m:v2"]);
}

#[test]
fn a_changed_runtime_gets_a_new_base() {
    let fixture = Fixture::new();
    let layout = fixture.path("images");
    let cache = fixture.path("cache");
    let spec = fixture.spec(1, "model one");
    let first = build(&spec, &layout, &cache, &mut |_| {}).unwrap();
    let library = fixture.path("libonnxruntime.so.1.2.3");
    let mut bytes = std::fs::read(&library).unwrap();
    bytes.extend_from_slice(b"another build");
    std::fs::remove_file(&library).unwrap();
    std::fs::write(&library, bytes).unwrap();
    let second = build(&spec, &layout, &cache, &mut |_| {}).unwrap();
    assert_ne!(first.layers[0].digest, second.layers[0].digest);
    assert!(!second.layers[0].reused);
}

#[test]
fn the_layers_hold_the_server_runtime_libraries_user_and_model() {
    let fixture = Fixture::new();
    let layout = fixture.path("images");
    let built = build(
        &fixture.spec(3, "model three"),
        &layout,
        &fixture.path("cache"),
        &mut |_| {},
    )
    .unwrap();
    let base = entries(&layout, &built.layers[0].digest);
    let find = |path: &str| base.iter().find(|(p, _, _)| p == path).cloned();
    assert_eq!(find("usr/local/bin/kiln").map(|e| e.1), Some(0o755));
    assert!(
        find("opt/kiln/lib/libonnxruntime.so.1.2.3").is_some(),
        "{base:?}"
    );
    assert_eq!(find("tmp/").map(|e| e.1), Some(0o1777));
    assert!(find("etc/passwd").is_some());
    assert!(
        base.iter().any(|(p, _, _)| p.contains("ld-linux")),
        "no dynamic loader: {base:?}"
    );
    assert!(base.iter().all(|(_, _, uid)| *uid == 0));
    let model = entries(&layout, &built.layers[1].digest);
    let paths: Vec<&str> = model.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(paths, ["model/", "model/VERSION", "model/model.onnx"]);

    let manifest = read_json(&layout, &built.manifest_digest);
    let config = read_json(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["created"], "2025-11-30T00:00:00Z");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], "v3");
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://example.com/models.git"
    );
    assert_eq!(labels["dev.kiln.model"], "m");
    let entrypoint: Vec<&str> = config["config"]["Entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        entrypoint,
        [
            "/usr/local/bin/kiln",
            "serve",
            "--model",
            "m=/model/model.onnx",
            "--version-file",
            "m=/model/VERSION",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--watch-interval-ms",
            "0",
            "--ort-lib",
            "/opt/kiln/lib/libonnxruntime.so.1.2.3"
        ]
    );
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
}

#[test]
fn the_sbom_is_an_artifact_whose_subject_is_the_image() {
    let fixture = Fixture::new();
    let layout = fixture.path("images");
    let built = build(
        &fixture.spec(1, "model one"),
        &layout,
        &fixture.path("cache"),
        &mut |_| {},
    )
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let listed = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == "application/spdx+json")
        .expect("the SBOM is listed in the index");
    assert_eq!(listed["digest"], built.sbom_digest.as_str());
    let manifest = read_json(&layout, &built.sbom_digest);
    assert_eq!(
        manifest["subject"]["digest"],
        built.manifest_digest.as_str()
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let document = read_json(&layout, manifest["layers"][0]["digest"].as_str().unwrap());
    assert_eq!(document["spdxVersion"], "SPDX-2.3");
    let names: Vec<&str> = document["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["kiln", "onnxruntime", "libc6", "m"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

#[test]
fn a_missing_artifact_and_a_bad_name_are_errors() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(1, "model one");
    spec.artifact = fixture.path("gone.onnx");
    let error = build(
        &spec,
        &fixture.path("images"),
        &fixture.path("cache"),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("gone.onnx` does not exist"),
        "{error}"
    );
    let mut spec = fixture.spec(1, "model one");
    spec.reference = "m v1".to_string();
    let error = build(
        &spec,
        &fixture.path("images"),
        &fixture.path("cache"),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("not a valid image reference"),
        "{error}"
    );
}
