//! ONNX Runtime for a served model: found as the server would find it, else installed once into
//! a Kiln-managed Python environment in the cache (the `onnxruntime` wheel carries the library).

use std::path::{Path, PathBuf};

use kiln_pipeline::python_env::{EnvOptions, ensure_env};

use crate::Error;

/// True when serving `path` needs ONNX Runtime: an `.onnx` file or one without an extension (the
/// server serves those as ONNX), or a folder holding `model.onnx`.
pub fn needs_onnx_runtime(path: &Path) -> bool {
    if path.is_file() {
        return path.extension().is_none_or(|e| e == "onnx");
    }
    path.join("model.onnx").is_file()
}

/// `libonnxruntime.so`: as given (`ORT_DYLIB_PATH`), else from `python`'s `onnxruntime` package
/// (or the default python's), else from an environment Kiln builds once in its cache.
pub fn find_onnx_runtime(
    python: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, Error> {
    if let Ok(library) = kiln_serve::ortlib::locate_library(None, python) {
        return Ok(library);
    }
    let options = EnvOptions::from_env()?;
    let requirements = options
        .cache_root
        .join("runtime")
        .join("onnxruntime-requirements.txt");
    // Written whole or not at all: a half-written file would build an environment without it.
    if std::fs::read(&requirements).ok().as_deref() != Some(b"onnxruntime\n".as_slice()) {
        let folder = requirements.parent().unwrap_or(&options.cache_root);
        std::fs::create_dir_all(folder)
            .and_then(|()| kiln_store::atomic::write(&requirements, b"onnxruntime\n"))
            .map_err(|source| Error::ManagedRuntime {
                path: requirements.clone(),
                source,
            })?;
    }
    progress("installing ONNX Runtime into Kiln's cache (once)");
    let environment = ensure_env(&requirements, &options, &mut |line| progress(line))?;
    Ok(kiln_serve::ortlib::locate_library(
        None,
        Some(&environment.python),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_files_and_folders_with_model_onnx_need_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("m.onnx");
        std::fs::write(&onnx, b"x").unwrap();
        assert!(needs_onnx_runtime(&onnx));
        let pickle = dir.path().join("m.pkl");
        std::fs::write(&pickle, b"x").unwrap();
        assert!(!needs_onnx_runtime(&pickle));
        let folder = dir.path().join("model");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("predict.py"), b"").unwrap();
        assert!(!needs_onnx_runtime(&folder));
        std::fs::write(folder.join("model.onnx"), b"").unwrap();
        assert!(needs_onnx_runtime(&folder));
    }
}
