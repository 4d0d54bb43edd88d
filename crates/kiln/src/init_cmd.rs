//! `kiln init`: writes the commented `kiln.yaml` that `kiln_spec::init::scaffold` guesses from
//! the repository layout.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

/// Writes `kiln.yaml` under `root` and returns the path written. An existing `kiln.yaml` is
/// kept unless `force`: it may hold hours of hand edits.
pub fn run(root: &Path, force: bool) -> anyhow::Result<String> {
    let path = root.join(kiln_spec::KILN_FILE);
    if path.exists() && !force {
        bail!(
            "`{}` already exists\nhint: pass `--force` to replace it with a fresh scaffold",
            path.display()
        );
    }
    let text = kiln_spec::init::scaffold(root).map_err(|error| match error.hint() {
        Some(hint) => anyhow!("{error}\nhint: {hint}"),
        None => anyhow::Error::new(error),
    })?;
    write_atomically(&path, &text).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(path.display().to_string())
}

/// Writes `text` to a temporary file beside `path`, then renames it over `path`: a crash leaves
/// either the old file or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "kiln.yaml".into(), |n| n.to_string_lossy().into_owned());
    let temp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
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
