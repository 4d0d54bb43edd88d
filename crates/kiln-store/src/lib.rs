//! Content-addressed storage: BLAKE3 digests of files and folders, blob stores that keep each
//! content once (the filesystem store under `.kiln/store`, and an S3-compatible one behind the
//! same [`BlobStore`] trait), small named records ("refs") written atomically, and the
//! maintenance of a store (`fsck`, `gc`).
//!
//! Invariant: nothing in the store is ever half-written. Every write goes to a temporary file in
//! the store's `tmp/` folder and is renamed into place, so a crash (even `kill -9`) leaves either
//! the old state or the new one; refs are flushed to disk after the objects they name. Every
//! other file Kiln writes goes through [`atomic::write`]. Every read of a blob from a backend
//! is verified against its digest.

pub mod atomic;
mod blobs;
pub mod config;
mod digest;
mod error;
pub mod lock;
pub mod maintenance;
pub mod paths;
pub mod runtime;
mod s3;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod transfer;
mod tree;

pub use blobs::{BlobInfo, BlobStore};
pub use config::S3Config;
pub use digest::{Digest, hash_file, hash_reader};
pub use error::Error;
pub use s3::{PART_SIZE, S3Store};
pub use store::{Store, TREES};
pub use transfer::Transfer;
pub use tree::{Entry, EntryKind, Tree};

/// The remote store the environment configures (`KILN_STORE_URL`), opened; `None` when none is.
pub fn remote_from_env() -> Result<Option<S3Store>, Error> {
    S3Config::from_env()?
        .map(|config| S3Store::open(&config))
        .transpose()
}
