//! `kiln init`: writes the commented `kiln.yaml` that `kiln_spec::init::scaffold` guesses from
//! the repository layout.

use std::path::Path;

use anyhow::Context as _;

use crate::error::{CliError, Result};

/// Writes `kiln.yaml` under `root` and returns the path written. An existing `kiln.yaml` is
/// kept unless `force`: it may hold hours of hand edits.
pub fn run(root: &Path, force: bool) -> Result<String> {
    let path = root.join(kiln_spec::KILN_FILE);
    if path.exists() && !force {
        return Err(CliError::Other(anyhow::anyhow!(
            "`{}` already exists (pass `--force` to replace it with a fresh scaffold)",
            path.display()
        )));
    }
    let text = kiln_spec::init::scaffold(root)?;
    crate::files::write_atomically(&path, text.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(path.display().to_string())
}
