//! `kiln init`: writes the commented `kiln.yaml` that `kiln_spec::init::scaffold` guesses from
//! the repository layout.

use std::path::Path;

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
    crate::files::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(path.display().to_string())
}
