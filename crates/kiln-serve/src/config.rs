//! Immutable server settings, built by the CLI (`kiln serve`) or by tests, and the env vars the crate reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Every environment variable kiln-serve reads, declared once.
pub mod env_vars {
    /// Path of `libonnxruntime.so`; beats every other way of finding it.
    pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
    /// Python interpreter for `predict.py` workers and for finding the `onnxruntime` package.
    pub const KILN_PYTHON: &str = "KILN_PYTHON";
}

/// One model to serve.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name clients address it by (`/v2/models/{name}`).
    pub name: String,
    /// An `.onnx` file, or a directory with a `predict.py`.
    pub path: PathBuf,
    /// A file holding the version being served (e.g. `3`, a registry version), read at each
    /// load and watched with the model; without one, versions count loads (`1`, `2`, ...).
    pub version_file: Option<PathBuf>,
}

impl ModelConfig {
    /// A model named after its file stem (`iris.onnx` -> `iris`) or directory name.
    pub fn from_path(path: &Path) -> ModelConfig {
        let name = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        }
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "model".into());
        ModelConfig {
            name,
            path: path.to_path_buf(),
            version_file: None,
        }
    }

    /// Parses `NAME=PATH`.
    pub fn parse_spec(spec: &str) -> Result<ModelConfig> {
        match spec.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() && is_valid_name(name) => {
                Ok(ModelConfig {
                    name: name.to_string(),
                    path: PathBuf::from(path),
                    version_file: None,
                })
            }
            _ => Err(Error::InvalidModelSpec {
                spec: spec.to_string(),
            }),
        }
    }
}

fn is_valid_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Adaptive batching: requests arriving while the model is busy are run together.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most rows in one batch.
    pub max_batch_size: usize,
    /// How long the first request of a batch may wait for others. Zero: take only what is already queued.
    pub max_batch_delay: Duration,
    /// Most requests waiting for a model; past it a request is answered 503 with `Retry-After` at once, so
    /// that a model slower than its traffic sheds load instead of piling up latency and memory.
    pub max_queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 64,
            max_batch_delay: Duration::ZERO,
            max_queue: 1024,
        }
    }
}

/// Sampled request log.
#[derive(Debug, Clone)]
pub struct RequestLogConfig {
    pub dir: PathBuf,
    /// Fraction of requests logged, 0.0 to 1.0.
    pub sample_rate: f64,
    /// A log file is rotated when it would grow past this many bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one.
    pub max_files: usize,
}

/// The largest request body a server (and a deployment's front) accepts unless told otherwise: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub models: Vec<ModelConfig>,
    pub batch: BatchConfig,
    /// Explicit `libonnxruntime.so` (else see [`crate::ortlib`]).
    pub ort_library: Option<PathBuf>,
    /// Python for `predict.py` models (else `KILN_PYTHON`, else `python3`).
    pub python: Option<PathBuf>,
    /// Worker processes per `predict.py` model.
    pub python_workers: usize,
    /// ONNX Runtime sessions per ONNX model (each runs one batch at a time).
    pub onnx_sessions: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Accept NaN / null for float inputs.
    pub allow_nan: bool,
    /// How often served files are checked for changes; `None` disables hot reload on change.
    pub watch_interval: Option<Duration>,
    pub request_log: Option<RequestLogConfig>,
}

impl ServerConfig {
    pub fn new(addr: SocketAddr, models: Vec<ModelConfig>) -> ServerConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServerConfig {
            addr,
            models,
            batch: BatchConfig::default(),
            ort_library: None,
            python: None,
            python_workers: cores.clamp(1, 4),
            onnx_sessions: cores.clamp(1, 4),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            allow_nan: false,
            watch_interval: Some(Duration::from_secs(1)),
            request_log: None,
        }
    }

    /// The python to run `predict.py` workers with.
    pub fn python_executable(&self) -> PathBuf {
        self.python
            .clone()
            .or_else(|| {
                std::env::var_os(env_vars::KILN_PYTHON)
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("python3"))
    }
}
