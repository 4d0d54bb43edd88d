//! Running a pipeline: plan the stages as a DAG, run independent ones in parallel, skip or
//! restore stages whose inputs are unchanged, run data checks, evaluate gates, record the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kiln_registry::{
    CheckResult, GateResult, NewRun, Registry, RunId, RunOutcome, StageResult, Status,
};
use kiln_spec::{Model, Project, RelPath, StageId};
use kiln_store::Digest;

use crate::Error;
pub use crate::gates::GateReport;
use crate::gates::{evaluate_gates, read_metrics};
use crate::inputs::StageInputs;
use crate::params::{Override, apply_overrides, flat_json, model_params, nested_json};
use crate::python_env::{EnvOptions, PythonEnvironment};
use crate::stage::{StageContext, hash_source_deps, run_stage};
use crate::workspace::Workspace;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Models to run (all when empty). Upstream stages of other models run too.
    pub models: Vec<String>,
    pub overrides: Vec<Override>,
    /// Stages running at once.
    pub jobs: usize,
    /// Run every selected stage even when its inputs are unchanged.
    pub force: bool,
    /// Set (by a Ctrl-C handler) to stop the run.
    pub cancel: Arc<AtomicBool>,
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The command ran and succeeded.
    Ran,
    /// Inputs and outs unchanged: nothing to do.
    Cached,
    /// Inputs unchanged, outs missing or modified: restored from the cache.
    Restored,
    Failed(Failure),
    Cancelled,
    /// Not started because an upstream stage failed or the run was cancelled.
    NotRun,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Cached => "cached",
            Outcome::Restored => "restored",
            Outcome::Failed(_) => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::NotRun => "not run",
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Ran | Outcome::Cached | Outcome::Restored)
    }
}

/// Why a stage failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The command exited non-zero (or was killed by a signal: no code).
    Exit { code: Option<i32>, log_tail: String },
    /// The command succeeded but did not write a declared out.
    MissingOut(RelPath),
    /// A data check on a file the stage wrote failed.
    Checks,
    /// Kiln itself could not do its part (hashing, storing, spawning).
    Internal(String),
}

impl Failure {
    pub fn describe(&self) -> String {
        match self {
            Failure::Exit {
                code: Some(code), ..
            } => format!("exited with code {code}"),
            Failure::Exit { code: None, .. } => "was killed by a signal".to_string(),
            Failure::MissingOut(path) => format!("succeeded but did not write `{path}`"),
            Failure::Checks => "wrote data that failed its checks".to_string(),
            Failure::Internal(message) => message.clone(),
        }
    }
}

/// One stage's result.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub id: StageId,
    pub outcome: Outcome,
    pub duration: Duration,
    pub log: Option<PathBuf>,
    pub key: Option<Digest>,
    pub checks: Vec<CheckResult>,
    /// What the outs held when the stage succeeded (ran, cached or restored).
    pub(crate) outs: Vec<crate::stage::CachedOut>,
    /// Something the user should know that did not fail the stage.
    pub warning: Option<String>,
}

impl StageReport {
    pub(crate) fn not_run(id: &StageId) -> StageReport {
        StageReport {
            id: id.clone(),
            outcome: Outcome::NotRun,
            duration: Duration::ZERO,
            log: None,
            key: None,
            checks: Vec::new(),
            outs: Vec::new(),
            warning: None,
        }
    }
}

/// One model's part of a run.
#[derive(Debug, Clone)]
pub struct ModelReport {
    pub model: String,
    pub run_id: RunId,
    pub status: Status,
    pub stages: Vec<StageReport>,
    pub metrics: Vec<(String, f64)>,
    /// Metrics of the model's previous run that had metrics, for deltas.
    pub previous: Option<(RunId, Vec<(String, f64)>)>,
    pub gates: Vec<GateReport>,
    /// Things that went wrong without failing a stage (an unreadable metrics file, an out that
    /// could not be restored and was rebuilt), for the user to see.
    pub warnings: Vec<String>,
}

