//! The pipeline engine: plans a project's stages as a DAG, runs them in parallel in their
//! Python environments, skips or restores stages whose inputs are unchanged, runs data checks
//! and gates, and records every run.
//!
//! Invariant: a stage's cache entry is written only after all its outs are in the store and its
//! data checks passed, so a crash at any point leaves nothing the next run cannot trust.

pub mod artifact;
pub mod checks;
pub mod gates;
pub mod git;
mod gitignore;
pub mod hashing;
pub mod inputs;
pub mod params;
pub mod python_env;
pub mod run;
pub mod stage;
pub mod status;
pub mod workspace;

use std::path::{Path, PathBuf};

pub use artifact::{Artifact, latest_artifact, publish};
pub use params::{Override, ParamWrite};
pub use run::{Event, FailureKind, Observer, Outcome, RunOptions, RunReport, run};
pub use status::{StageStatus, StatusReport, status};
pub use workspace::Workspace;

/// A pipeline operation that failed before or outside the stages themselves (a failing stage
/// is a result, not an error: see [`RunReport`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    #[error(transparent)]
    Params(kiln_spec::values::ValuesError),
    #[error("cannot apply `--set` to `{file}`")]
    SetParam {
        file: String,
        #[source]
        source: kiln_spec::edit::EditError,
    },
    #[error("param `{key}` is not in `{file}` of model `{model}` (known params: {known})")]
    UnknownParam {
        key: String,
        model: String,
        file: String,
        known: String,
    },
    #[error("no model `{name}` in this project (models: {known})")]
    UnknownModel { name: String, known: String },
    #[error(transparent)]
    PythonEnv(#[from] python_env::PythonEnvError),
    #[error("{0}")]
    Status(String),
    #[error("{0}")]
    Artifact(String),
    #[error("another `kiln run` is running in this project")]
    Busy,
}

impl Error {
    pub(crate) fn unknown_model(project: &kiln_spec::Project, name: &str) -> Error {
        let known: Vec<&str> = project.models.iter().map(|m| m.name.as_str()).collect();
        Error::UnknownModel {
            name: name.to_string(),
            known: known.join(", "),
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
