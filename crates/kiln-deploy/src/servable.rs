//! The servable check of a green run: the artifact is loaded by the engine that would serve it
//! and answers the model's example input, or the run fails and nothing is published. A run that
//! goes green is a model `kiln serve` can serve.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;

use kiln_pipeline::python_env::PythonEnvironment;
use kiln_pipeline::{Artifact, ArtifactCheck, ServabilityFailure};
use kiln_serve::{ModelConfig, ServerConfig};
use kiln_spec::{Model, Project};

use crate::example::example_input;
use crate::runtime::{find_onnx_runtime, needs_onnx_runtime};

/// Loads the artifact as `kiln serve` would (one worker or session) and predicts on the
/// model's example input (see [`example_input`]).
#[derive(Debug, Default)]
pub struct ServableCheck {
    /// ONNX Runtime, found once per process.
    onnx_runtime: Mutex<Option<PathBuf>>,
}

impl ServableCheck {
    pub fn new() -> ServableCheck {
        ServableCheck::default()
    }

    fn onnx_runtime(&self, python: Option<&std::path::Path>) -> Result<PathBuf, crate::Error> {
        let mut found = self
            .onnx_runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(library) = found.as_ref() {
            return Ok(library.clone());
        }
        let library = find_onnx_runtime(python, &mut |_| {})?;
        *found = Some(library.clone());
        Ok(library)
    }
}

impl ArtifactCheck for ServableCheck {
    fn check(
        &self,
        project: &Project,
        model: &Model,
        artifact: &Artifact,
        environment: Option<&PythonEnvironment>,
    ) -> Result<String, ServabilityFailure> {
        let failure = |error: &crate::Error| ServabilityFailure {
            message: kiln_serve::error_chain(error),
            detail: error.hint(),
        };
        let python = environment.map(|e| e.python.clone());
        let mut config = ServerConfig::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            vec![ModelConfig {
                name: model.name.clone(),
                path: artifact.path.clone(),
                version_file: None,
            }],
        );
        config.python = python.clone();
        config.python_workers = 1;
        config.onnx_sessions = 1;
        config.watch_interval = None;
        if needs_onnx_runtime(&artifact.path) {
            config.ort_library = Some(
                self.onnx_runtime(python.as_deref())
                    .map_err(|e| failure(&e))?,
            );
        }
        let example = example_input(project, model).map_err(|e| failure(&e))?;
        let declared = model.example.is_some();
        let outcome = match kiln_serve::probe(config.clone(), &model.name, example.as_ref()) {
            // Rows guessed from the data checks may not be the model's inputs (an unnamed
            // feature matrix, say): that says nothing about the model, so predict on a row
            // generated from its signature instead, and say so.
            Err(kiln_serve::Error::BadExample { message, .. }) if !declared => kiln_serve::probe(
                config,
                &model.name,
                None,
            )
            .map(|probe| {
                (
                    probe,
                    Some(format!(
                        "the checked data does not fit its input ({message}): declare `example:`"
                    )),
                )
            }),
            other => other.map(|probe| (probe, None)),
        };
        match outcome {
            Ok((probe, note)) => {
                let what = if probe.rows == 0 {
                    format!(
                        "loaded in {} ms, no prediction (no example input: declare `example:`)",
                        probe.duration.as_millis()
                    )
                } else {
                    format!(
                        "loaded and predicted {} {} row{} in {} ms",
                        probe.rows,
                        if note.is_some() || example.is_none() {
                            "generated"
                        } else {
                            "example"
                        },
                        if probe.rows == 1 { "" } else { "s" },
                        probe.duration.as_millis()
                    )
                };
                Ok(match note {
                    Some(note) => format!("{what}; {note}"),
                    None => what,
                })
            }
            Err(error) => Err(ServabilityFailure {
                message: kiln_serve::error_chain(&error),
                detail: error.traceback().map(str::to_string),
            }),
        }
    }
}
