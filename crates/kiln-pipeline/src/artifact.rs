//! A model's artifact as its latest green run (or a registered version) produced it, taken from
//! the store (not from the workspace, which may have changed since) and laid out under
//! `.kiln/artifacts/` for serving; `.kiln/serving/` holds a link per served name
//! (`<model>`, `<model>@<alias>`, `<model>@v<N>`) that is moved atomically.

use std::path::PathBuf;

use kiln_registry::{ModelRef, ModelVersion, OutKind, RunId, Selector, StageOut, Status, Version};
use kiln_spec::{Model, Project, RelPath};
use kiln_store::Digest;

use crate::Error;
use crate::stage::read_tree;
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
    declared_artifact(project, declared)?;
    let run = workspace
        .registry
        .runs(Some(model), RUNS_SEARCHED)?
        .into_iter()
        .find(|run| run.status == Status::Succeeded)
        .ok_or_else(|| Error::NoGreenRun {
            model: model.to_string(),
        })?;
    let detail = workspace.registry.run(run.id)?;
    // The outs as this run recorded them: the stage cache may hold a later run's by now.
    run_artifact(
        workspace,
        project,
        declared,
        run.id,
        detail.stages.iter().flat_map(|stage| &stage.outs),
    )
}

/// The artifact a model declares, or an error saying it declares none.
fn declared_artifact<'a>(project: &Project, model: &'a Model) -> Result<&'a RelPath, Error> {
    model.artifact.as_ref().ok_or_else(|| Error::NoArtifact {
        model: model.name.clone(),
        file: project.file.clone(),
    })
}

/// The artifact of `model` as run `run` recorded its outs, materialised under
/// `.kiln/artifacts/`. Shared by [`latest_artifact`] and the servable check of a run that is
/// not green yet.
pub(crate) fn run_artifact<'a>(
    workspace: &Workspace,
    project: &Project,
    model: &Model,
    run: RunId,
    outs: impl IntoIterator<Item = &'a StageOut>,
) -> Result<Artifact, Error> {
    let artifact = declared_artifact(project, model)?;
    for out in outs {
        // Outs were paths of the project when they were recorded.
        let Some(out_path) = RelPath::resolve(&RelPath::root(), &out.path) else {
            continue;
        };
        if artifact.is_within(&out_path) {
            let digest = Digest::from_hex(&out.digest).ok_or_else(|| Error::BadDigest {
                run,
                path: out.path.clone(),
                digest: out.digest.clone(),
            })?;
            return materialise(
                workspace,
                &model.name,
                run,
                artifact,
                &out_path,
                out,
                digest,
            );
        }
    }
    Err(Error::ArtifactNotRecorded {
        model: model.name.clone(),
        run,
        artifact: artifact.clone(),
    })
}

