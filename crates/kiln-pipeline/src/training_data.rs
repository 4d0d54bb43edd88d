//! A model's training data and its profile, kept with every version the model registers (for
//! drift detection later). The training data is the CSV file `training_data:` names, else the
//! first CSV file of the model's data, found as the servable check finds its example
//! ([`model_data_csv`]).
//!
//! Profiles are remembered under `.kiln/profiles/<key>`, the key naming the file's content and
//! the profile's format: a re-run over the same data does not read a large file again.

use std::path::{Path, PathBuf};

use kiln_spec::{Model, Project};
use kiln_store::Digest;

use crate::Error;
use crate::workspace::Workspace;

/// Versions the encoding of remembered profiles' keys.
const KEY_TAG: &str = "kiln-profile-cache-v1";

/// How deep Kiln looks for CSV files inside a folder a stage writes.
const SEARCH_DEPTH: usize = 3;

/// The file a model is trained on, and whether `training_data:` named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingData {
    pub path: PathBuf,
    /// The path as the user knows it: relative to the project root.
    pub shown: String,
    pub declared: bool,
}

/// The training data of `model`: the declared file, else the first CSV file of its data;
/// `None` when it declares none and none of its data is CSV.
pub fn training_data(project: &Project, model: &Model) -> Option<TrainingData> {
    let (path, declared) = match &model.training_data {
        Some(declared) => (declared.to_path(&project.root), true),
        None => (model_data_csv(project, model)?, false),
    };
    let shown = path
        .strip_prefix(&project.root)
        .unwrap_or(&path)
        .display()
        .to_string();
    Some(TrainingData {
        path,
        shown,
        declared,
    })
}

/// The first CSV file of a model's data: the files its data checks read first, then CSV files
/// its stages write (a name with `train` first, then in path order), then CSV files its
/// stages read.
pub fn model_data_csv(project: &Project, model: &Model) -> Option<PathBuf> {
    let is_csv = |p: &Path| p.is_file() && p.extension().is_some_and(|e| e == "csv");
    let checked = model
        .stages
        .iter()
        .flat_map(|s| &s.checks)
        .map(|c| c.file.to_path(&project.root));
    let mut written: Vec<PathBuf> = Vec::new();
    for out in model.stages.iter().flat_map(|s| &s.outs) {
        collect_csv(&out.to_path(&project.root), SEARCH_DEPTH, &mut written);
    }
    written.sort_by_key(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase());
        (!name.is_some_and(|n| n.contains("train")), p.clone())
    });
    let read = model
        .stages
        .iter()
        .flat_map(|s| &s.deps)
        .map(|d| d.to_path(&project.root));
    checked.chain(written).chain(read).find(|p| is_csv(p))
}

fn collect_csv(path: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "csv") {
            found.push(path.to_path_buf());
        }
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for child in children {
        collect_csv(&child, depth - 1, found);
    }
}

/// The profile of `model`'s training data as JSON (a [`kiln_profile::Profile`] with its
/// source), or `None` when the model has no training data.
pub(crate) fn profile(
    workspace: &Workspace,
    project: &Project,
    model: &Model,
) -> Result<Option<serde_json::Value>, Error> {
    let Some(data) = training_data(project, model) else {
        return Ok(None);
    };
    let failed = |source: kiln_profile::Error| Error::Profile {
        model: model.name.clone(),
        path: data.shown.clone(),
        source,
    };
    let digest = kiln_store::hash_file(&data.path).map_err(|source| {
        failed(kiln_profile::Error::Read {
            path: data.path.clone(),
            source,
        })
    })?;
    let remembered = workspace
        .state_dir
        .join("profiles")
        .join(remembered_key(&digest).to_hex());
    let cached = std::fs::read(&remembered)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<kiln_profile::Profile>(&bytes).ok());
    let mut profile = match cached {
        Some(profile) => profile,
        None => {
            let profile = kiln_profile::profile_csv(&data.path).map_err(failed)?;
            // Remembering is an optimisation: a failure to write only means profiling again.
            if let Ok(bytes) = serde_json::to_vec(&profile)
                && let Some(folder) = remembered.parent()
                && std::fs::create_dir_all(folder).is_ok()
            {
                let _ = kiln_store::atomic::write(&remembered, &bytes);
            }
            profile
        }
    };
    profile.source = Some(kiln_profile::ProfileSource {
        path: data.shown,
        digest: Some(digest.to_hex()),
        declared: data.declared,
    });
    // A profile's fields are plain numbers and strings: it always has a JSON form.
    Ok(serde_json::to_value(&profile).ok())
}

/// What a profile depends on: the file's content and the profile's format.
fn remembered_key(digest: &Digest) -> Digest {
    let version = kiln_profile::PROFILE_VERSION.to_string();
    let mut encoded = Vec::new();
    for field in [KEY_TAG, &version, &digest.to_hex()] {
        encoded.extend_from_slice(&(field.len() as u64).to_le_bytes());
        encoded.extend_from_slice(field.as_bytes());
    }
    Digest::of_bytes(&encoded)
}
