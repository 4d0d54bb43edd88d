//! The crate's error type: everything that can go wrong while loading models or running the server.
//!
//! Errors a client causes are not here: they are [`crate::api_error::ApiError`] values, answered over HTTP.

use std::path::PathBuf;

/// Why the server could not start, or a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot find the onnx runtime library (`libonnxruntime.so`)")]
    OrtLibraryNotFound {
        /// The places that were searched, for the hint.
        searched: Vec<String>,
    },
    #[error("cannot load the onnx runtime library `{path}`: {message}")]
    OrtLibraryLoad { path: PathBuf, message: String },
    #[error("cannot load onnx model `{path}`")]
    OnnxModel {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error("onnx model `{path}` is not supported: {reason}")]
    UnsupportedModel { path: PathBuf, reason: String },
    #[error("model path `{path}` does not exist")]
    ModelPathMissing { path: PathBuf },
    #[error("model directory `{path}` has neither a `predict.py`, a `model.onnx` nor an `MLmodel`")]
    UnknownModelKind { path: PathBuf },
    #[error("`{}` is not an ONNX model, and Kiln serves a file only as ONNX", path.display())]
    NotOnnx { path: PathBuf },
    #[error("invalid model spec `{spec}`, expected `NAME=PATH`")]
    InvalidModelSpec { spec: String },
    #[error("model name `{name}` is used twice")]
    DuplicateModel { name: String },
    #[error("no model to serve")]
    NoModels,
    #[error("model `{name}` is not known to this server")]
    UnknownModel { name: String },
    #[error("python worker for model `{model}` failed to start: {message}")]
    PythonWorkerStart {
        model: String,
        /// The model's own error (`ModuleNotFoundError: No module named 'x'`) or why the worker died.
        message: String,
        /// The python traceback, when the model's code raised.
        traceback: Option<String>,
    },
    #[error("model `{model}` failed to predict on the example: {message}")]
    ModelFailed {
        model: String,
        /// The model's own error (`ValueError: unlucky input`), or what was wrong with its output.
        message: String,
        /// The python traceback, when the model's code raised.
        traceback: Option<String>,
    },
    #[error("the example for model `{model}` does not fit it: {message}")]
    BadExample {
        model: String,
        message: String,
        /// The part of the example at fault (`dataframe_split.columns`).
        field: Option<String>,
    },
    #[error("cannot start python interpreter `{python}`")]
    PythonSpawn {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model `{model}` failed its check after loading: {message}")]
    ModelCheck { model: String, message: String },
    #[error("cannot listen on `{addr}`")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create request log directory `{path}`")]
    RequestLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A line telling the user how to fix the problem, where there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::OrtLibraryNotFound { searched } => Some(format!(
                "install the `onnxruntime` python package (`pip install onnxruntime`) into the model's environment, \
                 or point `ORT_DYLIB_PATH` (or `--ort-lib`) at `libonnxruntime.so`; searched: {}",
                searched.join(", ")
            )),
            Error::UnknownModelKind { .. } => Some(
                "serve a `model.onnx` file, a directory containing `predict.py` with a `predict(inputs)` function, \
                 or an MLflow model directory (`mlflow.sklearn.save_model` and friends write one)"
                    .into(),
            ),
            Error::NotOnnx { .. } => Some(
                "serve a folder holding it and a `predict.py` that loads it (`load(model_dir)`), or export the model to ONNX"
                    .into(),
            ),
            Error::PythonWorkerStart { message, .. } if message.contains("No module named") => Some(
                "install the missing package into the model's environment (`python: {requirements: ...}` \
                 in kiln.yaml, or `--python` naming an interpreter that has it); an MLflow model folder \
                 lists what it needs in its `requirements.txt`"
                    .into(),
            ),
            Error::InvalidModelSpec { .. } => Some("for example `--model iris=models/iris.onnx`".into()),
            Error::Bind { .. } => Some("pick another port with `--port`, or `--port 0` for a free one".into()),
            _ => None,
        }
    }
}

impl Error {
    /// The python traceback behind this error, when model code raised (for a local CLI to show; never sent
    /// to HTTP clients).
    pub fn traceback(&self) -> Option<&str> {
        match self {
            Error::PythonWorkerStart { traceback, .. } | Error::ModelFailed { traceback, .. } => {
                traceback.as_deref()
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
