//! Moving a registered version between machines: `kiln models export` writes a tar holding a
//! manifest (format version, model, version, lineage, the artifact and the list of blobs with
//! their sizes) and the artifact's blobs; `kiln models import` checks all of it before the
//! store or the registry is touched, then stores the blobs and registers the version with its
//! origin.
//!
//! The archive, in this order: `manifest.json`, then `blobs/<digest>` for each blob named by
//! the manifest, and nothing else. An import refuses anything else: other names, `..`,
//! absolute paths, links, device files, a blob whose size or digest is not the manifest's, a
//! missing blob (a truncated file), a manifest of a newer format. Blobs are staged in the
//! store's `tmp/` (removed on failure, and by the next open after a crash) and committed only
//! once all of them are checked: a refused import leaves nothing behind.

mod export;
mod import;
mod manifest;

use std::path::PathBuf;

pub use export::{Exported, export_version};
pub use import::{Imported, import_version};
pub use manifest::{FORMAT, FORMAT_VERSION};

/// An export or import that failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot read `{}`", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{}`", file.display())]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a readable tar archive, or it is truncated or corrupt", file.display())]
    Corrupt {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a Kiln model export: {reason}", file.display())]
    NotAnExport { file: PathBuf, reason: String },
    #[error(
        "`{}` was exported by a newer Kiln (format {found}; this Kiln reads format {known})",
        file.display()
    )]
    NewerFormat {
        file: PathBuf,
        found: u64,
        known: u64,
    },
    #[error("the manifest of `{}` is invalid: {reason}", file.display())]
    BadManifest { file: PathBuf, reason: String },
    #[error("`{}` holds `{entry}`, {reason}: nothing was imported", file.display())]
    UnsafeEntry {
        file: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("blob `{digest}` in `{}` is corrupt: {reason}; nothing was imported", file.display())]
    CorruptBlob {
        file: PathBuf,
        digest: String,
        reason: String,
    },
    #[error(
        "`{}` is truncated or incomplete: it lacks blob `{digest}`, which its manifest names; nothing was imported",
        file.display()
    )]
    MissingBlob { file: PathBuf, digest: String },
    #[error("the registry or the store names `{text}` as a digest, which it is not")]
    NotADigest { text: String },
    #[error(
        "the store does not hold the artifact of `{model}` v{version} as it was registered (`{digest}`)"
    )]
    ArtifactMismatch {
        model: String,
        version: kiln_registry::Version,
        digest: String,
    },
}

impl TransferError {
    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            TransferError::NewerFormat { .. } => {
                Some("import it with the Kiln that exported it, or a newer one".to_string())
            }
            TransferError::Corrupt { .. }
            | TransferError::CorruptBlob { .. }
            | TransferError::MissingBlob { .. }
            | TransferError::UnsafeEntry { .. }
            | TransferError::BadManifest { .. } => Some(
                "export the version again with `kiln models export MODEL@vN FILE.tar` and copy the whole file"
                    .to_string(),
            ),
            TransferError::NotAnExport { .. } => Some(
                "`kiln models import` reads files written by `kiln models export`".to_string(),
            ),
            TransferError::ArtifactMismatch { .. } => Some(
                "the store lost part of it: `kiln run --force` stores the model's outs again"
                    .to_string(),
            ),
            TransferError::Read { .. }
            | TransferError::Write { .. }
            | TransferError::NotADigest { .. } => None,
        }
    }

    /// Whether the error is about the file the user gave (as opposed to Kiln's own state).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            TransferError::Write { .. }
                | TransferError::ArtifactMismatch { .. }
                | TransferError::NotADigest { .. }
        )
    }
}
