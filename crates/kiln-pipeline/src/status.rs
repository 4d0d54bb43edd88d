//! `kiln status`: which stages would run, and why (which dep, param or command changed).

use std::collections::{BTreeMap, HashMap};

use kiln_spec::values::FlatValues;
use kiln_spec::{Project, StageId};

use crate::Error;
use crate::params::model_params;
use crate::python_env::{EnvOptions, requirements_key};
use crate::run::select_stages;
use crate::stage::{hash_source_deps, stage_inputs_now};
use crate::workspace::Workspace;

/// The state of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStatus {
    /// Would be skipped.
    UpToDate,
    /// Would run, for these reasons.
    Stale(Vec<String>),
    /// Never ran in this workspace.
    NeverRun,
}

/// The status of every stage of the chosen models (all when empty), in pipeline order.
pub fn status(
    workspace: &Workspace,
    project: &Project,
    models: &[String],
) -> Result<Vec<(StageId, StageStatus)>, Error> {
    let selected = select_stages(project, models)?;
    let upstream = kiln_spec::upstream(project);
    let mut params: HashMap<&str, FlatValues> = HashMap::new();
    let mut python: HashMap<&str, Option<String>> = HashMap::new();
    let env_options = EnvOptions::from_env()?;
    for model in &project.models {
        params.insert(&model.name, model_params(&project.root, model)?);
        let key = match &model.python {
            Some(env) => Some(requirements_key(
                &env.requirements.to_path(&project.root),
                &env_options,
            )?),
            None => None,
        };
        python.insert(&model.name, key);
    }
    let sources = hash_source_deps(project, &selected, &workspace.stat_cache);
    let mut result: BTreeMap<StageId, StageStatus> = BTreeMap::new();
    let mut ordered = Vec::new();
    for id in &selected {
        let stage = project.stage(id).expect("selected stages exist");
        let inputs = stage_inputs_now(
            stage,
            &project.root,
            &workspace.stat_cache,
            &sources,
            python[id.model.as_str()].clone(),
            &params[id.model.as_str()],
        )
        .map_err(Error::Status)?;
        let mut reasons = workspace
            .registry
            .stage_state(&id.to_string())?
            .map(|(_, previous)| inputs.changes_since(&previous));
        for up in upstream.get(id).into_iter().flatten() {
            if let Some(StageStatus::Stale(_) | StageStatus::NeverRun) = result.get(up)
                && let Some(reasons) = reasons.as_mut()
            {
                reasons.push(format!("upstream stage `{up}` is stale"));
            }
        }
        let status = match reasons {
            None => StageStatus::NeverRun,
            Some(reasons) if reasons.is_empty() => {
                let missing: Vec<String> = stage
                    .outs
                    .iter()
                    .filter(|o| !o.to_path(&project.root).exists())
                    .map(|o| format!("out `{o}` is missing (will be restored from the cache)"))
                    .collect();
                if missing.is_empty() {
                    StageStatus::UpToDate
                } else {
                    StageStatus::Stale(missing)
                }
            }
            Some(reasons) => StageStatus::Stale(reasons),
        };
        result.insert(id.clone(), status.clone());
        ordered.push((id.clone(), status));
    }
    let _ = workspace.stat_cache.save();
    Ok(ordered)
}
