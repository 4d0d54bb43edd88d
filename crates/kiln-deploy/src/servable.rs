//! The servable check of a green run: the artifact is loaded by the engine that would serve it
//! and answers the model's example input, or the run fails and nothing is published. A run that
//! goes green is a model `kiln serve` can serve.
//!
//! A passed check is remembered under `.kiln/servable/<key>`, the key naming the artifact's
//! content, the example's content and the environment: a no-op re-run does not load the model
//! again, and still gets the model's signature and the example it answered, which the pass
//! keeps for the registered version.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_pipeline::python_env::PythonEnvironment;
use kiln_pipeline::workspace::STATE_DIR;
use kiln_pipeline::{Artifact, ArtifactCheck, ServabilityFailure, ServablePass};
use kiln_serve::{ModelConfig, ServerConfig};
use kiln_spec::{Model, Project};
use kiln_store::Digest;
use serde_json::json;

use crate::example::{Example, example_input};
use crate::runtime::{find_onnx_runtime, needs_onnx_runtime};

/// Versions the encoding of the remembered checks' keys (v2: a pass keeps the model's
/// signature and the example it answered).
const KEY_TAG: &str = "kiln-servable-check-v2";

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

    fn onnx_runtime(&self, python: Option<&Path>) -> Result<PathBuf, crate::Error> {
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

    fn probe(
        &self,
        model: &Model,
        artifact: &Artifact,
        environment: Option<&PythonEnvironment>,
        example: Option<&Example>,
    ) -> Result<ServablePass, ServabilityFailure> {
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
        let body = example.map(|e| &e.body);
        let outcome = match kiln_serve::probe(config.clone(), &model.name, body) {
            // Rows found among the model's data may not be its inputs (an unnamed feature
            // matrix, say): that says nothing about the model, so predict on a row generated
            // from its signature instead, and say so.
            Err(kiln_serve::Error::BadExample { message, .. })
                if example.is_some_and(|e| !e.declared) =>
            {
                let found = example.map_or("", |e| e.shown.as_str());
                kiln_serve::probe(config, &model.name, None).map(|probe| {
                    let note = format!(
                        "the rows of `{found}` do not fit the model's input ({message}): declare `example:`"
                    );
                    (probe, Some(note))
                })
            }
            other => other.map(|probe| (probe, None)),
        };
        let (probe, note) = outcome.map_err(|error| ServabilityFailure {
            message: kiln_serve::error_chain(&error),
            detail: error.traceback().map(str::to_string),
        })?;
        let millis = probe.duration.as_millis();
        if probe.rows == 0 {
            return Ok(ServablePass {
                summary: format!("loaded in {millis} ms, no prediction made"),
                warning: Some(format!(
                    "the servable check of `{}` only loaded the model: it has no example input \
                     and no signature to make one from; declare `example:` (a CSV or JSON file of \
                     inputs)",
                    model.name
                )),
                signature: Some(probe.signature),
                example: None,
            });
        }
        let rows = if probe.rows == 1 { "row" } else { "rows" };
        let what = match example {
            Some(example) if note.is_none() => format!("{rows} of `{}`", example.shown),
            _ => format!("generated {rows}"),
        };
        Ok(ServablePass {
            summary: format!("loaded and predicted {} {what} in {millis} ms", probe.rows),
            warning: note.map(|note| format!("servable check of `{}`: {note}", model.name)),
            signature: Some(probe.signature),
            example: probe.example,
        })
    }
}

impl ArtifactCheck for ServableCheck {
    fn check(
        &self,
        project: &Project,
        model: &Model,
        artifact: &Artifact,
        environment: Option<&PythonEnvironment>,
    ) -> Result<ServablePass, ServabilityFailure> {
        let example = example_input(project, model).map_err(|error| ServabilityFailure {
            message: kiln_serve::error_chain(&error),
            detail: error.hint(),
        })?;
        let key = remembered_key(artifact, example.as_ref(), environment);
        let remembered = project
            .root
            .join(STATE_DIR)
            .join("servable")
            .join(key.to_hex());
        if let Some(pass) = read_remembered(&remembered) {
            return Ok(pass);
        }
        let pass = self
            .probe(model, artifact, environment, example.as_ref())
            .map_err(|failure| ServabilityFailure {
                // The user knows the artifact by its declared path, not by where Kiln laid it out.
                message: name_the_artifact(&failure.message, artifact, model),
                detail: failure.detail,
            })?;
        let record = json!({
            "summary": pass.summary,
            "warning": pass.warning,
            "signature": pass.signature,
            "example": pass.example,
        });
        // Remembering is an optimisation: a failure to write only means checking again.
        if let Some(folder) = remembered.parent()
            && std::fs::create_dir_all(folder).is_ok()
        {
            let _ = kiln_store::atomic::write(&remembered, record.to_string().as_bytes());
        }
        Ok(pass)
    }
}

/// What a check depends on: the artifact's content, the example's content, the environment.
fn remembered_key(
    artifact: &Artifact,
    example: Option<&Example>,
    environment: Option<&PythonEnvironment>,
) -> Digest {
    let example = example.map_or_else(String::new, |e| e.body.to_string());
    let fields = [
        KEY_TAG,
        env!("CARGO_PKG_VERSION"),
        &artifact.digest.to_hex(),
        &example,
        environment.map_or("", |e| e.key.as_str()),
    ];
    let mut encoded = Vec::new();
    for field in fields {
        encoded.extend_from_slice(&(field.len() as u64).to_le_bytes());
        encoded.extend_from_slice(field.as_bytes());
    }
    Digest::of_bytes(&encoded)
}

fn read_remembered(path: &Path) -> Option<ServablePass> {
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(ServablePass {
        summary: format!(
            "{} (remembered: same artifact, example and environment)",
            record["summary"].as_str()?
        ),
        warning: record["warning"].as_str().map(str::to_string),
        signature: record.get("signature").filter(|s| !s.is_null()).cloned(),
        example: record.get("example").filter(|e| !e.is_null()).cloned(),
    })
}

fn name_the_artifact(message: &str, artifact: &Artifact, model: &Model) -> String {
    match &model.artifact {
        Some(declared) => message.replace(
            &artifact.path.display().to_string(),
            &format!("{declared} (as run {} made it)", artifact.run),
        ),
        None => message.to_string(),
    }
}
