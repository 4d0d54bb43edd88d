//! A model's artifact as its latest green run produced it, taken from the store (not from the
//! workspace, which may have changed since) and laid out under `.kiln/artifacts/` for serving.

use std::path::PathBuf;

use kiln_registry::{RunId, Status};
use kiln_spec::{Project, RelPath};
use kiln_store::{Digest, EntryKind, Tree};

use crate::Error;
use crate::stage::{CachedOut, TREES};
use crate::workspace::Workspace;

/// A model's artifact from one run.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub model: String,
    pub run: RunId,
    pub digest: Digest,
    /// The artifact, materialised: a file or a folder.
    pub path: PathBuf,
}

/// Runs searched for a green one, newest first.
const RUNS_SEARCHED: usize = 500;

/// The artifact of the newest succeeded run of `model`.
pub fn latest_artifact(
    workspace: &Workspace,
    project: &Project,
    model: &str,
) -> Result<Artifact, Error> {
    let declared = project
        .model(model)
        .ok_or_else(|| Error::unknown_model(project, model))?;
    let artifact = declared.artifact.clone().ok_or_else(|| {
        Error::Artifact(format!(
            "model `{model}` declares no `artifact` in `{}`",
            project.file.display()
        ))
    })?;
    let run = workspace
        .registry
        .runs(Some(model), RUNS_SEARCHED)?
        .into_iter()
        .find(|run| run.status == Status::Succeeded)
        .ok_or_else(|| {
            Error::Artifact(format!(
                "model `{model}` has no succeeded run yet: run `kiln run {model}` first"
            ))
        })?;
    let detail = workspace.registry.run(run.id)?;
    // The outs as this run recorded them: the stage cache may hold a later run's by now.
    for stage in &detail.stages {
        let Some(outs) = &stage.outs else { continue };
        let Ok(outs) = serde_json::from_str::<Vec<CachedOut>>(outs) else {
            continue;
        };
        for out in &outs {
            let Some(out_path) = RelPath::resolve(&RelPath::root(), &out.path) else {
                continue;
            };
            if artifact.is_within(&out_path) {
                return materialise(
                    workspace, model, run.id, &artifact, &out_path, out.kind, out.digest,
                );
            }
        }
    }
    Err(Error::Artifact(format!(
        "run {} of model `{model}` recorded no out holding `{artifact}`",
        run.id
    )))
}

fn materialise(
    workspace: &Workspace,
    model: &str,
    run: RunId,
    artifact: &RelPath,
    out: &RelPath,
    kind: EntryKind,
    digest: Digest,
) -> Result<Artifact, Error> {
    let name = artifact
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .to_string();
    let files: Vec<(String, Digest, bool)> = match kind {
        EntryKind::File => vec![(String::new(), digest, false)],
        EntryKind::Dir => {
            let bytes = workspace
                .store
                .read_ref(TREES, &digest.to_hex())?
                .ok_or_else(|| {
                    Error::Artifact(format!(
                        "the file list of `{out}` is missing from the store"
                    ))
                })?;
            let tree: Tree = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Artifact(format!("the file list of `{out}` is damaged: {e}"))
            })?;
            // The artifact may be the whole folder or a part of it.
            let inner = artifact
                .as_str()
                .strip_prefix(out.as_str())
                .unwrap_or("")
                .trim_start_matches('/')
                .to_string();
            tree.entries
                .into_iter()
                .filter_map(|e| {
                    if inner.is_empty() {
                        Some((e.path, e.digest, e.executable))
                    } else if e.path == inner {
                        Some((String::new(), e.digest, e.executable))
                    } else {
                        e.path
                            .strip_prefix(&format!("{inner}/"))
                            .map(|rest| (rest.to_string(), e.digest, e.executable))
                    }
                })
                .collect()
        }
    };
    let single_file = files.len() == 1 && files[0].0.is_empty();
    let identity = if single_file { files[0].1 } else { digest };
    let path = workspace
        .state_dir
        .join("artifacts")
        .join(identity.to_hex())
        .join(&name);
    let complete = workspace
        .state_dir
        .join("artifacts")
        .join(identity.to_hex())
        .join(format!(".complete-{name}"));
    if !complete.exists() {
        for (relative, file_digest, executable) in &files {
            let target = if relative.is_empty() {
                path.clone()
            } else {
                path.join(relative)
            };
            workspace
                .store
                .restore_file(file_digest, &target, *executable)?;
        }
        std::fs::write(&complete, b"").map_err(|source| Error::io("write", &complete, source))?;
    }
    Ok(Artifact {
        model: model.to_string(),
        run,
        digest: identity,
        path,
    })
}

/// Points `.kiln/serving/<model>` at the artifact of the model's latest green run and returns
/// the path to serve, which stays the same from run to run: a server watching it sees each new
/// green run and swaps the model in. The switch is atomic (a new symbolic link renamed over the
/// old one), so a server never sees half an artifact.
pub fn publish(
    workspace: &Workspace,
    project: &Project,
    model: &str,
) -> Result<(Artifact, PathBuf), Error> {
    let artifact = latest_artifact(workspace, project, model)?;
    let serving = workspace.state_dir.join("serving");
    std::fs::create_dir_all(&serving).map_err(|source| Error::io("create", &serving, source))?;
    let link = serving.join(model);
    let target = PathBuf::from("../artifacts").join(artifact.digest.to_hex());
    if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        let temporary = serving.join(format!(".{model}.{}", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        std::os::unix::fs::symlink(&target, &temporary)
            .map_err(|source| Error::io("link", &temporary, source))?;
        std::fs::rename(&temporary, &link).map_err(|source| Error::io("publish", &link, source))?;
    }
    let name = artifact
        .path
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_default();
    Ok((artifact, link.join(name)))
}
