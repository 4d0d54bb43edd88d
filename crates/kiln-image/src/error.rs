//! The one error type of image building: what went wrong, with the path or tool it concerns, and
//! a hint where the user can do something about it.

use std::path::PathBuf;

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

    /// What the user can do about it.
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
            _ => None,
        }
    }
}
