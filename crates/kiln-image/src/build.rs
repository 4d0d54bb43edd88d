//! Building an image of a model version into an OCI image layout: a base layer (Kiln's server,
//! stripped; the runtime that serves the model; the shared libraries they load; a non-root
//! user; `/tmp`), cached by a fingerprint of its inputs so that it is written once per server
//! and runtime; a model layer (the artifact and its version number); the config (entrypoint
//! serving on `0.0.0.0:PORT`, labels); the manifest; and the SBOM as an artifact whose subject
//! is the image. The layout's `index.json` names the image (`iris:v3`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use serde::{Deserialize, Serialize};

use crate::layer::{LayerBuilder, WrittenLayer};
use crate::layout::{Layout, REF_NAME, SBOM_OF, canonical_json};
use crate::sbom::{self, Package};
use crate::{Error, base};

/// Where the served model sits in the image.
pub const MODEL_DIR: &str = "/model";
/// Where Kiln's server sits in the image.
pub const KILN_PATH: &str = "/usr/local/bin/kiln";
/// The user the server runs as (`kiln`, in `/etc/passwd`); numeric so that Kubernetes can
/// check `runAsNonRoot`.
pub const USER: &str = "65532:65532";

/// What serves the model in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// An ONNX model, served with ONNX Runtime: this `libonnxruntime.so`.
    Onnx { library: PathBuf },
    /// A `predict.py` (or MLflow) folder, served by workers of this virtualenv's interpreter
    /// (`<venv>/bin/python`).
    Python { python: PathBuf },
}

/// One image to build: a registered version of a model and what serves it.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub model: String,
    /// The registry's version number.
    pub version: i64,
    /// The image's name in the layout (`iris:v3`).
    pub reference: String,
    /// The artifact: a file or a folder.
    pub artifact: PathBuf,
    /// The artifact's digest in Kiln's store (a label).
    pub artifact_digest: String,
    pub runtime: Runtime,
    /// Kiln's executable to serve with (the running one), and its version.
    pub kiln: PathBuf,
    pub kiln_version: String,
    /// The git commit the version was trained from.
    pub revision: Option<String>,
    /// Where the project's source lives (the git remote's URL).
    pub source: Option<String>,
    /// The version's registration time (Unix milliseconds): the image's `created`.
    pub created_ms: i64,
    /// The port the server listens on in the container.
    pub port: u16,
}

/// Which layer of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerRole {
    Base,
    Model,
}

/// A layer of a built image.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltLayer {
    pub role: LayerRole,
    /// `sha256:…` of the compressed blob.
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    /// The layout held it already (not written by this build).
    pub reused: bool,
    /// What it holds, in a few words.
    pub description: String,
}

/// An image built into a layout.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltImage {
    /// Its name in the layout (`org.opencontainers.image.ref.name`).
    pub reference: String,
    pub layout: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layers, config and manifest, in bytes (what a registry stores).
    pub size: u64,
    pub layers: Vec<BuiltLayer>,
    /// The SBOM artifact's manifest (its subject is the image).
    pub sbom_digest: String,
    pub entrypoint: Vec<String>,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    /// How long the build took, in milliseconds.
    pub elapsed_ms: u64,
}

/// A base layer as the cache keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CachedBase {
    pub layer: WrittenLayer,
    pub description: String,
    pub packages: Vec<Package>,
    /// The server's arguments that name paths in the base (`--ort-lib …`, `--python …`).
    pub serve_args: Vec<String>,
    pub env: Vec<String>,
}

/// Checks an image name for the layout: what `org.opencontainers.image.ref.name` allows.
pub fn check_reference(reference: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::BadReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    };
    if reference.is_empty() {
        return Err(bad("it is empty"));
    }
    if !reference.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(bad("it must start with a letter or a digit"));
    }
    if let Some(c) = reference
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._:@/+".contains(*c)))
    {
        return Err(bad(&format!("`{c}` is not allowed")));
    }
    Ok(())
}

