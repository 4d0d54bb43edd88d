//! `kiln_image::push` against a real registry: tags and digest as `skopeo` reads them, a second
//! push that uploads nothing, a pull by digest that gives the same manifest, the SBOM found
//! through the referrers tag, credentials (environment, Docker config file, wrong ones) on a
//! registry behind htpasswd, and the errors of bad input.

use std::ffi::OsString;
use std::process::Command;

use base64::Engine as _;
use kiln_image::push::Credentials;
use kiln_image::testing::{TestRegistry, free_port};
use kiln_image::{Auth, Error, PushOptions, push};

use crate::fixtures::{SBOM_TYPE, write_layout};

fn tags(tags: &[&str]) -> Vec<String> {
    tags.iter().map(|tag| tag.to_string()).collect()
}

fn skopeo(args: &[&str]) -> serde_json::Value {
    let output = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (Debian's `skopeo`, `bash .ci/setup`)");
    assert!(
        output.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("skopeo prints JSON")
}

#[test]
fn an_image_is_pushed_with_its_tags_and_sbom_then_pushed_again_for_nothing() {
    let registry = TestRegistry::start();
    let folder = tempfile::tempdir().unwrap();
    let layout = folder.path().join("layout");
    let written = write_layout(&layout, "iris@v3", "hello");
    let destination = format!("{}/team/iris", registry.address);
    let wanted = tags(&["v3", "0a1b2c3", "production"]);

    let mut lines = Vec::new();
    let pushed = push(
        &layout,
        "iris@v3",
        &destination,
        &wanted,
        &PushOptions::default(),
        &mut |line| lines.push(line.to_owned()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", e.hint(), registry.log()));
    assert_eq!(pushed.repository, destination);
    assert_eq!(pushed.digest, written.image_digest);
    assert_eq!(pushed.tags, wanted);
    // layer, config, the SBOM's empty config and its document
    assert_eq!((pushed.blobs_pushed, pushed.blobs_skipped), (4, 0));
    assert!(pushed.bytes > 9 * 1024 * 1024, "{pushed:?}");
    assert!(lines[0].contains("over plain HTTP"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "tagged `production`"),
        "{lines:?}"
    );

    let inspected = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{destination}:v3"),
    ]);
    assert_eq!(inspected["Digest"], written.image_digest);
    let repo_tags: Vec<&str> = inspected["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tag| tag.as_str().unwrap())
        .collect();
    for tag in &wanted {
        assert!(repo_tags.contains(&tag.as_str()), "{repo_tags:?}");
    }
    // The referrers tag schema: the SBOM is listed under `sha256-<hex>` of the image.
    let fallback = written.image_digest.replace(':', "-");
    assert!(repo_tags.contains(&fallback.as_str()), "{repo_tags:?}");
    let referrers = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{destination}:{fallback}"),
    ]);
    assert_eq!(referrers["manifests"][0]["digest"], written.sbom_digest);
    assert_eq!(referrers["manifests"][0]["artifactType"], SBOM_TYPE);

    // Everything is there already: nothing is uploaded, the referrers index keeps one entry.
    let again = push(
        &layout,
        "iris@v3",
        &destination,
        &wanted,
        &PushOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        (again.blobs_pushed, again.blobs_skipped, again.bytes),
        (0, 4, 0)
    );
    assert_eq!(again.digest, pushed.digest);
    let referrers = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{destination}:{fallback}"),
    ]);
    assert_eq!(referrers["manifests"].as_array().unwrap().len(), 1);

    // Pulled by digest, the manifest is the one pushed, byte for byte.
    let pulled = folder.path().join("pulled");
    let status = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg("--dest-oci-accept-uncompressed-layers")
        .arg(format!("docker://{destination}@{}", pushed.digest))
        .arg(format!("oci:{}:pulled", pulled.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pulled.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], pushed.digest);
    let hex = &pushed.digest["sha256:".len()..];
    assert_eq!(
        std::fs::read(pulled.join("blobs/sha256").join(hex)).unwrap(),
        std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    );
}

