//! Running a pipeline, in named steps: [`plan`] the stages as a DAG, [`start_runs`] in the
//! registry, [`prepare_environments`], [`schedule`] the stages (independent ones in parallel;
//! each skipped, restored or run), [`judge`] each model (metrics, gates, the servable check),
//! [`record`] the run, and [`publish`] green artifacts: registered as the model's next version
//! (with their lineage) and laid out for serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use kiln_registry::FailureKind;
use kiln_registry::{
    CheckResult, GateResult, Lineage, NewRun, Registered, Registry, RunId, RunOutcome,
    ServableResult, ServableSummary, StageOut, StageOutcome, StageResult, Status,
};
use kiln_spec::values::FlatValues;
use kiln_spec::{Model, Project, RelPath, StageId};
use kiln_store::Digest;

use crate::Error;
use crate::artifact::{Artifact, run_artifact};
pub use crate::gates::GateReport;
use crate::gates::{evaluate_gates, read_metrics};
use crate::inputs::StageInputs;
use crate::params::{Override, apply_overrides, flat_json, model_params, nested_json};
use crate::python_env::{EnvOptions, PythonEnvironment};
use crate::stage::{StageContext, error_chain, hash_source_deps, run_stage};
use crate::workspace::Workspace;

/// Proves that a model's artifact can be served: loads it in its engine and predicts on an example.
/// Implemented outside the engine (the binary / a serving crate); the pipeline only calls it.
pub trait ArtifactCheck: Sync {
    fn check(
        &self,
        project: &Project,
        model: &Model,
        artifact: &Artifact,
        environment: Option<&PythonEnvironment>,
    ) -> Result<ServablePass, ServabilityFailure>;
}

/// A passed servable check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServablePass {
    /// One line, e.g. "loaded and predicted 5 example rows in 12 ms".
    pub summary: String,
    /// What the check could not prove (e.g. no example input to predict on), for the run's
    /// warnings.
    pub warning: Option<String>,
    /// The model's inputs and outputs as its engine read them, kept with the version.
    pub signature: Option<serde_json::Value>,
    /// The request body the model answered (a few rows), kept with the version.
    pub example: Option<serde_json::Value>,
}

impl ServablePass {
    pub fn new(summary: impl Into<String>) -> ServablePass {
        ServablePass {
            summary: summary.into(),
            warning: None,
            signature: None,
            example: None,
        }
    }
}

/// Why a model's artifact could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServabilityFailure {
    /// One line, e.g. ``predict.py raised `ValueError: bad input` ``.
    pub message: String,
    /// More of the model's error, e.g. a Python traceback.
    pub detail: Option<String>,
}

/// What the user asked for.
#[derive(Clone)]
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
    /// Loads each green model's artifact in its engine before the run is called green; `None`
    /// skips the servable check.
    pub artifact_check: Option<Arc<dyn ArtifactCheck + Send + Sync>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("models", &self.models)
            .field("overrides", &self.overrides)
            .field("jobs", &self.jobs)
            .field("force", &self.force)
            .field("cancel", &self.cancel)
            .field(
                "artifact_check",
                &self.artifact_check.as_ref().map(|_| "ArtifactCheck"),
            )
            .finish()
    }
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
        self.recorded().label()
    }

    /// The outcome as the run records it.
    pub fn recorded(&self) -> StageOutcome {
        match self {
            Outcome::Ran => StageOutcome::Ran,
            Outcome::Cached => StageOutcome::Cached,
            Outcome::Restored => StageOutcome::Restored,
            Outcome::Failed(_) => StageOutcome::Failed,
            Outcome::Cancelled => StageOutcome::Cancelled,
            Outcome::NotRun => StageOutcome::NotRun,
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Ran | Outcome::Cached | Outcome::Restored)
    }
}

/// Why a stage failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The command exited non-zero (or was killed by a signal: no code).
    Exit { code: Option<i32>, log_tail: String },
    /// The command succeeded but did not write a declared out.
    MissingOut(RelPath),
    /// A data check on a file the stage wrote failed.
    Checks,
    /// Kiln itself could not do its part (hashing, storing, spawning).
    Internal(Arc<Error>),
}