fn materialise(
    workspace: &Workspace,
    model: &str,
    run: RunId,
    artifact: &RelPath,
    out_path: &RelPath,
    out: &StageOut,
    digest: Digest,
) -> Result<Artifact, Error> {
    let name = artifact
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .to_string();
    let files: Vec<(String, Digest, bool)> = match out.kind {
        OutKind::File => vec![(String::new(), digest, out.executable)],
        OutKind::Dir => {
            let tree = read_tree(&workspace.store, out_path, &digest)?;
            // The artifact may be the whole folder or a part of it.
            let inner = artifact
                .as_str()
                .strip_prefix(out_path.as_str())
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
    if files.is_empty() {
        return Err(Error::ArtifactMissing {
            model: model.to_string(),
            run,
            out: out_path.clone(),
            artifact: artifact.clone(),
        });
    }
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
                // Never through a link, never outside the artifact's folder.
                kiln_store::paths::join_inside(&path, relative)?
            };
            workspace
                .store
                .restore_file(file_digest, &target, *executable)?;
        }
        kiln_store::atomic::write(&complete, b"")
            .map_err(|source| Error::io("write", &complete, source))?;
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
/// green run and swaps the model in.
pub fn publish(
    workspace: &Workspace,
    project: &Project,
    model: &str,
) -> Result<(Artifact, PathBuf), Error> {
    let artifact = latest_artifact(workspace, project, model)?;
    let target = PathBuf::from("../artifacts").join(artifact.digest.to_hex());
    let link = link_for_serving(workspace, model, &target)?;
    let path = link.join(file_name(&artifact));
    Ok((artifact, path))
}

/// A registered version laid out for serving.
#[derive(Debug, Clone)]
pub struct PublishedVersion {
    pub version: Version,
    pub artifact: Artifact,
    /// The path to serve (`.kiln/serving/<model>@<alias>/<artifact name>`): the same while the
    /// alias moves.
    pub path: PathBuf,
    /// A file holding the version number the path holds now, for the server to report.
    pub version_file: PathBuf,
}

/// The artifact of the registered version `reference` names: as its run recorded it, or, for
/// a version imported from another registry, as the import recorded it.
pub fn version_artifact(
    workspace: &Workspace,
    project: &Project,
    reference: &ModelRef,
) -> Result<(Version, Artifact), Error> {
    let declared = project
        .model(&reference.model)
        .ok_or_else(|| Error::unknown_model(project, &reference.model))?;
    declared_artifact(project, declared)?;
    let version = workspace.registry.resolve(reference)?;
    let registered = workspace
        .registry
        .model_version(&reference.model, version)?;
    // With a remote store, a version registered elsewhere (or whose blobs were collected here)
    // is brought into the local store first, verified.
    if let Some(remote) = &workspace.remote {
        let digest =
            Digest::from_hex(&registered.artifact_digest).ok_or_else(|| Error::BadDigest {
                run: registered.lineage.run_id,
                path: reference.to_string(),
                digest: registered.artifact_digest.clone(),
            })?;
        workspace.store.fetch(remote.as_ref(), &digest)?;
    }
    let out = version_out(workspace, project, &registered)?;
    let artifact = run_artifact(
        workspace,
        project,
        declared,
        registered.lineage.run_id,
        [&out],
    )?;
    Ok((version, artifact))
}

/// Where a registry version's artifact records of an imported version are kept in the store:
/// the out the artifact was found in, by artifact digest.
pub(crate) const IMPORTED_OUTS: &str = "imported-outs";

/// The out a registered version's artifact is found in: one of its run's outs, or, for an
/// imported version (whose run is in another registry), the out its import recorded.
pub fn version_out(
    workspace: &Workspace,
    project: &Project,
    registered: &ModelVersion,
) -> Result<StageOut, Error> {
    if registered.origin.is_some() {
        let digest = &registered.artifact_digest;
        let missing = || Error::ImportRecordMissing {
            model: registered.model.clone(),
            version: registered.version,
        };
        let bytes = workspace
            .store
            .read_ref(IMPORTED_OUTS, digest)?
            .ok_or_else(missing)?;
        return serde_json::from_slice(&bytes).map_err(|_| missing());
    }
    let declared = project
        .model(&registered.model)
        .ok_or_else(|| Error::unknown_model(project, &registered.model))?;
    let artifact = declared_artifact(project, declared)?;
    let run = registered.lineage.run_id;
    let detail = workspace.registry.run(run)?;
    detail
        .stages
        .iter()
        .flat_map(|stage| &stage.outs)
        .find(|out| {
            RelPath::resolve(&RelPath::root(), &out.path)
                .is_some_and(|out_path| artifact.is_within(&out_path))
        })
        .cloned()
        .ok_or_else(|| Error::ArtifactNotRecorded {
            model: registered.model.clone(),
            run,
            artifact: artifact.clone(),
        })
}

/// Points `.kiln/serving/<model>@<alias>` (or `@v<N>`) at the version `reference` names. The
/// link names `.kiln/versions/<model>/<N>/` (the artifact, linked, and a `VERSION` file), and is
/// replaced atomically when the alias moves: a server watching the path swaps versions and
/// reads the new number.
pub fn publish_version(
    workspace: &Workspace,
    project: &Project,
    reference: &ModelRef,
) -> Result<PublishedVersion, Error> {
    let (version, artifact) = version_artifact(workspace, project, reference)?;
    version_folder(workspace, &reference.model, version, &artifact)?;
    let target = version_target(&reference.model, version);
    let link = link_for_serving(workspace, &reference.to_string(), &target)?;
    Ok(PublishedVersion {
        version,
        path: link.join(file_name(&artifact)),
        version_file: link.join("VERSION"),
        artifact,
    })
}

/// [`publish_version`] for an alias.
pub fn publish_alias(
    workspace: &Workspace,
    project: &Project,
    model: &str,
    alias: &str,
) -> Result<PublishedVersion, Error> {
    let reference = ModelRef {
        model: model.to_string(),
        selector: Selector::Alias(alias.to_string()),
    };
    publish_version(workspace, project, &reference)
}

/// What a serving link (in `.kiln/serving/`) of a version names: `../versions/<model>/<N>`.
fn version_target(model: &str, version: Version) -> PathBuf {
    PathBuf::from("../versions")
        .join(model)
        .join(version.to_string())
}

/// Re-points each serving link of `model`'s aliases (`.kiln/serving/<model>@<alias>`) that
/// names another version than the registry does, and returns those aliases with the version
/// they name now. An alias moves in the registry first and its link after: a crash between the
/// two leaves the link behind, and a server following it would keep serving the old version
/// until the alias moved again. The next command puts it right. A link that does not exist is
/// left alone: `kiln serve` publishes the one it serves.
pub fn republish_stale_aliases(
    workspace: &Workspace,
    project: &Project,
    model: &str,
) -> Result<Vec<(String, Version)>, Error> {
    let serving = workspace.state_dir.join("serving");
    let mut republished = Vec::new();
    for (alias, version) in workspace.registry.aliases(model)? {
        let Ok(target) = std::fs::read_link(serving.join(format!("{model}@{alias}"))) else {
            continue;
        };
        if target != version_target(model, version) {
            let published = publish_alias(workspace, project, model, &alias)?;
            republished.push((alias, published.version));
        }
    }
    Ok(republished)
}

/// The artifact's file or folder name.
fn file_name(artifact: &Artifact) -> PathBuf {
    artifact
        .path
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `.kiln/versions/<model>/<version>/`: a link to the artifact and a `VERSION` file. A version
/// never changes, so a folder that is there is complete: it is built aside and renamed in.
fn version_folder(
    workspace: &Workspace,
    model: &str,
    version: Version,
    artifact: &Artifact,
) -> Result<(), Error> {
    let parent = workspace.state_dir.join("versions").join(model);
    let folder = parent.join(version.to_string());
    if folder.is_dir() {
        return Ok(());
    }
    let building = parent.join(format!(".{version}.{}", std::process::id()));
    // Left by a crash of this pid, usually nothing; the writes below say if it stays.
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building).map_err(|source| Error::io("create", &building, source))?;
    let name = file_name(artifact);
    let target = PathBuf::from("../../../artifacts")
        .join(artifact.digest.to_hex())
        .join(&name);
    let link = building.join(&name);
    std::os::unix::fs::symlink(&target, &link)
        .map_err(|source| Error::io("link", &link, source))?;
    let file = building.join("VERSION");
    kiln_store::atomic::write(&file, format!("{version}\n").as_bytes())
        .map_err(|source| Error::io("write", &file, source))?;
    if let Err(source) = std::fs::rename(&building, &folder) {
        let _ = std::fs::remove_dir_all(&building);
        // Another process laid out the same version first.
        if !folder.is_dir() {
            return Err(Error::io("publish", &folder, source));
        }
    }
    Ok(())
}

/// Points `.kiln/serving/<name>` at `target` (relative to `.kiln/serving/`) and returns the
/// link. The switch is atomic (a new symbolic link renamed over the old one), so a server never
/// sees half an artifact.
fn link_for_serving(
    workspace: &Workspace,
    name: &str,
    target: &std::path::Path,
) -> Result<PathBuf, Error> {
    let serving = workspace.state_dir.join("serving");
    std::fs::create_dir_all(&serving).map_err(|source| Error::io("create", &serving, source))?;
    let link = serving.join(name);
    if std::fs::read_link(&link).ok().as_deref() != Some(target) {
        let temporary = serving.join(format!(".{name}.{}", std::process::id()));
        // A link left by a crash of this pid, usually none; `symlink` below says if it stays.
        let _ = std::fs::remove_file(&temporary);
        std::os::unix::fs::symlink(target, &temporary)
            .map_err(|source| Error::io("link", &temporary, source))?;
        std::fs::rename(&temporary, &link).map_err(|source| Error::io("publish", &link, source))?;
        kiln_store::atomic::sync_dir(&serving)
            .map_err(|source| Error::io("publish", &link, source))?;
    }
    Ok(link)
}
