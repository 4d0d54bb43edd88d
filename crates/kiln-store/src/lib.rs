//! Content-addressed storage: BLAKE3 digests of files and folders, an object store that keeps
//! each content once, and small named records ("refs") written atomically.
//!
//! Invariant: nothing in the store is ever half-written. Every write goes to a temporary file in
//! the store's `tmp/` folder and is renamed into place, so a crash (even `kill -9`) leaves either
//! the old state or the new one; refs are flushed to disk after the objects they name. Every
//! other file Kiln writes goes through [`atomic::write`].

pub mod atomic;
mod digest;
mod store;
mod tree;

pub use digest::{Digest, hash_file, hash_reader};
pub use store::{Error, Store};
pub use tree::{Entry, EntryKind, Tree};