impl PartialEq for Failure {
    fn eq(&self, other: &Failure) -> bool {
        match (self, other) {
            (
                Failure::Exit { code, log_tail },
                Failure::Exit {
                    code: other_code,
                    log_tail: other_tail,
                },
            ) => code == other_code && log_tail == other_tail,
            (Failure::MissingOut(path), Failure::MissingOut(other)) => path == other,
            (Failure::Checks, Failure::Checks) => true,
            (Failure::Internal(error), Failure::Internal(other)) => Arc::ptr_eq(error, other),
            _ => false,
        }
    }
}

impl Failure {
    pub(crate) fn internal(error: Error) -> Failure {
        Failure::Internal(Arc::new(error))
    }

    pub fn describe(&self) -> String {
        match self {
            Failure::Exit {
                code: Some(code), ..
            } => format!("exited with code {code}"),
            Failure::Exit { code: None, .. } => "was killed by a signal".to_string(),
            Failure::MissingOut(path) => format!("succeeded but did not write `{path}`"),
            Failure::Checks => "wrote data that failed its checks".to_string(),
            Failure::Internal(error) => {
                format!("could not be run by Kiln: {}", error_chain(&**error))
            }
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
    pub outs: Vec<StageOut>,
    /// Each dep with the digest the stage saw (`None`: it did not exist), when it succeeded.
    pub deps: Vec<(String, Option<String>)>,
    /// Things the user should know that did not fail the stage.
    pub warnings: Vec<String>,
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
            deps: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// One model's part of a run.
#[derive(Debug, Clone)]
pub struct ModelReport {
    pub model: String,
    pub run_id: RunId,
    pub status: Status,
    /// Why the model's run did not succeed (the most fundamental reason).
    pub failure: Option<FailureKind>,
    /// Why, in one line, as the run records it.
    pub message: Option<String>,
    pub stages: Vec<StageReport>,
    pub metrics: Vec<(String, f64)>,
    /// Metrics of the model's previous run that had metrics, for deltas.
    pub previous: Option<(RunId, Vec<(String, f64)>)>,
    pub gates: Vec<GateReport>,
    /// The servable check, when it ran (a model with an artifact whose gates passed).
    pub servable: Option<ServableResult>,
    /// What a passed servable check learnt: the model's signature and the example it answered.
    pub signature: Option<serde_json::Value>,
    pub example: Option<serde_json::Value>,
    /// The registry version the run's artifact became (or already was), when it is green.
    pub version: Option<Registered>,
    /// Things that went wrong without failing a stage (an unreadable metrics file, an out that
    /// could not be restored and was rebuilt), for the user to see.
    pub warnings: Vec<String>,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub models: Vec<ModelReport>,
    /// The most fundamental reason any model's run did not succeed.
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
    EnvironmentStarted {
        model: &'a str,
    },
    EnvironmentReady {
        model: &'a str,
        duration: Duration,
    },
    Planned {
        stages: &'a [StageId],
    },
    StageStarted {
        id: &'a StageId,
    },
    StageFinished {
        report: &'a StageReport,
    },
    /// The model's artifact is being loaded in its engine to predict on an example.
    ServableCheckStarted {
        model: &'a str,
    },
    ServableCheckFinished {
        model: &'a str,
        result: &'a ServableResult,
    },
    ParamWritten {
        write: &'a crate::ParamWrite,
    },
    Warning {
        message: &'a str,
    },
    EnvironmentStep {
        model: &'a str,
        step: &'a str,
    },
    InstallerOutput {
        model: &'a str,
        line: &'a str,
    },
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
    let plan = plan(project, options, observer)?;
    // HEAD and the index are read while the stages are checked.
    let git_check = crate::git::start_check(&project.root);
    let runs = start_runs(workspace, &plan)?;
    let environments = match prepare_environments(project, &plan.models, observer) {
        Ok(environments) => environments,
        Err(error) => return end_before_stages(workspace, &plan, &runs, error, options, started),
    };

    observer.on_event(Event::Planned {
        stages: &plan.selected,
    });
    let context = StageContext {
        root: &project.root,
        store: &workspace.store,
        stat_cache: &workspace.stat_cache,
        source_digests: hash_source_deps(project, &plan.selected, &workspace.stat_cache),
        environments: &environments,
        params: &plan.params,
        params_files: &runs.params_files,
        force: options.force,
        cancel: &options.cancel,
        running: Mutex::new(HashMap::new()),
        log_dirs: runs.log_dirs(workspace),
    };
    let mut stage_reports = schedule(
        project,
        &plan.selected,
        &context,
        options,
        observer,
        &workspace.registry,
    );
    crate::hashing::save_stat_cache(&workspace.stat_cache, observer);

    let git = git_check.finish(&workspace.stat_cache);
    let mut reports = Vec::new();
    for model in &plan.models {
        let ended = EndedStages::take(&mut stage_reports, &plan, model, runs.ids[&model.name]);
        let report = judge(
            workspace,
            project,
            model,
            ended,
            environments.get(&model.name),
            options,
            observer,
        )?;
        record(workspace, project, &report, &git)?;
        reports.push(report);
    }
    publish(
        workspace,
        project,
        &Published {
            plan: &plan,
            environments: &environments,
            git: &git,
        },
        &mut reports,
    );
    Ok(RunReport {
        failure: reports.iter().filter_map(|r| r.failure).min(),
        models: reports,
        duration: started.elapsed(),
    })
}

/// What a run will do: the stages (the chosen models' and everything upstream), the models
/// they belong to, and each model's params with the overrides applied.
struct Plan<'p> {
    selected: Vec<StageId>,
    models: Vec<&'p Model>,
    params: HashMap<String, FlatValues>,
    /// The overrides each model took.
    applied: HashMap<String, Vec<Override>>,
}

fn plan<'p>(
    project: &'p Project,
    options: &RunOptions,
    observer: &dyn Observer,
) -> Result<Plan<'p>, Error> {
    let selected = select_stages(project, &options.models)?;
    let models: Vec<&Model> = project
        .models
        .iter()
        .filter(|m| selected.iter().any(|id| id.model == m.name))
        .collect();
    // `--set` goes into the params files first, so the stages and the record see the same values.
    crate::params::write_overrides(&project.root, &models, &options.overrides, observer)?;
    let mut params = HashMap::new();
    for model in &models {
        params.insert(model.name.clone(), model_params(&project.root, model)?);
    }
    let applied = apply_overrides(&models, &mut params, &options.overrides)?;
    Ok(Plan {
        selected,
        models,
        params,
        applied,
    })
}

