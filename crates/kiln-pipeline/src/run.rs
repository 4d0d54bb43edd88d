//! Running a pipeline: plan the stages as a DAG, run independent ones in parallel, skip or
//! restore stages whose inputs are unchanged, run data checks, evaluate gates, record the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kiln_registry::{
    CheckResult, GateResult, NewRun, Registry, RunId, RunOutcome, StageResult, Status,
};
use kiln_spec::gate::{Lookup, Verdict, is_reference};
use kiln_spec::values::{FlatValues, read_flat};
use kiln_spec::{Model, Project, RelPath, Stage, StageId};
use kiln_store::{Digest, EntryKind, Store, Tree};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hashing::{PathDigest, StatCache, hash_path};
use crate::inputs::StageInputs;
use crate::params::{Override, flat_json, model_params, nested_json};
use crate::python_env::{EnvOptions, PythonEnvironment, ensure_env};
use crate::workspace::Workspace;
use crate::{Error, checks};

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
}

impl StageReport {
    fn not_run(id: &StageId) -> StageReport {
        StageReport {
            id: id.clone(),
            outcome: Outcome::NotRun,
            duration: Duration::ZERO,
            log: None,
            key: None,
            checks: Vec::new(),
        }
    }
}

/// One gate's verdict with the values it read.
#[derive(Debug, Clone)]
pub struct GateReport {
    pub text: String,
    pub verdict: Verdict,
    pub values: Vec<(String, Option<f64>)>,
}

