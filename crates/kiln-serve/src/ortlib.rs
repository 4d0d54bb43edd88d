//! Finds and loads the ONNX Runtime shared library (ort's `load-dynamic`), once per process.
//!
//! Order: an explicit path (`--ort-lib` or `ORT_DYLIB_PATH`), then the `onnxruntime` package of the model's
//! python (`--python` / `KILN_PYTHON`), of an active virtualenv, and of `python3` on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::config::env_vars;
use crate::error::{Error, Result};

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment(explicit: Option<&Path>, python: Option<&Path>) -> Result<Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    let path = locate_library(explicit, python)?;
    let load_error = |message: String| Error::OrtLibraryLoad {
        path: path.clone(),
        message,
    };
    let builder = ort::init_from(&path).map_err(|e| load_error(e.to_string()))?;
    let env = builder
        .with_name("kiln-serve")
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    tracing::debug!(path = %path.display(), "loaded onnx runtime");
    Ok(ENVIRONMENT.get_or_init(|| env).clone())
}

/// Where `libonnxruntime.so` is, following the documented order.
pub fn locate_library(explicit: Option<&Path>, python: Option<&Path>) -> Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        searched.push(format!(
            "`{}` (given explicitly, not a file)",
            path.display()
        ));
    }
    if let Some(path) = std::env::var_os(env_vars::ORT_DYLIB_PATH).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        searched.push(format!(
            "`{}` (from `{}`, not a file)",
            path.display(),
            env_vars::ORT_DYLIB_PATH
        ));
    }
    let mut pythons: Vec<PathBuf> = Vec::new();
    if let Some(python) = python {
        pythons.push(python.to_path_buf());
    }
    if let Some(python) = std::env::var_os(env_vars::KILN_PYTHON).filter(|p| !p.is_empty()) {
        pythons.push(PathBuf::from(python));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        pythons.push(PathBuf::from(venv).join("bin/python"));
    }
    pythons.push(PathBuf::from("python3"));
    for python in pythons {
        match library_of_python(&python) {
            Some(path) => return Ok(path),
            None => searched.push(format!(
                "the `onnxruntime` package of `{}`",
                python.display()
            )),
        }
    }
    Err(Error::OrtLibraryNotFound { searched })
}

/// The ONNX Runtime library shipped in `python`'s `onnxruntime` package, if it has one.
fn library_of_python(python: &Path) -> Option<PathBuf> {
    // Asking python for its search path costs ~20 ms; importing onnxruntime would cost far more.
    let output = Command::new(python)
        .args([
            "-c",
            "import sys; print('\\n'.join(p for p in sys.path if p))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|dir| library_in(&Path::new(dir).join("onnxruntime").join("capi")))
}

fn library_in(capi: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(capi)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so")
                    || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
            })
        })
        .collect();
    found.sort();
    found.pop()
}