/// The runs recorded as started, one per model, and the params file each model's commands
/// read (`KILN_PARAMS`, kept with the run's logs).
struct StartedRuns {
    ids: HashMap<String, RunId>,
    params_files: HashMap<String, PathBuf>,
}

impl StartedRuns {
    fn log_dirs(&self, workspace: &Workspace) -> HashMap<String, PathBuf> {
        self.ids
            .iter()
            .map(|(model, id)| (model.clone(), workspace.log_dir(*id)))
            .collect()
    }
}

fn start_runs(workspace: &mut Workspace, plan: &Plan<'_>) -> Result<StartedRuns, Error> {
    let mut ids = HashMap::new();
    for model in &plan.models {
        let id = workspace.registry.start_run(&NewRun {
            model: model.name.clone(),
            params: flat_json(&plan.params[&model.name]),
            overrides: overrides_json(plan.applied.get(&model.name)),
        })?;
        ids.insert(model.name.clone(), id);
    }
    let mut params_files = HashMap::new();
    for model in &plan.models {
        let dir = workspace.log_dir(ids[&model.name]);
        fs::create_dir_all(&dir).map_err(|source| Error::io("create", &dir, source))?;
        let path = dir.join("params.json");
        let text = serde_json::to_string_pretty(&nested_json(&plan.params[&model.name]))
            .expect("params serialise to JSON");
        kiln_store::atomic::write(&path, text.as_bytes())
            .map_err(|source| Error::io("write", &path, source))?;
        params_files.insert(model.name.clone(), path);
    }
    Ok(StartedRuns { ids, params_files })
}

/// Ends every run when the Python environments could not be prepared: cancelled when Ctrl-C
/// stopped the installers (they share Kiln's process group), else failed with the error.
fn end_before_stages(
    workspace: &mut Workspace,
    plan: &Plan<'_>,
    runs: &StartedRuns,
    error: Error,
    options: &RunOptions,
    started: Instant,
) -> Result<RunReport, Error> {
    if !options.cancel.load(Ordering::SeqCst) {
        let message = error_chain(&error);
        for id in runs.ids.values() {
            workspace.registry.finish_run(
                *id,
                &RunOutcome::bare(
                    Status::Failed,
                    Some(FailureKind::Environment),
                    Some(&message),
                ),
            )?;
        }
        return Err(error);
    }
    let message = "cancelled while building the python environment";
    let mut reports = Vec::new();
    for model in &plan.models {
        let run_id = runs.ids[&model.name];
        workspace.registry.finish_run(
            run_id,
            &RunOutcome::bare(
                Status::Cancelled,
                Some(FailureKind::Cancelled),
                Some(message),
            ),
        )?;
        reports.push(ModelReport {
            model: model.name.clone(),
            run_id,
            status: Status::Cancelled,
            failure: Some(FailureKind::Cancelled),
            message: Some(message.to_string()),
            stages: Vec::new(),
            metrics: Vec::new(),
            previous: None,
            gates: Vec::new(),
            servable: None,
            signature: None,
            example: None,
            version: None,
            warnings: Vec::new(),
        });
    }
    Ok(RunReport {
        models: reports,
        failure: Some(FailureKind::Cancelled),
        duration: started.elapsed(),
    })
}