impl GateReport {
    pub fn detail(&self) -> String {
        match &self.verdict {
            Verdict::Skipped(reason) => reason.clone(),
            Verdict::UnknownMetric(name) => format!("no metric `{name}` in this run"),
            _ => self
                .values
                .iter()
                .map(|(name, value)| match value {
                    Some(v) => format!("{name}={v}"),
                    None => format!("{name}=?"),
                })
                .collect::<Vec<_>>()
                .join(", "),
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

/// Progress, as it happens, for the live view.
#[derive(Debug)]
pub enum Event<'a> {
    EnvironmentStarted { model: &'a str },
    EnvironmentReady { model: &'a str, duration: Duration },
    Planned { stages: &'a [StageId] },
    StageStarted { id: &'a StageId },
    StageFinished { report: &'a StageReport },
}

/// Receives progress events; the binary draws them.
pub trait Observer: Sync {
    fn on_event(&self, event: Event<'_>);
}

/// Where the cache of stage outputs keeps one entry: what each out held after the stage ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CacheEntry {
    pub(crate) outs: Vec<CachedOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CachedOut {
    pub(crate) path: String,
    pub(crate) kind: EntryKind,
    pub(crate) digest: Digest,
}

pub(crate) const RUN_CACHE: &str = "stage-cache";
/// Where folder outs keep their list of files.
pub(crate) const TREES: &str = "trees";

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

    let mut params = HashMap::new();
    for model in &models {
        params.insert(
            model.name.clone(),
            model_params(&project.root, model, &options.overrides)?,
        );
    }
    // git stats every tracked file: let it run while the stages do.
    let git_check = {
        let root = project.root.clone();
        std::thread::spawn(move || {
            let commit = git_commit(&root);
            let dirty = commit.is_some() && git_dirty(&root);
            (commit, dirty)
        })
    };
    let overrides: serde_json::Value = options
        .overrides
        .iter()
        .map(|o| {
            (
                o.key.clone(),
                serde_json::Value::String(o.value.to_string()),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();

    let mut run_ids = HashMap::new();
    for model in &models {
        let id = workspace.registry.start_run(&NewRun {
            model: model.name.clone(),
            params: flat_json(&params[&model.name]),
            overrides: overrides.clone(),
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
        fs::write(&path, text).map_err(|source| Error::io("write", &path, source))?;
        params_files.insert(model.name.clone(), path);
    }

    let environments = match prepare_environments(project, &models, observer) {
        Ok(environments) => environments,
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
    let _ = workspace.stat_cache.save();

    let (commit, dirty) = git_check.join().unwrap_or((None, false));
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
        let metrics = if all_done {
            read_metrics(&project.root, model)
        } else {
            Vec::new()
        };
        let previous_id = workspace
            .registry
            .previous_run_with_metrics(&model.name, Some(run_id))?;
        let previous = match previous_id {
            Some(id) => Some((id, workspace.registry.metrics(id)?)),
            None => None,
        };
        let gates = if all_done {
            evaluate_gates(model, &metrics, previous.as_ref().map(|p| &p.1))
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
        });
    }
    Ok(RunReport {
        models: reports,
        failure,
        duration: started.elapsed(),
    })
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
        let environment = ensure_env(
            &python.requirements.to_path(&project.root),
            &options,
            &mut |_| {},
        )?;
        observer.on_event(Event::EnvironmentReady {
            model: &model.name,
            duration: started.elapsed(),
        });
        environments.insert(model.name.clone(), environment);
    }
    Ok(environments)
}

struct StageContext<'a> {
    root: &'a Path,
    store: &'a Store,
    stat_cache: &'a StatCache,
    source_digests: DepDigests,
    environments: &'a HashMap<String, PythonEnvironment>,
    params: &'a HashMap<String, FlatValues>,
    params_files: &'a HashMap<String, PathBuf>,
    force: bool,
    cancel: &'a AtomicBool,
    /// Process groups of running commands, to stop them on cancel.
    running: Mutex<HashMap<StageId, u32>>,
    log_dirs: HashMap<String, PathBuf>,
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
fn signal_group(group: u32, signal: i32) {
    // SAFETY: killpg only sends a signal; the group id is one of our own children's.
    unsafe {
        libc::killpg(group as libc::pid_t, signal);
    }
}

/// Computes a stage's inputs and key, then skips, restores or runs it.
fn run_stage(stage: &Stage, context: &StageContext<'_>) -> (StageReport, Option<StageInputs>) {
    let started = Instant::now();
    let mut report = StageReport::not_run(&stage.id);
    let inputs = match stage_inputs(stage, context) {
        Ok(inputs) => inputs,
        Err(message) => {
            report.outcome = Outcome::Failed(Failure::Internal(message));
            report.duration = started.elapsed();
            return (report, None);
        }
    };
    let key = inputs.key();
    report.key = Some(key);
    report.outcome = match execute(stage, &key, context, &mut report) {
        Ok(outcome) => outcome,
        Err(message) => Outcome::Failed(Failure::Internal(message)),
    };
    report.duration = started.elapsed();
    (report, Some(inputs))
}

/// Digests of deps, by path (`None`: the dep does not exist).
pub(crate) type DepDigests = HashMap<RelPath, Option<Digest>>;

/// Hashes, all at once and on every core, the deps that no stage writes: they cannot change
/// during the run, and hashing them together keeps both cores busy even when the stages form a
/// chain (each stage would otherwise wait for the one before to hash its own deps).
pub(crate) fn hash_source_deps(
    project: &Project,
    stages: &[StageId],
    stat_cache: &StatCache,
) -> DepDigests {
    let produced: Vec<&RelPath> = project.stages().flat_map(|s| &s.outs).collect();
    let mut sources: Vec<&RelPath> = stages
        .iter()
        .filter_map(|id| project.stage(id))
        .flat_map(|s| &s.deps)
        .filter(|dep| !produced.iter().any(|out| dep.overlaps(out)))
        .collect();
    sources.sort();
    sources.dedup();
    sources
        .par_iter()
        .filter_map(|dep| {
            // An unreadable dep is left out, so that the stage reports the error itself.
            let digest = hash_path(&project.root, dep, stat_cache).ok()?;
            Some(((*dep).clone(), digest.map(|d| d.digest)))
        })
        .collect()
}

/// The inputs of a stage as they are now in the workspace; deps in `known` are not hashed again.
pub(crate) fn stage_inputs_now(
    stage: &Stage,
    root: &Path,
    stat_cache: &StatCache,
    known: &DepDigests,
    python: Option<String>,
    params: &FlatValues,
) -> Result<StageInputs, String> {
    let mut deps = Vec::new();
    for dep in &stage.deps {
        let digest = match known.get(dep) {
            Some(digest) => *digest,
            None => hash_path(root, dep, stat_cache)
                .map_err(|e| format!("cannot hash dep `{dep}`: {e}"))?
                .map(|d| d.digest),
        };
        deps.push((dep.clone(), digest));
    }
    Ok(StageInputs::new(stage, python, deps, params))
}

fn stage_inputs(stage: &Stage, context: &StageContext<'_>) -> Result<StageInputs, String> {
    let python = context
        .environments
        .get(&stage.id.model)
        .map(|env| env.key.clone());
    let empty = FlatValues::new();
    let params = context.params.get(&stage.id.model).unwrap_or(&empty);
    stage_inputs_now(
        stage,
        context.root,
        context.stat_cache,
        &context.source_digests,
        python,
        params,
    )
}

fn execute(
    stage: &Stage,
    key: &Digest,
    context: &StageContext<'_>,
    report: &mut StageReport,
) -> Result<Outcome, String> {
    let store = context.store;
    let cached: Option<CacheEntry> = store
        .read_ref(RUN_CACHE, &key.to_hex())
        .map_err(|e| e.to_string())?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(entry) = cached.filter(|_| !context.force) {
        let mut intact = true;
        for out in &entry.outs {
            let path =
                RelPath::resolve(&RelPath::root(), &out.path).ok_or("bad path in cache entry")?;
            let current = hash_path(context.root, &path, context.stat_cache)
                .map_err(|e| format!("cannot hash out `{path}`: {e}"))?;
            intact &= current.is_some_and(|c| c.digest == out.digest);
        }
        if intact {
            report.checks = run_checks(stage, context.root);
            return Ok(Outcome::Cached);
        }
        if restore(&entry, context).is_ok() {
            report.checks = run_checks(stage, context.root);
            return Ok(Outcome::Restored);
        }
        // Objects missing from the store: fall through and run the command.
    }

    // Outs are removed first, so that nothing stale survives and a missing out is noticed.
    for out in &stage.outs {
        remove_path(&out.to_path(context.root))
            .map_err(|e| format!("cannot remove old `{out}`: {e}"))?;
        if let Some(parent) = out.to_path(context.root).parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
        }
    }
    let log_dir = &context.log_dirs[&stage.id.model];
    fs::create_dir_all(log_dir)
        .map_err(|e| format!("cannot create `{}`: {e}", log_dir.display()))?;
    let log_path = log_dir.join(format!("{}.log", stage.id.stage));
    report.log = Some(log_path.clone());
    let code = run_command(stage, context, &log_path)?;
    if context.cancel.load(Ordering::SeqCst) {
        return Ok(Outcome::Cancelled);
    }
    if code != Some(0) {
        return Ok(Outcome::Failed(Failure::Exit {
            code,
            log_tail: log_tail(&log_path, 20),
        }));
    }
    let mut outs = Vec::new();
    for out in &stage.outs {
        let Some(digest) = hash_path(context.root, out, context.stat_cache)
            .map_err(|e| format!("cannot hash out `{out}`: {e}"))?
        else {
            return Ok(Outcome::Failed(Failure::MissingOut(out.clone())));
        };
        save_out(out, &digest, context)?;
        outs.push(CachedOut {
            path: out.to_string(),
            kind: digest.kind,
            digest: digest.digest,
        });
    }
    report.checks = run_checks(stage, context.root);
    if report.checks.iter().any(|c| !c.passed) {
        return Ok(Outcome::Failed(Failure::Checks));
    }
    // The cache entry is written last: it only ever names outs that are wholly in the store.
    let entry = serde_json::to_vec(&CacheEntry { outs }).map_err(|e| e.to_string())?;
    store
        .write_ref(RUN_CACHE, &key.to_hex(), &entry)
        .map_err(|e| e.to_string())?;
    Ok(Outcome::Ran)
}

fn run_command(
    stage: &Stage,
    context: &StageContext<'_>,
    log_path: &Path,
) -> Result<Option<i32>, String> {
    use std::os::unix::process::CommandExt;
    let log = File::create(log_path)
        .map_err(|e| format!("cannot create log `{}`: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&stage.cmd)
        .current_dir(stage.workdir.to_path(context.root))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .envs(&stage.env)
        .env("KILN_STAGE", &stage.id.stage)
        .env("KILN_MODEL", &stage.id.model)
        .env("KILN_PROJECT_ROOT", context.root);
    if let Some(params) = context.params_files.get(&stage.id.model) {
        command.env("KILN_PARAMS", params);
    }
    if let Some(environment) = context.environments.get(&stage.id.model) {
        environment.apply(&mut command).map_err(|e| e.to_string())?;
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {}`: {e}", stage.cmd))?;
    context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(stage.id.clone(), child.id());
    let status = child.wait();
    context
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&stage.id);
    let status = status.map_err(|e| e.to_string())?;
    Ok(status.code())
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn save_out(out: &RelPath, digest: &PathDigest, context: &StageContext<'_>) -> Result<(), String> {
    let absolute = out.to_path(context.root);
    match &digest.tree {
        None => context
            .store
            .put_file(&absolute, &digest.digest)
            .map_err(|e| e.to_string()),
        Some(tree) => {
            for entry in &tree.entries {
                context
                    .store
                    .put_file(&absolute.join(&entry.path), &entry.digest)
                    .map_err(|e| e.to_string())?;
            }
            let bytes = serde_json::to_vec(tree).map_err(|e| e.to_string())?;
            context
                .store
                .write_ref(TREES, &digest.digest.to_hex(), &bytes)
                .map_err(|e| e.to_string())
        }
    }
}

fn restore(entry: &CacheEntry, context: &StageContext<'_>) -> Result<(), String> {
    // Check that everything is in the store before touching the workspace.
    let mut plan = Vec::new();
    for out in &entry.outs {
        let path =
            RelPath::resolve(&RelPath::root(), &out.path).ok_or("bad path in cache entry")?;
        match out.kind {
            EntryKind::File => {
                if !context.store.contains(&out.digest) {
                    return Err(format!("object for `{path}` is missing"));
                }
                plan.push((path, None));
            }
            EntryKind::Dir => {
                let bytes = context
                    .store
                    .read_ref(TREES, &out.digest.to_hex())
                    .map_err(|e| e.to_string())?
                    .ok_or("tree is missing")?;
                let tree: Tree = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                if tree
                    .entries
                    .iter()
                    .any(|e| !context.store.contains(&e.digest))
                {
                    return Err(format!("objects for `{path}` are missing"));
                }
                plan.push((path, Some(tree)));
            }
        }
    }
    for ((path, tree), out) in plan.into_iter().zip(&entry.outs) {
        let absolute = path.to_path(context.root);
        match tree {
            None => {
                if absolute.is_dir() {
                    remove_path(&absolute).map_err(|e| e.to_string())?;
                }
                context
                    .store
                    .restore_file(&out.digest, &absolute, false)
                    .map_err(|e| e.to_string())?;
            }
            Some(tree) => {
                remove_path(&absolute).map_err(|e| e.to_string())?;
                for file in &tree.entries {
                    context
                        .store
                        .restore_file(&file.digest, &absolute.join(&file.path), file.executable)
                        .map_err(|e| e.to_string())?;
                }
                fs::create_dir_all(&absolute).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn run_checks(stage: &Stage, root: &Path) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for check in &stage.checks {
        let result = |rule: String, passed: bool, message: String| CheckResult {
            stage: stage.id.stage.clone(),
            file: check.file.to_string(),
            rule,
            passed,
            message,
        };
        match checks::run_check(root, check) {
            Ok(report) => results.extend(report.outcomes.into_iter().map(|outcome| {
                let rule = match &outcome.column {
                    Some(column) => format!("{column}.{}", rule_name(outcome.rule)),
                    None => rule_name(outcome.rule).to_string(),
                };
                result(rule, outcome.passed, outcome.message)
            })),
            Err(error) => results.push(result("readable".into(), false, error.to_string())),
        }
    }
    results
}

fn rule_name(rule: checks::RuleKind) -> &'static str {
    use checks::RuleKind;
    match rule {
        RuleKind::Rows => "rows",
        RuleKind::Present => "present",
        RuleKind::Type => "type",
        RuleKind::Min => "min",
        RuleKind::Max => "max",
        RuleKind::Values => "values",
        RuleKind::Missing => "missing",
    }
}

/// Reads the model's metrics files: numeric leaves, flattened with dots.
fn read_metrics(root: &Path, model: &Model) -> Vec<(String, f64)> {
    let mut metrics = BTreeMap::new();
    for stage in &model.stages {
        for file in &stage.metrics {
            if let Ok(values) = read_flat(&file.to_path(root)) {
                for (key, value) in values {
                    if let Some(number) = value.as_number() {
                        metrics.insert(key, number);
                    }
                }
            }
        }
    }
    metrics.into_iter().collect()
}

fn evaluate_gates(
    model: &Model,
    metrics: &[(String, f64)],
    previous: Option<&Vec<(String, f64)>>,
) -> Vec<GateReport> {
    let lookup = |name: &str| -> Lookup {
        if let Some(metric) = name.strip_prefix("previous.") {
            return match previous {
                None => Lookup::Unavailable(format!(
                    "model `{}` has no previous run with metrics",
                    model.name
                )),
                Some(values) => values
                    .iter()
                    .find(|(k, _)| k == metric)
                    .map_or(Lookup::Unknown, |(_, v)| Lookup::Value(*v)),
            };
        }
        if is_reference(name) {
            let alias = name.split('.').next().unwrap_or_default();
            return Lookup::Unavailable(format!(
                "no version of model `{}` is in `{alias}` yet",
                model.name
            ));
        }
        metrics
            .iter()
            .find(|(k, _)| k == name)
            .map_or(Lookup::Unknown, |(_, v)| Lookup::Value(*v))
    };
    model
        .gates
        .iter()
        .map(|gate| GateReport {
            text: gate.text.clone(),
            verdict: gate.expr.verdict(&lookup),
            values: gate
                .expr
                .names()
                .into_iter()
                .map(|name| {
                    let value = match lookup(name) {
                        Lookup::Value(v) => Some(v),
                        _ => None,
                    };
                    (name.to_string(), value)
                })
                .collect(),
        })
        .collect()
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The commit checked out in the project's git repository (`None` outside one). Outside a
/// repository no `git` process is started: its start-up alone is a good part of a no-op run.
pub fn git_commit(root: &Path) -> Option<String> {
    let in_repository = root.ancestors().any(|dir| dir.join(".git").exists());
    if !in_repository {
        return None;
    }
    git(root, &["rev-parse", "HEAD"])
}

/// Whether tracked files have uncommitted changes.
pub fn git_dirty(root: &Path) -> bool {
    git(root, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty())
}
