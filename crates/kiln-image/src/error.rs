//! The one error type of the image crate (building and pushing): what went wrong, with the
//! path, tool or registry it concerns, and a hint where the user can do something about it.

use std::io;
use std::path::PathBuf;

/// Building or pushing an image that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tool}` is not on PATH: {purpose}")]
    ToolMissing {
        tool: &'static str,
        purpose: &'static str,
        package: &'static str,
    },
    #[error("`{}` needs `{library}`, which is not found on this machine", path.display())]
    LibraryNotFound { path: PathBuf, library: String },
    #[error("the artifact `{}` does not exist", path.display())]
    ArtifactMissing { path: PathBuf },
    #[error("`{reference}` is not a valid image reference name: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("the image layout `{}` is not readable: {message}", path.display())]
    BadLayout { path: PathBuf, message: String },
    #[error("cannot write the OCI document `{what}`: {message}")]
    Oci { what: &'static str, message: String },
    #[error("the Python interpreter `{}` cannot be put in an image: {message}", path.display())]
    Python { path: PathBuf, message: String },
    #[error("cannot read the image layout at `{}`", path.display())]
    LayoutIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The layout's `index.json`, a manifest or a descriptor does not read as OCI says it must.
    #[error("the image layout at `{}` is invalid: {reason}", path.display())]
    LayoutInvalid { path: PathBuf, reason: String },
    #[error("the image layout at `{}` holds no image `{reference}`", layout.display())]
    ImageNotInLayout { layout: PathBuf, reference: String },
    #[error("blob `{digest}` is missing from the image layout at `{}`", layout.display())]
    BlobMissing { layout: PathBuf, digest: String },
    #[error("blob `{digest}` in the image layout at `{}` is {actual} bytes, its descriptor says {expected}", layout.display())]
    BlobSize {
        layout: PathBuf,
        digest: String,
        expected: u64,
        actual: u64,
    },
    /// A destination that is not `REGISTRY/REPOSITORY`.
    #[error("invalid destination `{destination}`: {reason}")]
    BadDestination { destination: String, reason: String },
    #[error("invalid tag `{tag}`: {reason}")]
    BadTag { tag: String, reason: &'static str },
    /// The registry's address did not answer: nothing listens, the name does not resolve, TLS
    /// failed, or it timed out.
    #[error("cannot reach the registry `{registry}` over {scheme}")]
    Unreachable {
        registry: String,
        scheme: &'static str,
        insecure_allowed: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// 401 or 403 from the registry (or its token service). `credentials` says which were
    /// tried, never their values.
    #[error("the registry `{registry}` refused to {action} (HTTP {status}) with {credentials}")]
    Denied {
        registry: String,
        action: String,
        status: u16,
        credentials: String,
    },
    #[error("the registry `{registry}` failed to {action}: {message}")]
    Registry {
        registry: String,
        action: String,
        message: String,
    },
    /// `KILN_REGISTRY_USERNAME` without `KILN_REGISTRY_PASSWORD`, or the other way round.
    #[error("`{set}` is set but `{unset}` is not")]
    HalfCredentials {
        set: &'static str,
        unset: &'static str,
    },
    #[error("cannot read registry credentials from the Docker config file `{}`: {reason}", path.display())]
    DockerConfig { path: PathBuf, reason: String },
    #[error("cannot start the runtime that drives the registry client")]
    Runtime(#[source] io::Error),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// What the user can do about the error, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::ToolMissing { package, .. } => Some(format!(
                "install the Debian package `{package}` (`apt-get install {package}`)"
            )),
            Error::LibraryNotFound { .. } => Some(
                "install the package providing it, or point `LD_LIBRARY_PATH` at it".to_string(),
            ),
            Error::ArtifactMissing { .. } => Some(
                "the version's content is gone from the store: run `kiln store fsck`, or run the pipeline again".to_string(),
            ),
            Error::BadLayout { .. } => {
                Some("remove the folder, or give another one with `--output`".to_string())
            }
            Error::ImageNotInLayout { reference, .. } => Some(format!(
                "build it first: `kiln image build {reference}`"
            )),
            Error::BlobMissing { .. } | Error::BlobSize { .. } | Error::LayoutInvalid { .. } => {
                Some("build the image again: `kiln image build`".to_owned())
            }
            Error::BadDestination { .. } => Some(
                "give the registry's host (and port) and the repository, e.g. `127.0.0.1:5000/team/iris` or `ghcr.io/acme/iris`; tags come from the version"
                    .to_owned(),
            ),
            Error::Unreachable {
                scheme,
                insecure_allowed,
                ..
            } => Some(if *scheme == "HTTPS" && !insecure_allowed {
                "check the address; a registry that speaks plain HTTP off loopback needs `--insecure`"
                    .to_owned()
            } else {
                "check the address and that the registry is running".to_owned()
            }),
            Error::Denied { .. } => Some(format!(
                "set `{}` and `{}`, or log in with `docker login` (its config file's `auths`), with credentials allowed to push",
                crate::env_vars::KILN_REGISTRY_USERNAME,
                crate::env_vars::KILN_REGISTRY_PASSWORD
            )),
            Error::HalfCredentials { .. } => {
                Some("set both, or neither to use the Docker config file".to_owned())
            }
            _ => None,
        }
    }
}