/// A model's stages as they ended, before the model is judged.
struct EndedStages {
    run_id: RunId,
    stages: Vec<StageReport>,
}

impl EndedStages {
    /// Takes the reports of `model`'s stages, in pipeline order.
    fn take(
        reports: &mut BTreeMap<StageId, StageReport>,
        plan: &Plan<'_>,
        model: &Model,
        run_id: RunId,
    ) -> EndedStages {
        let stages = plan
            .selected
            .iter()
            .filter(|id| id.model == model.name)
            .filter_map(|id| reports.remove(id))
            .collect();
        EndedStages { run_id, stages }
    }
}

/// Decides how a model's run ended: its stages, then (when they all succeeded) its metrics and
/// gates, then (when the gates pass and it has an artifact) the servable check.
fn judge(
    workspace: &Workspace,
    project: &Project,
    model: &Model,
    ended: EndedStages,
    environment: Option<&PythonEnvironment>,
    options: &RunOptions,
    observer: &dyn Observer,
) -> Result<ModelReport, Error> {
    let EndedStages { run_id, stages } = ended;
    let cancelled = options.cancel.load(Ordering::SeqCst);
    // Every way the model's run failed; it is recorded with the most fundamental.
    let mut failures: Vec<FailureKind> = Vec::new();
    let stage_failed = stages
        .iter()
        .any(|s| matches!(&s.outcome, Outcome::Failed(f) if *f != Failure::Checks));
    let check_failed = stages
        .iter()
        .any(|s| s.outcome == Outcome::Failed(Failure::Checks));
    let all_done = stages.iter().all(|s| s.outcome.succeeded());
    if cancelled {
        failures.push(FailureKind::Cancelled);
    }
    if stage_failed || (!all_done && !check_failed && !cancelled) {
        failures.push(FailureKind::Stage);
    }
    if check_failed {
        failures.push(FailureKind::Check);
    }
    let mut message = stages.iter().find_map(|s| match &s.outcome {
        Outcome::Failed(f) => Some(format!("stage `{}` {}", s.id.stage, f.describe())),
        _ => None,
    });

    let (metrics, mut warnings) = if all_done {
        read_metrics(&project.root, model)
    } else {
        (Vec::new(), Vec::new())
    };
    warnings.extend(stages.iter().flat_map(|s| s.warnings.iter().cloned()));
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
        let aliased = aliased_metrics(registry, model)?;
        evaluate_gates(model, &metrics, previous_green.as_ref(), &aliased)
    } else {
        Vec::new()
    };
    if let Some(gate) = gates.iter().find(|g| g.verdict.blocks()) {
        failures.push(FailureKind::Gate);
        message.get_or_insert_with(|| format!("gate `{}` failed ({})", gate.text, gate.detail()));
    }

    let mut servable = None;
    let (mut signature, mut example) = (None, None);
    if failures.is_empty()
        && model.artifact.is_some()
        && let Some(check) = &options.artifact_check
    {
        let outs = stages.iter().flat_map(|s| &s.outs);
        let (result, pass) = check_servable(
            workspace,
            project,
            model,
            run_id,
            outs,
            environment,
            &**check,
            observer,
        );
        if let Some(pass) = pass {
            warnings.extend(pass.warning);
            signature = pass.signature;
            example = pass.example;
        }
        if !result.passed {
            failures.push(FailureKind::Unservable);
            message = Some(format!(
                "the artifact of `{}` could not be served: {}",
                model.name, result.message
            ));
        }
        servable = Some(result);
    }

    let failure = failures.into_iter().min();
    let status = if cancelled {
        Status::Cancelled
    } else if failure.is_some() {
        Status::Failed
    } else {
        Status::Succeeded
    };
    Ok(ModelReport {
        model: model.name.clone(),
        run_id,
        status,
        failure,
        message,
        stages,
        metrics,
        previous,
        gates,
        servable,
        signature,
        example,
        version: None,
        warnings,
    })
}

