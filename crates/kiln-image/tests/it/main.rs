//! The image crate's integration tests: pushes to a real registry (`docker-registry` on
//! loopback), read back with `skopeo`.

mod fixtures;
mod push;