#[test]
fn a_registry_behind_a_login_takes_credentials_from_the_environment_or_docker_config() {
    let registry = TestRegistry::start_with_login("kiln", "s3cret-pass");
    let folder = tempfile::tempdir().unwrap();
    let layout = folder.path().join("layout");
    let written = write_layout(&layout, "iris@v1", "hi");
    let destination = format!("{}/kiln/iris", registry.address);
    let env = |pairs: Vec<(&'static str, OsString)>| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, v)| v.clone())
        }
    };

    // From the environment.
    let from_env = Credentials::lookup(
        &registry.address,
        &env(vec![
            ("KILN_REGISTRY_USERNAME", "kiln".into()),
            ("KILN_REGISTRY_PASSWORD", "s3cret-pass".into()),
        ]),
    )
    .unwrap()
    .unwrap();
    let options = PushOptions {
        auth: Auth::Given(from_env),
        ..PushOptions::default()
    };
    let pushed = push(
        &layout,
        "iris@v1",
        &destination,
        &tags(&["v1"]),
        &options,
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", registry.log()));
    assert_eq!(pushed.digest, written.image_digest);
    let inspected = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "kiln:s3cret-pass",
        &format!("docker://{destination}:v1"),
    ]);
    assert_eq!(inspected["Digest"], written.image_digest);

    // From a Docker config file (`auths.<host>.auth`).
    let docker = folder.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("kiln:s3cret-pass");
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.address
        ),
    )
    .unwrap();
    let from_config = Credentials::lookup(
        &registry.address,
        &env(vec![("DOCKER_CONFIG", docker.clone().into())]),
    )
    .unwrap()
    .unwrap();
    let options = PushOptions {
        auth: Auth::Given(from_config),
        ..PushOptions::default()
    };
    let again = push(
        &layout,
        "iris@v1",
        &destination,
        &tags(&["v1-again"]),
        &options,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((again.blobs_pushed, again.blobs_skipped), (0, 4));

    // A wrong password, and none: refused, saying which credentials were tried, never them.
    let wrong = PushOptions {
        auth: Auth::Given(Credentials::new("kiln", "wrong-pass")),
        ..PushOptions::default()
    };
    let error = push(
        &layout,
        "iris@v1",
        &destination,
        &tags(&["v1"]),
        &wrong,
        &mut |_| {},
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, Error::Denied { status: 401, .. }),
        "{message}"
    );
    assert!(message.contains("with the credentials given"), "{message}");
    assert!(!format!("{message}{:?}", error.hint()).contains("wrong-pass"));
    assert!(error.hint().unwrap().contains("KILN_REGISTRY_USERNAME"));
    let anonymous = PushOptions {
        auth: Auth::Anonymous,
        ..PushOptions::default()
    };
    let error = push(
        &layout,
        "iris@v1",
        &destination,
        &tags(&["v1"]),
        &anonymous,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the registry `{}` refused to check for blob `{}` (HTTP 401) with no credentials",
            registry.address,
            first_blob(&layout, &written.image_digest)
        )
    );
}

/// The first blob a push asks for: the image's config.
fn first_blob(layout: &std::path::Path, image: &str) -> String {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&image["sha256:".len()..])).unwrap(),
    )
    .unwrap();
    manifest["config"]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn bad_input_and_unreachable_registries_are_clear_errors() {
    let folder = tempfile::tempdir().unwrap();
    let layout = folder.path().join("layout");
    write_layout(&layout, "iris@v1", "hi");
    let run = |reference: &str, destination: &str, tag: &str| {
        push(
            &layout,
            reference,
            destination,
            &tags(&[tag]),
            &PushOptions::default(),
            &mut |_| {},
        )
        .unwrap_err()
    };

    let nobody = format!("127.0.0.1:{}/kiln/iris", free_port());
    let error = run("iris@v1", &nobody, "v1");
    assert!(matches!(error, Error::Unreachable { .. }), "{error}");
    assert!(error.to_string().ends_with("over plain HTTP"), "{error}");

    let error = run("iris@v9", &nobody, "v9");
    assert_eq!(
        error.to_string(),
        format!(
            "the image layout at `{}` holds no image `iris@v9`",
            layout.display()
        )
    );
    assert_eq!(
        error.hint().unwrap(),
        "build it first: `kiln image build iris@v9`"
    );

    // No layout at all: the image is not there (the binary then builds it).
    let error = push(
        &folder.path().join("no-layout"),
        "iris@v1",
        &nobody,
        &tags(&["v1"]),
        &PushOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(error, Error::ImageNotInLayout { .. }), "{error}");

    let error = run("iris@v1", "kiln/iris", "v1");
    assert!(error.to_string().contains("names no registry"), "{error}");
    let error = run("iris@v1", &nobody, "bad/tag");
    assert!(
        error.to_string().starts_with("invalid tag `bad/tag`"),
        "{error}"
    );
    let error = run("iris@v1", "registry.invalid/kiln/iris", "v1");
    assert!(
        matches!(
            error,
            Error::Unreachable {
                scheme: "HTTPS",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.hint().unwrap().contains("--insecure"));

    // A layout whose blob is gone.
    let blobs = layout.join("blobs/sha256");
    let written_layer = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .unwrap();
    std::fs::remove_file(&written_layer).unwrap();
    let error = run("iris@v1", &nobody, "v1");
    assert!(matches!(error, Error::BlobMissing { .. }), "{error}");
}

#[test]
fn a_registry_with_a_token_service_takes_bearer_tokens_for_the_right_login() {
    let registry = TestRegistry::start_with_token_service("kiln", "t0ken-pass");
    let folder = tempfile::tempdir().unwrap();
    let layout = folder.path().join("layout");
    let written = write_layout(&layout, "iris@v2", "hey");
    let destination = format!("{}/kiln/iris", registry.address);
    let with = |credentials: Auth| PushOptions {
        auth: credentials,
        ..PushOptions::default()
    };

    let pushed = push(
        &layout,
        "iris@v2",
        &destination,
        &tags(&["v2"]),
        &with(Auth::Given(Credentials::new("kiln", "t0ken-pass"))),
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", registry.log()));
    assert_eq!(pushed.digest, written.image_digest);
    assert_eq!((pushed.blobs_pushed, pushed.blobs_skipped), (4, 0));
    let inspected = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "kiln:t0ken-pass",
        &format!("docker://{destination}:v2"),
    ]);
    assert_eq!(inspected["Digest"], written.image_digest);

    // The token service refuses a wrong password, and a login without any.
    for (auth, tried) in [
        (
            Auth::Given(Credentials::new("kiln", "wrong-pass")),
            "the credentials given",
        ),
        (Auth::Anonymous, "no credentials"),
    ] {
        let error = push(
            &layout,
            "iris@v2",
            &destination,
            &tags(&["v2"]),
            &with(auth),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the registry `{}` refused to log in (HTTP 401) with {tried}",
                registry.address
            )
        );
    }
}
