//! The store crate's integration tests: one conformance suite run against every blob backend
//! (the filesystem, and a real S3-compatible server on loopback), transfers between them, and
//! `fsck` and `gc`.

mod conformance;
mod maintenance;
