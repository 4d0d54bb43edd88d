//! The one error type of kiln-deploy.

use std::path::PathBuf;

/// Something that stopped Kiln from preparing or checking a model for serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pipeline(#[from] kiln_pipeline::Error),
    #[error(transparent)]
    PythonEnv(#[from] kiln_pipeline::python_env::PythonEnvError),
    #[error(transparent)]
    Serve(#[from] kiln_serve::Error),
    #[error("cannot read the example input `{}`", path.display())]
    Example {
        path: PathBuf,
        #[source]
        source: ExampleError,
    },
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another `kiln up` supervises this project{}", pid.map_or(String::new(), |pid| format!(" (pid {pid})")))]
    SupervisorRunning { pid: Option<u32> },
    #[error("cannot install ONNX Runtime into Kiln's cache (`{}`)", path.display())]
    ManagedRuntime {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an example input file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Shape(String),
}

impl Error {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Pipeline(error) => error.hint(),
            Error::PythonEnv(error) => error.hint(),
            Error::Serve(error) => error.hint(),
            Error::Example { .. } => Some(
                "`example:` names a CSV file with a header row, or a JSON list of records".into(),
            ),
            Error::Registry(error) => error.hint(),
            Error::Io { .. } => None,
            Error::SupervisorRunning { .. } => Some(
                "stop it (Ctrl-C where it runs), or use `kiln deploy`, `kiln promote` and `kiln ps`, which work with the running one".into(),
            ),
            Error::ManagedRuntime { .. } => Some(
                "install the `onnxruntime` package into the model's Python environment, or pass `--ort-lib`"
                    .into(),
            ),
        }
    }
}
