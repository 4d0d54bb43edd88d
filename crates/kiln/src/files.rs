//! Files the binary writes for the user (`kiln.yaml`, reports): whole or not at all.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes `contents` to a temporary file beside `path`, then renames it over `path`: a crash leaves
/// either the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let temp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(contents)?;
        // The data must be on disk before the rename makes it visible under the real name.
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // Persist the rename itself; not every platform can open a directory, hence no `?`.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
