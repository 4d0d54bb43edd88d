//! The image crate's integration tests: builds from this machine's own files, and pushes to a
//! real registry (`docker-registry` on loopback), read back with `skopeo`.

mod build;
mod fixtures;
mod push;
