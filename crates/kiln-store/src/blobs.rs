//! The blob backends' one trait: a content-addressed store of blobs (named by their BLAKE3
//! digest) and of trees (a folder's file list, named by [`Tree::digest`]). The filesystem store
//! ([`crate::Store`]) and the S3-compatible store ([`crate::S3Store`]) implement it, and one
//! conformance suite (`tests/it/conformance.rs`) runs against both.
//!
//! Every read is verified: a blob whose content does not hash to its name is
//! [`Error::CorruptObject`], never returned; a tree that does not hash to its name is
//! [`Error::CorruptTree`].

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use crate::{Digest, Error, Tree};

/// A blob as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// When it was last written (or, on the filesystem, last stored again).
    pub modified: SystemTime,
}

/// A content-addressed blob store. Writes are idempotent (the same content under the same
/// name), so concurrent puts of one blob are harmless; a reader sees a whole blob or none.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Where the blobs are, for messages: a folder, or `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// Whether a blob is stored (its content is not read).
    fn has_blob(&self, digest: &Digest) -> Result<bool, Error>;

    /// Stores the file at `source`, whose content must hash to `digest` (checked while it is
    /// copied: a file changed since it was hashed is refused).
    fn put_file(&self, source: &Path, digest: &Digest) -> Result<(), Error>;

    /// Stores `bytes` and returns their digest.
    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, Error>;

    /// The content of a blob, verified.
    fn get_bytes(&self, digest: &Digest) -> Result<Vec<u8>, Error>;

    /// Writes a blob to `destination` atomically (a temporary beside it, renamed into place
    /// only once its content is verified), creating parent folders.
    fn get_file(&self, digest: &Digest, destination: &Path) -> Result<(), Error>;

    /// Reads a blob through and returns the digest of what is stored (for `fsck`).
    fn rehash(&self, digest: &Digest) -> Result<Digest, Error>;

    /// Every blob stored, in no particular order.
    fn list(&self) -> Result<Vec<BlobInfo>, Error>;

    /// Removes a blob; removing one that is not there is not an error.
    fn delete(&self, digest: &Digest) -> Result<(), Error>;

    /// Stores a folder's file list (not its files) and returns its digest.
    fn put_tree(&self, tree: &Tree) -> Result<Digest, Error>;

    /// A folder's file list, verified against its digest; `None` when it is not stored.
    fn get_tree(&self, digest: &Digest) -> Result<Option<Tree>, Error>;
}

/// Checks that `bytes` hash to `digest`.
pub(crate) fn verify(digest: &Digest, actual: Digest, location: &str) -> Result<(), Error> {
    if actual == *digest {
        Ok(())
    } else {
        Err(Error::CorruptObject {
            digest: *digest,
            actual,
            location: location.to_string(),
        })
    }
}

/// Parses a stored tree and checks it against its name (and its paths: see
/// [`crate::paths::check_relative`]).
pub(crate) fn parse_tree(digest: &Digest, bytes: &[u8], location: &str) -> Result<Tree, Error> {
    let corrupt = |reason: String| Error::CorruptTree {
        digest: *digest,
        location: location.to_string(),
        reason,
    };
    let tree: Tree = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if tree.digest() != *digest {
        return Err(corrupt(format!("its entries hash to `{}`", tree.digest())));
    }
    for entry in &tree.entries {
        if let Err(reason) = crate::paths::check_relative(&entry.path) {
            return Err(corrupt(format!("entry `{}`: {reason}", entry.path)));
        }
    }
    Ok(tree)
}

impl fmt::Display for BlobInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.digest, self.size)
    }
}
