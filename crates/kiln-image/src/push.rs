//! Pushing an image from an OCI image layout to an OCI distribution registry: each blob is
//! asked for first (HEAD) and skipped when the registry has it, else uploaded from its file in
//! chunks; the manifest is put, as the layout holds it, under each tag; the artifacts whose
//! `subject` is the image (the SBOM) follow, with the referrers tag schema's index
//! (`sha256-<hex>`) kept for registries without the referrers API.
//!
//! `oci-client` is async: a push drives it from a private current-thread runtime, and files are
//! read by a thread of their own that feeds the upload through a channel, never inside a future.

pub mod credentials;
mod destination;
mod layout;

use std::collections::{BTreeSet, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Serialize;

pub use credentials::{CredentialSource, Credentials};
pub use destination::{Destination, check_tag};
pub use layout::REF_NAME;
use layout::{Descriptor, IMAGE_INDEX, IMAGE_MANIFEST, Layout, Manifest};

use crate::Error;

/// Blobs are read and uploaded in pieces of this size (`oci-client` sends one PATCH per 4 MiB).
const CHUNK: usize = 4 * 1024 * 1024;

/// How to log in to the registry.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// `KILN_REGISTRY_USERNAME`/`KILN_REGISTRY_PASSWORD`, else the Docker config file, else none.
    #[default]
    FromEnvironment,
    Anonymous,
    Given(Credentials),
}

/// How a push reaches the registry.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Plain HTTP to a registry that is not on loopback (loopback ones always are).
    pub insecure: bool,
    pub auth: Auth,
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pushed {
    /// `127.0.0.1:5000/team/iris`.
    pub repository: String,
    /// The image manifest's digest: `repository@digest` names what was pushed.
    pub digest: String,
    pub tags: Vec<String>,
    /// Blobs uploaded, and blobs the registry already had (image and SBOM together).
    pub blobs_pushed: usize,
    pub blobs_skipped: usize,
    /// Bytes of the blobs uploaded.
    pub bytes: u64,
}

