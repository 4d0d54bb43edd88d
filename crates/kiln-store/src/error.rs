//! The one error type of the store crate: every backend (the filesystem, S3) fails with it.

use std::io;
use std::path::{Path, PathBuf};

use crate::Digest;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` changed while Kiln was storing it", path.display())]
    ChangedWhileStoring { path: PathBuf },
    #[error("`{}` is not a regular file and cannot be stored", path.display())]
    NotAFile { path: PathBuf },
    #[error("blob `{digest}` is missing from the store at `{location}`")]
    MissingObject { digest: Digest, location: String },
    /// What is stored under a digest does not hash to it: a flipped bit on disk, a truncated
    /// upload, a file edited in the store by hand.
    #[error(
        "blob `{digest}` in the store at `{location}` is corrupt: its content hashes to `{actual}`"
    )]
    CorruptObject {
        digest: Digest,
        actual: Digest,
        location: String,
    },
    #[error("tree `{digest}` in the store at `{location}` is corrupt: {reason}")]
    CorruptTree {
        digest: Digest,
        location: String,
        reason: String,
    },
    /// A path from a tree or an artifact that would land outside the folder it is restored into.
    #[error("refusing to write `{path}` under `{}`: {reason}", root.display())]
    UnsafePath {
        root: PathBuf,
        path: String,
        reason: &'static str,
    },
    #[error("cannot {action} `{key}` in `{location}`")]
    Remote {
        action: &'static str,
        key: String,
        location: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// `KILN_STORE_URL` or the variables that go with it are wrong.
    #[error("invalid remote store configuration: {message}")]
    Config { message: String },
    #[error("cannot start the runtime that drives the remote store")]
    Runtime(#[source] io::Error),
}

impl Error {
    /// What the user can do about it, for the binary to show apart from the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::CorruptObject { .. } | Error::CorruptTree { .. } => Some(
                "run `kiln store fsck` to list every damaged blob and what names it".to_string(),
            ),
            Error::MissingObject { .. } => Some(
                "rerun the stage that made it (`kiln run --force`), or configure the remote store that holds it (`KILN_STORE_URL`)"
                    .to_string(),
            ),
            Error::Config { .. } => Some(format!(
                "set `{}` to `s3://BUCKET/PREFIX`, with `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` as for any S3 client",
                crate::config::env_vars::KILN_STORE_URL
            )),
            Error::Remote { .. } => Some(
                "check that the bucket exists and that the `AWS_*` variables give access to it"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}
