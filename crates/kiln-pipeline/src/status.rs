//! `kiln status`: which stages would run, and why (which dep, param or command changed), with
//! the params as they are or as `--set` would write them.

use std::collections::{BTreeMap, HashMap};

use kiln_spec::values::FlatValues;
use kiln_spec::{Model, Project, StageId};

use crate::Error;
use crate::hashing::stat_cache_warning;
use crate::params::{Override, plan_overrides};
use crate::python_env::{EnvOptions, requirements_key};
use crate::run::select_stages;
use crate::stage::{CacheState, cache_state, hash_source_deps, stage_inputs_now};
use crate::workspace::Workspace;

/// The state of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStatus {
    /// Would be skipped.
    UpToDate,
    /// Would be restored from the cache (outs missing or modified, or inputs back to a state
    /// that already ran), without running, for these reasons.
    WillRestore(Vec<String>),
    /// Would run, for these reasons.
    Stale(Vec<String>),
    /// Never ran in this workspace.
    NeverRun,
}

/// What `kiln status` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// Every stage of the chosen models, in pipeline order.
    pub stages: Vec<(StageId, StageStatus)>,
    /// Problems that did not stop the answer (the stat cache could not be saved).
    pub warnings: Vec<String>,
}

/// The status of every stage of the chosen models (all when empty), as `kiln run` with
/// `overrides` would find it: the overrides are planned into the params files as `--set`
/// would write them, but nothing is written.
pub fn status(
    workspace: &Workspace,
    project: &Project,
    models: &[String],
    overrides: &[Override],
) -> Result<StatusReport, Error> {
    let selected = select_stages(project, models)?;
    let upstream = kiln_spec::upstream(project);
    let chosen: Vec<&Model> = project
        .models
        .iter()
        .filter(|m| selected.iter().any(|id| id.model == m.name))
        .collect();
    let planned = plan_overrides(&project.root, &chosen, overrides)?;
    let mut params: HashMap<&str, FlatValues> = HashMap::new();
    let mut python: HashMap<&str, Option<String>> = HashMap::new();
    let env_options = EnvOptions::from_env()?;
    for model in &project.models {
        params.insert(&model.name, planned.model_params(&project.root, model)?);
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
        )?;
        let previous = workspace.registry.stage_state(&id.to_string())?;
        let mut reasons = previous
            .as_ref()
            .map(|(_, inputs_then)| inputs.changes_since(inputs_then))
            .unwrap_or_default();
        let upstream_stale: Vec<String> = upstream
            .get(id)
            .into_iter()
            .flatten()
            .filter(|up| result.get(*up).is_some_and(|s| *s != StageStatus::UpToDate))
            .map(|up| format!("upstream stage `{up}` is not up to date"))
            .collect();
        let state = cache_state(
            &workspace.store,
            &project.root,
            &workspace.stat_cache,
            &inputs.key(),
        )?;
        let status = if !upstream_stale.is_empty() {
            reasons.extend(upstream_stale);
            StageStatus::Stale(reasons)
        } else {
            match state {
                CacheState::Intact(_) => StageStatus::UpToDate,
                CacheState::Changed(_) => {
                    reasons
                        .push("its outs differ from the cached result of these inputs".to_string());
                    StageStatus::WillRestore(reasons)
                }
                CacheState::Miss if previous.is_none() => StageStatus::NeverRun,
                CacheState::Miss => {
                    if reasons.is_empty() {
                        reasons.push("no cached result for its inputs".to_string());
                    }
                    StageStatus::Stale(reasons)
                }
            }
        };
        result.insert(id.clone(), status.clone());
        ordered.push((id.clone(), status));
    }
    let warnings = match workspace.stat_cache.save() {
        Ok(()) => Vec::new(),
        Err(error) => vec![stat_cache_warning(&workspace.stat_cache, &error)],
    };
    Ok(StatusReport {
        stages: ordered,
        warnings,
    })
}