/// Pushes the image `reference` of the layout (its `org.opencontainers.image.ref.name`, or its
/// digest) to `destination` (`REGISTRY/REPOSITORY`) under `tags`, with the artifacts that refer
/// to it. `progress` is told each step, one line at a time.
pub fn push(
    layout: &Path,
    reference: &str,
    destination: &str,
    tags: &[String],
    options: &PushOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Pushed, Error> {
    let destination = Destination::parse(destination)?;
    for tag in tags {
        check_tag(tag)?;
    }
    let layout = Layout::open(layout)?;
    let image = layout.image(reference)?;
    let referrers = layout.referrers(&image.descriptor.digest)?;
    let mut blob_files = Vec::new();
    for manifest in std::iter::once(&image).chain(&referrers) {
        for blob in &manifest.blobs {
            blob_files.push((blob.clone(), layout.blob_file(blob)?));
        }
    }

    let session = Session::open(destination, options)?;
    progress(&format!(
        "pushing `{reference}` to `{}` over {}",
        session.destination.repository_url(),
        session.scheme
    ));
    session.login()?;

    let mut pushed = Pushed {
        repository: session.destination.repository_url(),
        digest: image.descriptor.digest.clone(),
        tags: Vec::new(),
        blobs_pushed: 0,
        blobs_skipped: 0,
        bytes: 0,
    };
    let mut seen = HashSet::new();
    for (blob, path) in &blob_files {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        if session.blob_exists(blob)? {
            pushed.blobs_skipped += 1;
            progress(&format!("{} already there", short(&blob.digest)));
        } else {
            session.push_blob(blob, path)?;
            pushed.blobs_pushed += 1;
            pushed.bytes += blob.size;
            progress(&format!(
                "{} pushed ({})",
                short(&blob.digest),
                human_bytes(blob.size)
            ));
        }
    }

    if tags.is_empty() {
        session.push_manifest(&image, None)?;
    }
    let mut unique_tags = BTreeSet::new();
    for tag in tags {
        if unique_tags.insert(tag) {
            session.push_manifest(&image, Some(tag))?;
            pushed.tags.push(tag.clone());
            progress(&format!("tagged `{tag}`"));
        }
    }
    for referrer in &referrers {
        session.push_manifest(referrer, None)?;
        session.add_to_referrers_tag(&image.descriptor.digest, referrer)?;
        progress(&format!(
            "{} `{}` attached",
            short(&referrer.descriptor.digest),
            referrer.artifact_type.as_deref().unwrap_or("artifact")
        ));
    }
    Ok(pushed)
}

/// A connection to one repository of one registry.
struct Session {
    client: Client,
    runtime: tokio::runtime::Runtime,
    destination: Destination,
    scheme: &'static str,
    insecure_allowed: bool,
    auth: RegistryAuth,
    /// Which credentials are used, for errors (never their values).
    credentials: String,
}

impl Session {
    fn open(destination: Destination, options: &PushOptions) -> Result<Session, Error> {
        let plain_http = options.insecure || destination.is_loopback();
        let credentials = match &options.auth {
            Auth::FromEnvironment => {
                Credentials::lookup(&destination.registry, &|name| std::env::var_os(name))?
            }
            Auth::Anonymous => None,
            Auth::Given(credentials) => Some(credentials.clone()),
        };
        let (auth, described) = match credentials {
            Some(credentials) => (
                RegistryAuth::Basic(
                    credentials.username.clone(),
                    credentials.password().to_owned(),
                ),
                credentials.source.to_string(),
            ),
            None if matches!(options.auth, Auth::FromEnvironment) => (
                RegistryAuth::Anonymous,
                format!(
                    "no credentials (neither `{}` nor an entry for `{}` in the Docker config file)",
                    credentials::env_vars::KILN_REGISTRY_USERNAME,
                    destination.registry
                ),
            ),
            None => (RegistryAuth::Anonymous, "no credentials".to_owned()),
        };
        let protocol = if plain_http {
            oci_client::client::ClientProtocol::HttpsExcept(vec![destination.registry.clone()])
        } else {
            oci_client::client::ClientProtocol::Https
        };
        let client = Client::new(oci_client::client::ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
            // One blob at a time: uploads of one image compete for one link anyway, and the
            // progress reads in order.
            max_concurrent_upload: 1,
            ..Default::default()
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        Ok(Session {
            client,
            runtime,
            destination,
            scheme: if plain_http { "plain HTTP" } else { "HTTPS" },
            insecure_allowed: options.insecure,
            auth,
            credentials: described,
        })
    }

    /// Runs a future to completion on the private runtime (`kiln_store::runtime::block_on`); from inside another tokio runtime
    /// (which may not block), on a thread of its own.
    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        kiln_store::runtime::block_on(&self.runtime, future)
    }

    fn reference(&self, tag_or_digest: &str) -> Reference {
        let (registry, repository) = (
            self.destination.registry.clone(),
            self.destination.repository.clone(),
        );
        if tag_or_digest.contains(':') {
            Reference::with_digest(registry, repository, tag_or_digest.to_owned())
        } else {
            Reference::with_tag(registry, repository, tag_or_digest.to_owned())
        }
    }

    /// Answers the registry's challenge (a Bearer token from its token service, or Basic) for
    /// pushing and for the HEAD requests, which `oci-client` authenticates as pulls.
    fn login(&self) -> Result<(), Error> {
        let reference = self.reference("latest");
        for operation in [RegistryOperation::Push, RegistryOperation::Pull] {
            self.block_on(self.client.auth(&reference, &self.auth, operation))
                .map_err(|error| self.error("log in", error))?;
        }
        Ok(())
    }

    fn blob_exists(&self, blob: &Descriptor) -> Result<bool, Error> {
        let reference = self.reference(&blob.digest);
        self.block_on(self.client.blob_exists(&reference, &blob.digest))
            .map_err(|error| self.error(&format!("check for blob `{}`", blob.digest), error))
    }

    fn push_blob(&self, blob: &Descriptor, path: &Path) -> Result<(), Error> {
        let reference = self.reference(&blob.digest);
        let action = format!("take blob `{}`", blob.digest);
        if blob.size == 0 {
            return self
                .block_on(self.client.push_blob(&reference, Vec::new(), &blob.digest))
                .map(drop)
                .map_err(|error| self.error(&action, error));
        }
        let chunks = file_chunks(path.to_owned());
        self.block_on(self.client.push_blob_stream(
            &reference,
            chunks,
            &blob.digest,
            Some(blob.size),
        ))
        .map(drop)
        .map_err(|error| self.error(&action, error))
    }

    /// Puts a manifest's bytes as the layout holds them, under `tag` or its digest.
    fn push_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<(), Error> {
        let name = tag.unwrap_or(&manifest.descriptor.digest);
        // The layout only hands out manifests of the media types it knows.
        let content_type = manifest
            .descriptor
            .media_type
            .parse()
            .expect("a known manifest media type is a valid header value");
        self.block_on(self.client.push_manifest_raw(
            &self.reference(name),
            manifest.bytes.clone(),
            content_type,
        ))
        .map(drop)
        .map_err(|error| self.error(&format!("take manifest `{name}`"), error))
    }

    /// Adds `referrer` to the index under the tag `sha256-<hex>` of its subject, as the
    /// distribution spec's referrers tag schema has clients do. `oci-client` does not show
    /// whether the registry answered with `OCI-Subject` (it has the referrers API), so the tag
    /// is always kept; a registry with the API lists referrers without it.
    fn add_to_referrers_tag(&self, subject: &str, referrer: &Manifest) -> Result<(), Error> {
        let tag = subject.replace(':', "-");
        let reference = self.reference(&tag);
        let existing = self.block_on(self.client.pull_manifest_raw(
            &reference,
            &self.auth,
            &[IMAGE_INDEX],
        ));
        let mut manifests: Vec<serde_json::Value> = match existing {
            Ok((bytes, _)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|index| index.get("manifests").cloned())
                .and_then(|manifests| serde_json::from_value(manifests).ok())
                .unwrap_or_default(),
            Err(error) if is_not_found(&error) => Vec::new(),
            Err(error) => {
                return Err(self.error(&format!("give the referrers tag `{tag}`"), error));
            }
        };
        let digest = &referrer.descriptor.digest;
        if manifests
            .iter()
            .any(|entry| entry.get("digest").and_then(|d| d.as_str()) == Some(digest))
        {
            return Ok(());
        }
        let entry = Descriptor {
            media_type: IMAGE_MANIFEST.to_owned(),
            digest: digest.clone(),
            size: referrer.descriptor.size,
            artifact_type: referrer
                .artifact_type
                .clone()
                .or_else(|| referrer.blobs.first().map(|c| c.media_type.clone())),
            annotations: referrer.annotations.clone(),
        };
        manifests.push(serde_json::to_value(entry).expect("a descriptor serialises"));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": IMAGE_INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).expect("an index serialises");
        self.block_on(self.client.push_manifest_raw(
            &reference,
            bytes,
            IMAGE_INDEX.parse().expect("a valid header value"),
        ))
        .map(drop)
        .map_err(|error| self.error(&format!("take the referrers tag `{tag}`"), error))
    }

    /// The error `oci-client`'s `error` is, for a user: unreachable, denied (which credentials),
    /// or what the registry said.
    fn error(&self, action: &str, error: OciDistributionError) -> Error {
        let registry = self.destination.registry.clone();
        let status = match &error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Some(401),
            OciDistributionError::ServerError { code, .. } => Some(*code),
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().find_map(|e| match e.code {
                    OciErrorCode::Unauthorized => Some(401),
                    OciErrorCode::Denied => Some(403),
                    _ => None,
                })
            }
            OciDistributionError::RequestError(error) => error.status().map(|s| s.as_u16()),
            _ => None,
        };
        if let Some(status @ (401 | 403)) = status {
            return Error::Denied {
                registry,
                action: action.to_owned(),
                status,
                credentials: self.credentials.clone(),
            };
        }
        if let OciDistributionError::RequestError(request) = &error
            && (request.is_connect() || request.is_timeout())
        {
            return Error::Unreachable {
                registry,
                scheme: if self.scheme == "HTTPS" {
                    "HTTPS"
                } else {
                    "plain HTTP"
                },
                insecure_allowed: self.insecure_allowed,
                source: Box::new(error),
            };
        }
        Error::Registry {
            registry,
            action: action.to_owned(),
            message: error_chain(&error),
        }
    }
}

fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NotFound | OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}

/// The file's content in `CHUNK`s, read by a thread of its own: a read never blocks the
/// runtime, and the bounded channel keeps at most two chunks in memory.
fn file_chunks(
    path: PathBuf,
) -> impl futures::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    std::thread::spawn(move || {
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) => {
                let _ = sender.blocking_send(Err(OciDistributionError::IoError(error)));
                return;
            }
        };
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            match (&mut file).take(CHUNK as u64).read_to_end(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {
                    // The receiver is gone when the upload failed: stop reading.
                    if sender.blocking_send(Ok(bytes::Bytes::from(chunk))).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender.blocking_send(Err(OciDistributionError::IoError(error)));
                    return;
                }
            }
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// `error`'s message followed by its sources' (reqwest's own message says little alone).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// `sha256:0123456789ab` (the first 12 hex digits), as progress names a blob.
fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |colon| colon + 13);
    digest.get(..end).unwrap_or(digest)
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