/// Materialises the artifact from this run's outs (the run is not green yet, so the latest
/// green artifact would be another run's) and asks the check to load it and predict.
#[allow(clippy::too_many_arguments)]
fn check_servable<'a>(
    workspace: &Workspace,
    project: &Project,
    model: &Model,
    run_id: RunId,
    outs: impl IntoIterator<Item = &'a StageOut>,
    environment: Option<&PythonEnvironment>,
    check: &dyn ArtifactCheck,
    observer: &dyn Observer,
) -> (ServableResult, Option<ServablePass>) {
    observer.on_event(Event::ServableCheckStarted { model: &model.name });
    let started = Instant::now();
    let outcome = run_artifact(workspace, project, model, run_id, outs)
        .map_err(|error| ServabilityFailure {
            message: error_chain(&error),
            detail: None,
        })
        .and_then(|artifact| check.check(project, model, &artifact, environment));
    let duration_ms = started.elapsed().as_millis() as i64;
    let (result, pass) = match outcome {
        Ok(pass) => (
            ServableResult {
                passed: true,
                message: pass.summary.clone(),
                detail: None,
                duration_ms,
            },
            Some(pass),
        ),
        Err(failure) => (
            ServableResult {
                passed: false,
                message: failure.message,
                detail: failure.detail,
                duration_ms,
            },
            None,
        ),
    };
    observer.on_event(Event::ServableCheckFinished {
        model: &model.name,
        result: &result,
    });
    (result, pass)
}

/// Writes a model's run into the registry, in one transaction.
fn record(
    workspace: &mut Workspace,
    project: &Project,
    report: &ModelReport,
    git: &(Option<String>, bool),
) -> Result<(), Error> {
    let stages: Vec<StageResult> = report
        .stages
        .iter()
        .map(|s| StageResult {
            stage: s.id.stage.clone(),
            outcome: s.outcome.recorded(),
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
            outs: s.outs.clone(),
        })
        .collect();
    let checks: Vec<CheckResult> = report
        .stages
        .iter()
        .flat_map(|s| s.checks.clone())
        .collect();
    let gates: Vec<GateResult> = report
        .gates
        .iter()
        .map(|g| GateResult {
            expr: g.text.clone(),
            verdict: g.recorded_verdict(),
            detail: g.detail(),
        })
        .collect();
    workspace.registry.finish_run(
        report.run_id,
        &RunOutcome {
            status: report.status,
            failure: report.failure,
            git: Some((git.0.as_deref(), git.1)),
            message: report.message.as_deref(),
            stages: &stages,
            metrics: &report.metrics,
            checks: &checks,
            gates: &gates,
            servable: report.servable.as_ref(),
        },
    )?;
    Ok(())
}

/// What the publish step needs besides the reports.
struct Published<'r> {
    plan: &'r Plan<'r>,
    environments: &'r HashMap<String, PythonEnvironment>,
    git: &'r (Option<String>, bool),
}

/// A green run's artifact becomes the model's next version in the registry (moving `latest`),
/// and a served model follows it (`.kiln/serving/<model>` and `.kiln/serving/<model>@latest`).
/// The run is recorded by now: a failure here is a warning, not a lost report.
fn publish(
    workspace: &mut Workspace,
    project: &Project,
    published: &Published<'_>,
    reports: &mut [ModelReport],
) {
    for report in reports {
        let Some(model) = project.model(&report.model) else {
            continue;
        };
        if model.artifact.is_some()
            && let Err(error) =
                crate::artifact::republish_stale_aliases(workspace, project, &report.model)
        {
            report.warnings.push(format!(
                "could not bring the serving links of `{}` up to date: {}",
                report.model,
                error_chain(&error)
            ));
        }
        if report.status != Status::Succeeded || model.artifact.is_none() {
            continue;
        }
        if let Err(error) = crate::artifact::publish(workspace, project, &report.model) {
            report.warnings.push(format!(
                "could not publish the artifact for serving: {}",
                error_chain(&error)
            ));
        }
        let mut warnings = Vec::new();
        let registered = register(workspace, project, model, published, report, &mut warnings);
        report.warnings.extend(warnings);
        match registered {
            Ok(registered) => {
                report.version = Some(registered);
                if let Err(error) = crate::artifact::publish_alias(
                    workspace,
                    project,
                    &report.model,
                    kiln_registry::LATEST,
                ) {
                    report.warnings.push(format!(
                        "could not publish `{}@latest` for serving: {}",
                        report.model,
                        error_chain(&error)
                    ));
                }
            }
            Err(error) => report.warnings.push(format!(
                "could not register the artifact as a version of `{}`: {}",
                report.model,
                error_chain(&error)
            )),
        }
    }
}

