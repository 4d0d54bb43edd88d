//! The pipeline engine: plans a project's stages as a DAG, runs them in parallel in their
//! Python environments, skips or restores stages whose inputs are unchanged, runs data checks
//! and gates, and records every run.
//!
//! Invariant: a stage's cache entry is written only after all its outs are in the store and its
//! data checks passed, so a crash at any point leaves nothing the next run cannot trust.

pub mod aliases;
pub mod artifact;
pub mod checkout;
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
pub mod store_roots;
pub mod training_data;
pub mod transfer;
pub mod watch;
pub mod workspace;

use std::path::{Path, PathBuf};

use kiln_registry::RunId;
use kiln_spec::RelPath;

pub use aliases::{AliasChange, AliasMoved, move_alias};
pub use artifact::{
    Artifact, PublishedVersion, latest_artifact, publish, publish_alias, publish_version,
    republish_stale_aliases, version_artifact, version_out,
};
pub use checkout::{Checkout, Commit, Repo, find_repo};
pub use kiln_registry::{ModelRef, Selector, Version};
pub use params::{Override, ParamWrite};
pub use run::{
    ArtifactCheck, Event, FailureKind, Observer, Outcome, RunOptions, RunReport,
    ServabilityFailure, ServablePass, run,
};
pub use status::{StageStatus, StatusReport, status};
pub use watch::{BranchWatch, WatchSource};
pub use workspace::Workspace;

/// A pipeline operation that failed before or outside the stages themselves (a failing stage
/// is a result, not an error: see [`RunReport`]; Kiln failing to do its part for one stage is
/// recorded as that stage's [`run::Failure::Internal`], with one of these as the cause).
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
    #[error(
        "no stage of model `{model}` declares param `{key}` of `{file}`: setting it would change the file and no stage would run with it"
    )]
    UndeclaredParam {
        key: String,
        model: String,
        file: String,
        /// The key's top-level section, for the hint.
        section: String,
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
    #[error("another `kiln run` is running in this project")]
    Busy,
    #[error("cannot hash `{path}`")]
    Hash {
        path: RelPath,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `sh -c {command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the stage cache entry `{key}` names `{path}`, which is not a path in the project")]
    CacheEntryPath { key: String, path: String },
    #[error("the file list of `{out}` (`{digest}`) is missing from the store")]
    TreeMissing { out: RelPath, digest: String },
    #[error("the object of `{path}` is missing from the store")]
    ObjectMissing { path: RelPath },
    #[error("model `{model}` declares no `artifact` in `{}`", file.display())]
    NoArtifact { model: String, file: PathBuf },
    #[error("model `{model}` has no succeeded run yet")]
    NoGreenRun { model: String },
    #[error("run {run} of model `{model}` recorded no out holding its artifact `{artifact}`")]
    ArtifactNotRecorded {
        model: String,
        run: RunId,
        artifact: RelPath,
    },
    #[error("the out `{out}` of run {run} holds no `{artifact}`, the artifact of model `{model}`")]
    ArtifactMissing {
        model: String,
        run: RunId,
        out: RelPath,
        artifact: RelPath,
    },
    #[error("cannot profile the training data `{path}` of model `{model}`")]
    Profile {
        model: String,
        /// As the user knows it: relative to the project root.
        path: String,
        #[source]
        source: kiln_profile::Error,
    },
    #[error(
        "version {version} of model `{model}` was imported, but the store holds no record of its artifact"
    )]
    ImportRecordMissing { model: String, version: Version },
    #[error(transparent)]
    Transfer(#[from] transfer::TransferError),
    #[error("run {run} recorded the out `{path}` with a digest that is not one: `{digest}`")]
    BadDigest {
        run: RunId,
        path: String,
        digest: String,
    },
    #[error("cannot read the git repository at `{}`", path.display())]
    GitRead {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot start `git`")]
    GitSpawn {
        #[source]
        source: std::io::Error,
    },
    #[error("`git {command}` failed: {detail}")]
    GitFailed { command: String, detail: String },
    #[error("`{sha}` is not a full commit id")]
    NotACommitId { sha: String },
    #[error("commit `{commit}` has no folder `{}`: the project is not in it", folder.display())]
    ProjectNotInCommit { folder: PathBuf, commit: String },
    #[error("another Kiln process is running commit `{commit}` in a checkout")]
    CheckoutBusy { commit: String },
    #[error("HEAD is not on a branch (detached at `{commit}`): there is no branch to watch")]
    DetachedHead { commit: String },
    #[error("`{branch}` is not a valid branch name")]
    BadBranchName { branch: String },
    #[error("no branch `{branch}` in {place}")]
    BranchNotFound {
        branch: String,
        /// `this repository`, or `remote `origin``.
        place: String,
        /// The branches there, comma-separated, for the hint (empty when unknown).
        known: String,
    },
    #[error("no git remote `{remote}` in this repository (remotes: {known})")]
    RemoteNotFound { remote: String, known: String },
    #[error("cannot fetch branch `{branch}` from `{remote}`: {detail}")]
    Fetch {
        remote: String,
        branch: String,
        detail: String,
    },
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

    /// What the user can do about it, when Kiln knows; shown apart from the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Busy => {
                Some("wait for it to finish, or stop it (Ctrl-C) before starting another".into())
            }
            Error::UndeclaredParam { section, .. } => Some(format!(
                "add `params: [{section}]` to the stage that reads it: Kiln reruns a stage when a param it declares changes"
            )),
            Error::UnknownParam { .. } => {
                Some("`--set` takes a key of the params file, e.g. `--set train.C=0.5`".into())
            }
            Error::PythonEnv(error) => error.hint(),
            Error::Transfer(error) => error.hint(),
            Error::ImportRecordMissing { .. } => {
                Some("import the version's export file again with `kiln models import FILE`".into())
            }
            Error::Registry(error) => error.hint(),
            Error::NoArtifact { model, .. } => Some(format!(
                "add `artifact: PATH` to model `{model}`, naming the file or folder a stage writes for serving"
            )),
            Error::NoGreenRun { model } => Some(format!("run `kiln run {model}` first")),
            Error::Profile { source, .. } => source.hint(),
            Error::ArtifactMissing { .. } => {
                Some("make the stage write the artifact, or fix the `artifact` path".into())
            }
            Error::ArtifactNotRecorded { .. } => Some(
                "list the artifact (or a folder holding it) in the `outs` of one of the model's stages"
                    .into(),
            ),
            Error::TreeMissing { .. } | Error::ObjectMissing { .. } => {
                Some("run `kiln run --force` to store the outs again".into())
            }
            Error::Store(error) => error.hint(),
            Error::CheckoutBusy { .. } => {
                Some("wait for it to finish, or stop it (Ctrl-C) before starting another".into())
            }
            Error::GitSpawn { .. } => Some("install git and put it on `PATH`".into()),
            Error::DetachedHead { .. } => {
                Some("check out a branch, or name the branch to watch".into())
            }
            Error::BranchNotFound { known, place, .. } if !known.is_empty() => {
                Some(format!("branches of {place}: {known}"))
            }
            Error::RemoteNotFound { remote, .. } => {
                Some(format!("add it with `git remote add {remote} URL`"))
            }
            Error::Fetch { remote, .. } => Some(format!(
                "check the network and the remote's URL (`git remote get-url {remote}`); git runs without prompting, so credentials must come from a credential helper or an SSH agent"
            )),
            _ => None,
        }
    }
}
