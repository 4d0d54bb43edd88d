//! Serving a project's model: the registered version a reference names (`iris@production`,
//! `iris@v3`; `iris` is `iris@latest`), published under `.kiln/serving/<model>@<alias>` so that
//! a server swaps versions when the alias moves; its Python environment; ONNX Runtime.
//! `kiln serve MODEL[@ALIAS]` calls [`prepare`]; so will a long-running supervisor.

use std::path::PathBuf;

use kiln_pipeline::python_env::{EnvOptions, ensure_env};
use kiln_pipeline::{Artifact, ModelRef, Version, Workspace};
use kiln_spec::Project;

use crate::Error;
use crate::runtime::{find_onnx_runtime, needs_onnx_runtime};

/// Everything a server needs to serve one of the project's models.
#[derive(Debug, Clone)]
pub struct ServedModel {
    pub name: String,
    /// The registry version served now.
    pub version: Version,
    /// The run and content the model comes from.
    pub artifact: Artifact,
    /// The path to serve: stable while the alias moves (`.kiln/serving/<model>@<alias>/…`).
    pub path: PathBuf,
    /// The file holding the version the path holds now (for the server's version numbers).
    pub version_file: PathBuf,
    /// The interpreter of the model's environment, for `predict.py` workers.
    pub python: Option<PathBuf>,
    /// `libonnxruntime.so`, when the artifact is an ONNX model.
    pub onnx_runtime: Option<PathBuf>,
}

/// Publishes the version `reference` names for serving and prepares what serving it takes.
/// `progress` receives a line per slow step (building the environment, installing ONNX Runtime).
pub fn prepare(
    workspace: &Workspace,
    project: &Project,
    reference: &ModelRef,
    progress: &mut dyn FnMut(&str),
) -> Result<ServedModel, Error> {
    let name = reference.model.as_str();
    let kiln_pipeline::PublishedVersion {
        version,
        artifact,
        path,
        version_file,
    } = kiln_pipeline::publish_version(workspace, project, reference)?;
    let python = match project.model(name).and_then(|m| m.python.as_ref()) {
        Some(python) => {
            let options = EnvOptions::from_env()?;
            let requirements = python.requirements.to_path(&project.root);
            Some(ensure_env(&requirements, &options, &mut |line| progress(line))?.python)
        }
        None => None,
    };
    let onnx_runtime = if needs_onnx_runtime(&path) {
        Some(find_onnx_runtime(python.as_deref(), progress)?)
    } else {
        None
    };
    Ok(ServedModel {
        name: name.to_string(),
        version,
        artifact,
        path,
        version_file,
        python,
        onnx_runtime,
    })
}