/// Builds `spec`'s image into the layout at `layout` (created when missing), reusing base
/// layers kept in `cache`. `progress` receives a line per slow step.
pub fn build(
    spec: &ImageSpec,
    layout: &Path,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltImage, Error> {
    let started = Instant::now();
    check_reference(&spec.reference)?;
    if !spec.artifact.exists() {
        return Err(Error::ArtifactMissing {
            path: spec.artifact.clone(),
        });
    }
    let layout = Layout::open_or_create(layout)?;
    let created = jiff::Timestamp::from_millisecond(spec.created_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();

    let (base, base_reused) = base::base_layer(spec, &layout, cache, progress)?;
    let model = model_layer(spec, &layout)?;

    let artifact_name = spec
        .artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string());
    let mut entrypoint = vec![
        KILN_PATH.to_string(),
        "serve".to_string(),
        "--model".to_string(),
        format!("{}={MODEL_DIR}/{artifact_name}", spec.model),
        "--version-file".to_string(),
        format!("{}={MODEL_DIR}/VERSION", spec.model),
        "--host".to_string(),
        "0.0.0.0".to_string(),
        "--port".to_string(),
        spec.port.to_string(),
        "--watch-interval-ms".to_string(),
        "0".to_string(),
    ];
    entrypoint.extend(base.serve_args.iter().cloned());

    let mut labels = BTreeMap::new();
    labels.insert(
        "org.opencontainers.image.title".to_string(),
        spec.model.clone(),
    );
    labels.insert(
        "org.opencontainers.image.version".to_string(),
        format!("v{}", spec.version),
    );
    labels.insert(
        "org.opencontainers.image.created".to_string(),
        created.clone(),
    );
    if let Some(revision) = &spec.revision {
        labels.insert(
            "org.opencontainers.image.revision".to_string(),
            revision.clone(),
        );
    }
    if let Some(source) = &spec.source {
        labels.insert(
            "org.opencontainers.image.source".to_string(),
            source.clone(),
        );
    }
    labels.insert("dev.kiln.model".to_string(), spec.model.clone());
    labels.insert(
        "dev.kiln.model.version".to_string(),
        spec.version.to_string(),
    );
    labels.insert(
        "dev.kiln.artifact.digest".to_string(),
        spec.artifact_digest.clone(),
    );
    labels.insert(
        "dev.kiln.server.version".to_string(),
        spec.kiln_version.clone(),
    );

    let mut env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        "HOME=/tmp".to_string(),
        format!("KILN_MODEL={}", spec.model),
        format!("KILN_MODEL_VERSION={}", spec.version),
    ];
    env.extend(base.env.iter().cloned());

    let oci = |what: &'static str| {
        move |error: oci_spec::OciSpecError| Error::Oci {
            what,
            message: error.to_string(),
        }
    };
    let config = ConfigBuilder::default()
        .user(USER.to_string())
        .exposed_ports(vec![format!("{}/tcp", spec.port)])
        .env(env)
        .entrypoint(entrypoint.clone())
        .working_dir("/".to_string())
        .labels(
            labels
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .stop_signal("SIGTERM".to_string())
        .build()
        .map_err(oci("config"))?;
    let history = vec![
        HistoryBuilder::default()
            .created(created.clone())
            .created_by(format!("kiln image build: {}", base.description))
            .build()
            .map_err(oci("history"))?,
        HistoryBuilder::default()
            .created(created.clone())
            .created_by(format!(
                "kiln image build: {} v{} ({artifact_name})",
                spec.model, spec.version
            ))
            .build()
            .map_err(oci("history"))?,
    ];
    let configuration = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(architecture())
        .os(Os::Linux)
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers".to_string())
                .diff_ids(vec![base.layer.diff_id.clone(), model.diff_id.clone()])
                .build()
                .map_err(oci("rootfs"))?,
        )
        .history(history)
        .build()
        .map_err(oci("config"))?;
    let config_blob = layout.put(&canonical_json(&configuration, "config")?)?;

    let layer_descriptor = |size: u64, layer_digest: &str| -> Result<Descriptor, Error> {
        Ok(Descriptor::new(
            MediaType::ImageLayerGzip,
            size,
            digest(layer_digest)?,
        ))
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_blob.size,
            digest(&config_blob.digest)?,
        ))
        .layers(vec![
            layer_descriptor(base.layer.size, &base.layer.digest)?,
            layer_descriptor(model.size, &model.digest)?,
        ])
        .annotations(
            labels
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .map_err(oci("manifest"))?;
    let manifest_blob = layout.put(&canonical_json(&manifest, "manifest")?)?;
    let manifest_descriptor = Descriptor::new(
        MediaType::ImageManifest,
        manifest_blob.size,
        digest(&manifest_blob.digest)?,
    );

    // The SBOM, as an OCI 1.1 artifact whose subject is the image.
    let mut packages = base.packages.clone();
    packages.push(Package {
        name: spec.model.clone(),
        version: format!("v{}", spec.version),
        purl: None,
    });
    let document = sbom::document(
        &spec.reference,
        &format!(
            "https://kiln.dev/spdx/{}/{}",
            spec.reference.replace(':', "/"),
            manifest_blob.digest
        ),
        &created,
        &spec.kiln_version,
        &packages,
    );
    let sbom_blob = layout.put(&canonical_json(&document, "sbom")?)?;
    let empty = layout.put(b"{}")?;
    let sbom_manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(sbom::MEDIA_TYPE.to_string()))
        .config(Descriptor::new(
            MediaType::EmptyJSON,
            empty.size,
            digest(&empty.digest)?,
        ))
        .layers(vec![
            DescriptorBuilder::default()
                .media_type(MediaType::Other(sbom::MEDIA_TYPE.to_string()))
                .size(sbom_blob.size)
                .digest(digest(&sbom_blob.digest)?)
                .annotations(std::collections::HashMap::from([(
                    "org.opencontainers.image.title".to_string(),
                    "sbom.spdx.json".to_string(),
                )]))
                .build()
                .map_err(oci("sbom"))?,
        ])
        .subject(manifest_descriptor.clone())
        .annotations(std::collections::HashMap::from([(
            "org.opencontainers.image.created".to_string(),
            created.clone(),
        )]))
        .build()
        .map_err(oci("sbom manifest"))?;
    let sbom_manifest_blob = layout.put(&canonical_json(&sbom_manifest, "sbom manifest")?)?;

    let mut named = manifest_descriptor.clone();
    named.set_annotations(Some(std::collections::HashMap::from([(
        REF_NAME.to_string(),
        spec.reference.clone(),
    )])));
    let sbom_descriptor = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .size(sbom_manifest_blob.size)
        .digest(digest(&sbom_manifest_blob.digest)?)
        .artifact_type(MediaType::Other(sbom::MEDIA_TYPE.to_string()))
        .annotations(std::collections::HashMap::from([(
            SBOM_OF.to_string(),
            spec.reference.clone(),
        )]))
        .build()
        .map_err(oci("sbom descriptor"))?;
    layout.update_index(|manifests| {
        manifests.retain(|descriptor| {
            let annotation = |key: &str| {
                descriptor
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .is_some_and(|value| *value == spec.reference)
            };
            !annotation(REF_NAME) && !annotation(SBOM_OF)
        });
        manifests.push(named);
        manifests.push(sbom_descriptor);
    })?;

    let layers = vec![
        BuiltLayer {
            role: LayerRole::Base,
            digest: base.layer.digest.clone(),
            diff_id: base.layer.diff_id.clone(),
            size: base.layer.size,
            reused: base_reused,
            description: base.description.clone(),
        },
        BuiltLayer {
            role: LayerRole::Model,
            digest: model.digest.clone(),
            diff_id: model.diff_id.clone(),
            size: model.size,
            reused: model.reused,
            description: format!("{MODEL_DIR}/{artifact_name}, {MODEL_DIR}/VERSION"),
        },
    ];
    Ok(BuiltImage {
        reference: spec.reference.clone(),
        layout: layout.root().to_path_buf(),
        manifest_digest: manifest_blob.digest,
        config_digest: config_blob.digest,
        size: base.layer.size + model.size + config_blob.size + manifest_blob.size,
        layers,
        sbom_digest: sbom_manifest_blob.digest,
        entrypoint,
        user: USER.to_string(),
        labels,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// A model layer written, and whether the layout had it.
struct ModelLayer {
    digest: String,
    diff_id: String,
    size: u64,
    reused: bool,
}

/// `/model/<artifact>` (a file, or a folder's files with links followed) and `/model/VERSION`.
fn model_layer(spec: &ImageSpec, layout: &Layout) -> Result<ModelLayer, Error> {
    let artifact = std::fs::canonicalize(&spec.artifact).map_err(|_| Error::ArtifactMissing {
        path: spec.artifact.clone(),
    })?;
    let name = spec
        .artifact
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("model"));
    let mut layer = LayerBuilder::new();
    let target = Path::new(MODEL_DIR).join(&name);
    if artifact.is_dir() {
        layer.tree_following_links(&target, &artifact, &|path| {
            path.file_name().is_some_and(|n| n == "__pycache__")
        })?;
    } else {
        layer.file(&target, &artifact)?;
    }
    layer.bytes(
        Path::new(MODEL_DIR).join("VERSION"),
        format!("{}\n", spec.version),
        0o644,
    );
    let temporary = layout.temporary();
    let written = layer.write(&temporary).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })?;
    let reused = layout.commit_blob(&temporary, &written.digest)?;
    Ok(ModelLayer {
        digest: written.digest,
        diff_id: written.diff_id,
        size: written.size,
        reused,
    })
}

fn digest(text: &str) -> Result<oci_spec::image::Digest, Error> {
    text.parse()
        .map_err(|error: oci_spec::OciSpecError| Error::Oci {
            what: "digest",
            message: error.to_string(),
        })
}

/// This machine's architecture as OCI names it: the image holds this machine's binaries.
fn architecture() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        other => Arch::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_names_are_checked() {
        assert!(check_reference("iris:v3").is_ok());
        assert!(check_reference("team/iris:v3").is_ok());
        let error = check_reference("iris v3").unwrap_err();
        assert!(error.to_string().contains("` ` is not allowed"), "{error}");
        assert!(check_reference(":v3").is_err());
        assert!(check_reference("").is_err());
    }
}