/// Registers a green run's artifact, already in the store, with its lineage.
fn register(
    workspace: &mut Workspace,
    project: &Project,
    model: &Model,
    published: &Published<'_>,
    report: &ModelReport,
    warnings: &mut Vec<String>,
) -> Result<Registered, Error> {
    let artifact = run_artifact(
        workspace,
        project,
        model,
        report.run_id,
        report.stages.iter().flat_map(|s| &s.outs),
    )?;
    let environment = match published.environments.get(&model.name) {
        Some(environment) => Some(crate::python_env::installed_packages(environment)?),
        None => None,
    };
    let profile = match crate::training_data::profile(workspace, project, model) {
        Ok(profile) => profile,
        Err(error) => {
            warnings.push(format!(
                "version registered without a profile of its training data: {}",
                error_chain(&error)
            ));
            None
        }
    };
    let lineage = Lineage {
        run_id: report.run_id,
        commit: published.git.0.clone(),
        dirty: published.git.1,
        params: flat_json(&published.plan.params[&model.name]),
        metrics: report.metrics.clone(),
        deps: report
            .stages
            .iter()
            .flat_map(|s| s.deps.iter().cloned())
            .collect(),
        environment,
        servable: report.servable.as_ref().map(|s| ServableSummary {
            passed: s.passed,
            message: s.message.clone(),
        }),
        signature: report.signature.clone(),
        example: report.example.clone(),
        profile,
    };
    // Blobs land before the row that names them: with a remote store, the artifact (a file, or
    // a tree and its files) is uploaded first.
    if let Some(remote) = &workspace.remote {
        workspace.store.push(remote.as_ref(), &artifact.digest)?;
    }
    Ok(workspace
        .registry
        .register_version(&model.name, &artifact.digest.to_hex(), &lineage)?)
}

/// The metrics of the versions a gate may compare with (`production.NAME`, `staging.NAME`):
/// each alias the model's gates name, with the version it holds, if any.
fn aliased_metrics(
    registry: &Registry,
    model: &Model,
) -> Result<HashMap<String, Option<crate::gates::AliasedVersion>>, Error> {
    let mut aliased = HashMap::new();
    for gate in &model.gates {
        for name in gate.expr.names() {
            let Some((alias, _)) = name.split_once('.') else {
                continue;
            };
            if alias == "previous"
                || !kiln_spec::gate::is_reference(name)
                || aliased.contains_key(alias)
            {
                continue;
            }
            let held = match registry.alias_version(&model.name, alias)? {
                Some(version) => Some(crate::gates::AliasedVersion {
                    version,
                    metrics: registry
                        .model_version(&model.name, version)?
                        .lineage
                        .metrics,
                }),
                None => None,
            };
            aliased.insert(alias.to_string(), held);
        }
    }
    Ok(aliased)
}

/// The overrides a model's run took, as recorded with the run: typed values by dotted key.
fn overrides_json(overrides: Option<&Vec<Override>>) -> serde_json::Value {
    let values: FlatValues = overrides
        .into_iter()
        .flatten()
        .map(|o| (o.key.clone(), o.value.clone()))
        .collect();
    flat_json(&values)
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
                        // The receiver lives until every stage thread of the scope ended.
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
                    let mut report = report;
                    if let (Some(inputs), true) = (&inputs, report.outcome.succeeded()) {
                        report.deps = inputs
                            .deps
                            .iter()
                            .map(|(path, digest)| (path.to_string(), digest.map(|d| d.to_hex())))
                            .collect();
                    }
                    if let (Some(inputs), Some(key), true) =
                        (&inputs, report.key, report.outcome.succeeded())
                        && let Err(error) = registry.set_stage_state(
                            &report.id.to_string(),
                            &key.to_hex(),
                            &inputs.to_json(),
                        )
                    {
                        // Only `kiln status` reads it: the stage's result stands.
                        report.warnings.push(format!(
                            "could not record the inputs of `{}` for `kiln status`: {}",
                            report.id,
                            error_chain(&error)
                        ));
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