/// Why a run did not succeed, from the most to the least fundamental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    Stage,
    Check,
    Gate,
    Cancelled,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub models: Vec<ModelReport>,
    pub failure: Option<FailureKind>,
    pub duration: Duration,
}

/// Progress, as it happens, for the live view. Besides the stages: `ParamWritten` when `--set`
/// wrote a value into a params file (before any stage runs); `Warning` for what does not fail
/// the run (a stat cache that cannot be saved); `EnvironmentStep` for each step of building a
/// model's environment (the first names the installer's log) and `InstallerOutput` for the
/// latest line the installer printed.
#[derive(Debug)]
pub enum Event<'a> {
    EnvironmentStarted { model: &'a str },
    EnvironmentReady { model: &'a str, duration: Duration },
    Planned { stages: &'a [StageId] },
    StageStarted { id: &'a StageId },
    StageFinished { report: &'a StageReport },
    ParamWritten { write: &'a crate::ParamWrite },
    Warning { message: &'a str },
    EnvironmentStep { model: &'a str, step: &'a str },
    InstallerOutput { model: &'a str, line: &'a str },
}

/// Receives progress events; the binary draws them.
pub trait Observer: Sync {
    fn on_event(&self, event: Event<'_>);
}

/// Runs the pipeline.
pub fn run(
    workspace: &mut Workspace,
    project: &Project,
    options: &RunOptions,
    observer: &dyn Observer,
) -> Result<RunReport, Error> {
    let started = Instant::now();
    let _lock = workspace.lock_for_run()?;
    let selected = select_stages(project, &options.models)?;
    let models: Vec<&Model> = project
        .models
        .iter()
        .filter(|m| selected.iter().any(|id| id.model == m.name))
        .collect();

    crate::params::write_overrides(&project.root, &models, &options.overrides, observer)?;
    let mut params = HashMap::new();
    for model in &models {
        params.insert(model.name.clone(), model_params(&project.root, model)?);
    }
    let applied = apply_overrides(&models, &mut params, &options.overrides)?;
    // HEAD and the index are read while the stages are checked.
    let git_check = crate::git::start_check(&project.root);
    let mut run_ids = HashMap::new();
    for model in &models {
        let id = workspace.registry.start_run(&NewRun {
            model: model.name.clone(),
            params: flat_json(&params[&model.name]),
            overrides: overrides_json(applied.get(&model.name)),
        })?;
        run_ids.insert(model.name.clone(), id);
    }

    // Params files for the commands (`KILN_PARAMS`), kept with each run's logs.
    let mut params_files = HashMap::new();
    for model in &models {
        let dir = workspace.log_dir(run_ids[&model.name]);
        fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
        let path = dir.join("params.json");
        let text =
            serde_json::to_string_pretty(&nested_json(&params[&model.name])).unwrap_or_default();
        kiln_store::atomic::write(&path, text.as_bytes())
            .map_err(|source| Error::io("write", &path, source))?;
        params_files.insert(model.name.clone(), path);
    }

    let environments = match prepare_environments(project, &models, observer) {
        Ok(environments) => environments,
        // Ctrl-C reaches the installers too (they share Kiln's process group): then the run
        // was cancelled, not failed.
        Err(_) if options.cancel.load(Ordering::SeqCst) => {
            let mut reports = Vec::new();
            for model in &models {
                let run_id = run_ids[&model.name];
                let message = "cancelled while building the python environment";
                workspace
                    .registry
                    .finish_run(run_id, &RunOutcome::bare(Status::Cancelled, Some(message)))?;
                let (stages, metrics, gates) = (Vec::new(), Vec::new(), Vec::new());
                reports.push(ModelReport {
                    model: model.name.clone(),
                    run_id,
                    status: Status::Cancelled,
                    stages,
                    metrics,
                    previous: None,
                    gates,
                    warnings: Vec::new(),
                });
            }
            return Ok(RunReport {
                models: reports,
                failure: Some(FailureKind::Cancelled),
                duration: started.elapsed(),
            });
        }
        Err(error) => {
            for id in run_ids.values() {
                workspace.registry.finish_run(
                    *id,
                    &RunOutcome::bare(Status::Failed, Some(&error.to_string())),
                )?;
            }
            return Err(error);
        }
    };

    observer.on_event(Event::Planned { stages: &selected });
    let context = StageContext {
        root: &project.root,
        store: &workspace.store,
        stat_cache: &workspace.stat_cache,
        source_digests: hash_source_deps(project, &selected, &workspace.stat_cache),
        environments: &environments,
        params: &params,
        params_files: &params_files,
        force: options.force,
        cancel: &options.cancel,
        running: Mutex::new(HashMap::new()),
        log_dirs: run_ids
            .iter()
            .map(|(m, id)| (m.clone(), workspace.log_dir(*id)))
            .collect(),
    };
    let stage_reports = schedule(
        project,
        &selected,
        &context,
        options,
        observer,
        &workspace.registry,
    );
    crate::hashing::save_stat_cache(&workspace.stat_cache, observer);

    let (commit, dirty) = git_check.finish(&workspace.stat_cache);
    let cancelled = options.cancel.load(Ordering::SeqCst);
    let mut failure: Option<FailureKind> = None;
    let mut note = |kind: FailureKind| failure = Some(failure.map_or(kind, |f| f.min(kind)));
    if cancelled {
        note(FailureKind::Cancelled);
    }
    let mut reports = Vec::new();
    for model in &models {
        let run_id = run_ids[&model.name];
        let stages: Vec<StageReport> = selected
            .iter()
            .filter(|id| id.model == model.name)
            .filter_map(|id| stage_reports.get(id).cloned())
            .collect();
        let stage_failed = stages
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Failed(ref f) if *f != Failure::Checks));
        let check_failed = stages
            .iter()
            .any(|s| s.outcome == Outcome::Failed(Failure::Checks));
        let all_done = stages.iter().all(|s| s.outcome.succeeded());
        let (metrics, mut warnings) = if all_done {
            read_metrics(&project.root, model)
        } else {
            (Vec::new(), Vec::new())
        };
        warnings.extend(stages.iter().filter_map(|s| s.warning.clone()));
        // Reports compare with the previous run; `previous.NAME` in gates with the previous green one.
        let registry = &workspace.registry;
        let previous = match registry.previous_run_with_metrics(&model.name, Some(run_id), false)? {
            Some(id) => Some((id, registry.metrics(id)?)),
            None => None,
        };
        let gates = if all_done {
            let previous_green =
                match registry.previous_run_with_metrics(&model.name, Some(run_id), true)? {
                    Some(id) => Some(registry.metrics(id)?),
                    None => None,
                };
            evaluate_gates(model, &metrics, previous_green.as_ref())
        } else {
            Vec::new()
        };
        let gate_failed = gates.iter().any(|g| g.verdict.blocks());
        let status = if cancelled {
            Status::Cancelled
        } else if stage_failed || check_failed || gate_failed || !all_done {
            Status::Failed
        } else {
            Status::Succeeded
        };
        if stage_failed || (!all_done && !check_failed && !cancelled) {
            note(FailureKind::Stage);
        }
        if check_failed {
            note(FailureKind::Check);
        }
        if gate_failed {
            note(FailureKind::Gate);
        }
        let stage_results: Vec<StageResult> = stages
            .iter()
            .map(|s| StageResult {
                stage: s.id.stage.clone(),
                outcome: s.outcome.label().to_string(),
                duration_ms: s.duration.as_millis() as i64,
                exit_code: match &s.outcome {
                    Outcome::Failed(Failure::Exit { code, .. }) => *code,
                    Outcome::Ran => Some(0),
                    _ => None,
                },
                log_path: s.log.as_ref().map(|p| {
                    p.strip_prefix(&project.root)
                        .unwrap_or(p)
                        .display()
                        .to_string()
                }),
                cache_key: s.key.map(|k| k.to_hex()),
                outs: (!s.outs.is_empty())
                    .then(|| serde_json::to_string(&s.outs).unwrap_or_default()),
            })
            .collect();
        let checks: Vec<CheckResult> = stages.iter().flat_map(|s| s.checks.clone()).collect();
        let gate_results: Vec<GateResult> = gates
            .iter()
            .map(|g| GateResult {
                expr: g.text.clone(),
                verdict: g.verdict.label().to_string(),
                detail: g.detail(),
            })
            .collect();
        let message = stages.iter().find_map(|s| match &s.outcome {
            Outcome::Failed(f) => Some(format!("stage `{}` {}", s.id.stage, f.describe())),
            _ => None,
        });
        workspace.registry.finish_run(
            run_id,
            &RunOutcome {
                status,
                git: Some((commit.as_deref(), dirty)),
                message: message.as_deref(),
                stages: &stage_results,
                metrics: &metrics,
                checks: &checks,
                gates: &gate_results,
            },
        )?;
        reports.push(ModelReport {
            model: model.name.clone(),
            run_id,
            status,
            stages,
            metrics,
            previous,
            gates,
            warnings,
        });
    }
    // A served model follows its latest green run.
    // The run is recorded by now: a failure here is a warning, not a lost report.
    for report in &mut reports {
        let has_artifact = project
            .model(&report.model)
            .is_some_and(|m| m.artifact.is_some());
        if report.status == Status::Succeeded
            && has_artifact
            && let Err(error) = crate::artifact::publish(workspace, project, &report.model)
        {
            report.warnings.push(format!(
                "could not publish the artifact for serving: {error}"
            ));
        }
    }
    Ok(RunReport {
        models: reports,
        failure,
        duration: started.elapsed(),
    })
}

/// The overrides a model's run took, as recorded with the run.
fn overrides_json(overrides: Option<&Vec<Override>>) -> serde_json::Value {
    let pairs = overrides.into_iter().flatten().map(|o| {
        (
            o.key.clone(),
            serde_json::Value::String(o.value.to_string()),
        )
    });
    serde_json::Value::Object(pairs.collect())
}

/// The stages of the chosen models and everything upstream of them, in declaration order.
pub fn select_stages(project: &Project, models: &[String]) -> Result<Vec<StageId>, Error> {
    for name in models {
        if project.model(name).is_none() {
            return Err(Error::unknown_model(project, name));
        }
    }
    let upstream = kiln_spec::upstream(project);
    let mut wanted: BTreeSet<StageId> = project
        .stages()
        .filter(|s| models.is_empty() || models.contains(&s.id.model))
        .map(|s| s.id.clone())
        .collect();
    let mut frontier: Vec<StageId> = wanted.iter().cloned().collect();
    while let Some(id) = frontier.pop() {
        for up in upstream.get(&id).into_iter().flatten() {
            if wanted.insert(up.clone()) {
                frontier.push(up.clone());
            }
        }
    }
    Ok(project
        .stages()
        .filter(|s| wanted.contains(&s.id))
        .map(|s| s.id.clone())
        .collect())
}

fn prepare_environments(
    project: &Project,
    models: &[&Model],
    observer: &dyn Observer,
) -> Result<HashMap<String, PythonEnvironment>, Error> {
    let mut environments = HashMap::new();
    let needs_env: Vec<&&Model> = models.iter().filter(|m| m.python.is_some()).collect();
    if needs_env.is_empty() {
        return Ok(environments);
    }
    let options = EnvOptions::from_env()?;
    for model in needs_env {
        let Some(python) = &model.python else {
            continue;
        };
        let started = Instant::now();
        observer.on_event(Event::EnvironmentStarted { model: &model.name });
        let environment = crate::python_env::ensure_env_with_progress(
            &python.requirements.to_path(&project.root),
            &options,
            &mut |progress| observer.on_event(progress.event(&model.name)),
        )?;
        observer.on_event(Event::EnvironmentReady {
            model: &model.name,
            duration: started.elapsed(),
        });
        environments.insert(model.name.clone(), environment);
    }
    Ok(environments)
}

/// Runs the stages in dependency order, up to `jobs` at once.
fn schedule(
    project: &Project,
    selected: &[StageId],
    context: &StageContext<'_>,
    options: &RunOptions,
    observer: &dyn Observer,
    registry: &Registry,
) -> BTreeMap<StageId, StageReport> {
    let upstream = kiln_spec::upstream(project);
    let selected_set: BTreeSet<&StageId> = selected.iter().collect();
    let mut reports: BTreeMap<StageId, StageReport> = BTreeMap::new();
    let mut pending: Vec<&StageId> = selected.iter().collect();
    let mut running = 0usize;
    let jobs = options.jobs.max(1);
    let (sender, receiver) = mpsc::channel::<(StageReport, Option<StageInputs>)>();

    std::thread::scope(|scope| {
        loop {
            let cancelled = context.cancel.load(Ordering::SeqCst);
            // Start every stage whose upstream is done, while there are free slots.
            let mut index = 0;
            while index < pending.len() && !cancelled {
                let id = pending[index];
                let ups: Vec<&StageId> = upstream
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter(|u| selected_set.contains(u))
                    .collect();
                if ups
                    .iter()
                    .any(|u| reports.get(*u).is_some_and(|r| !r.outcome.succeeded()))
                {
                    pending.remove(index);
                    let report = StageReport::not_run(id);
                    observer.on_event(Event::StageFinished { report: &report });
                    reports.insert(id.clone(), report);
                    continue;
                }
                if running < jobs && ups.iter().all(|u| reports.contains_key(*u)) {
                    pending.remove(index);
                    running += 1;
                    let stage = project.stage(id).expect("selected stages exist");
                    let sender = sender.clone();
                    observer.on_event(Event::StageStarted { id });
                    scope.spawn(move || {
                        let result = run_stage(stage, context);
                        let _ = sender.send(result);
                    });
                    continue;
                }
                index += 1;
            }
            if running == 0 && (pending.is_empty() || cancelled) {
                break;
            }
            if cancelled {
                stop_all(context);
            }
            match receiver.recv_timeout(Duration::from_millis(50)) {
                Ok((report, inputs)) => {
                    running -= 1;
                    if let (Some(inputs), Some(key), true) =
                        (&inputs, report.key, report.outcome.succeeded())
                    {
                        let _ = registry.set_stage_state(
                            &report.id.to_string(),
                            &key.to_hex(),
                            &inputs.to_json(),
                        );
                    }
                    observer.on_event(Event::StageFinished { report: &report });
                    reports.insert(report.id.clone(), report);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    for id in pending {
        let report = StageReport::not_run(id);
        observer.on_event(Event::StageFinished { report: &report });
        reports.insert(id.clone(), report);
    }
    reports
}

/// Stops every running command: SIGTERM to its process group, SIGKILL after a grace period.
fn stop_all(context: &StageContext<'_>) {
    let groups: Vec<u32> = context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .copied()
        .collect();
    for group in &groups {
        signal_group(*group, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if context
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for group in context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        signal_group(*group, libc::SIGKILL);
    }
}

#[allow(unsafe_code)]
pub(crate) fn signal_group(group: u32, signal: i32) {
    // SAFETY: killpg only sends a signal; the group id is one of our own children's.
    unsafe {
        libc::killpg(group as libc::pid_t, signal);
    }
}
