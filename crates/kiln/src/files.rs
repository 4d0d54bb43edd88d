//! Files the binary writes for the user (`kiln.yaml`, reports): whole or not at all, through
//! the one atomic writer every part of Kiln uses (`kiln_store::atomic`).

use std::path::Path;

/// Writes `contents` to `path` atomically and durably: a crash leaves either the old file or
/// the new one, never half of one.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    kiln_store::atomic::write(path, contents)
}
