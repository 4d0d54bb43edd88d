//! The pipeline commands: `check`, `run`, `status`, `runs`, `logs`, `metrics diff`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kiln_pipeline::python_env::{EnvOptions, ensure_env};
use kiln_pipeline::run::Failure;
use kiln_pipeline::{FailureKind, Outcome, Override, RunOptions, StageStatus, Workspace};
use kiln_registry::{Run, Status};
use kiln_spec::Project;
use serde_json::json;

use crate::exit;
use crate::report;
use crate::ui::{self, Progress};

/// An error whose message was already printed in full (diagnostics); only the exit code is left.
#[derive(Debug)]
struct Reported(u8);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reported")
    }
}

impl std::error::Error for Reported {}

/// A command-line mistake: exit code 2.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub fn print_error(error: &anyhow::Error) {
    if error.downcast_ref::<Reported>().is_some() {
        return;
    }
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if let Some(hint) = hint_for(error) {
        eprintln!("hint: {hint}");
    }
}

fn hint_for(error: &anyhow::Error) -> Option<String> {
    if let Some(kiln_spec::Error::NotFound { .. }) = error.downcast_ref() {
        return Some(
            "run `kiln init` to write one, or pass `-C DIR` to point at the project".into(),
        );
    }
    if let Some(kiln_pipeline::Error::PythonEnv(env)) = error.downcast_ref() {
        return env.hint();
    }
    if let Some(kiln_pipeline::Error::Busy) = error.downcast_ref() {
        return Some("wait for it to finish, or stop it (Ctrl-C) before starting another".into());
    }
    if let Some(kiln_pipeline::Error::UnknownParam { .. }) = error.downcast_ref() {
        return Some("`--set` takes a key of the params file, e.g. `--set train.C=0.5`".into());
    }
    if let Some(error) = error.downcast_ref::<kiln_pipeline::Error>() {
        return error.hint();
    }
    None
}

pub fn exit_code_of(error: &anyhow::Error) -> u8 {
    if let Some(Reported(code)) = error.downcast_ref() {
        return *code;
    }
    let invalid = error.downcast_ref::<Usage>().is_some()
        || matches!(
            error.downcast_ref(),
            Some(kiln_spec::Error::NotFound { .. } | kiln_spec::Error::Invalid { .. })
        )
        || matches!(
            error.downcast_ref(),
            Some(
                kiln_pipeline::Error::UnknownParam { .. }
                    | kiln_pipeline::Error::SetParam { .. }
                    | kiln_pipeline::Error::UnknownModel { .. }
            )
        );
    if invalid {
        exit::INVALID
    } else {
        exit::STAGE_FAILED
    }
}

/// Loads the project, printing every diagnostic when it is invalid.
fn load(root: &Path) -> anyhow::Result<Project> {
    match kiln_spec::load(root) {
        Ok(project) => Ok(project),
        Err(kiln_spec::Error::Invalid { file, diagnostics }) => {
            let color = ui::color();
            for diagnostic in &diagnostics {
                eprintln!("{}\n", diagnostic.render(color));
            }
            let n = diagnostics.len();
            eprintln!(
                "error: `{}` has {n} problem{}",
                file.display(),
                if n == 1 { "" } else { "s" }
            );
            Err(Reported(exit::INVALID).into())
        }
        Err(error) => Err(error.into()),
    }
}

pub fn check(root: &Path) -> anyhow::Result<ExitCode> {
    let project = load(root)?;
    let stages = project.stages().count();
    eprintln!(
        "`{}` is valid: {} model{}, {stages} stage{}",
        project.file.display(),
        project.models.len(),
        if project.models.len() == 1 { "" } else { "s" },
        if stages == 1 { "" } else { "s" }
    );
    Ok(exit::code(exit::SUCCESS))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Models to run (default: all). Stages of other models they depend on run too.
    models: Vec<String>,
    /// Set a param, e.g. `--set train.C=0.5` (repeatable): written into the params file (only
    /// that value's text changes; comments and layout stay), as `dvc exp run --set-param` does,
    /// so scripts that read `params.yaml` see it.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Stages to run at once (default: the number of CPUs).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// Run every stage even when its inputs are unchanged.
    #[arg(long)]
    force: bool,
    /// Write a JUnit XML report (one testcase per stage, data check and gate).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a Markdown summary fit for a pull-request comment.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `--set KEY=VALUE` arguments, typed.
fn parse_overrides(set: &[String]) -> Result<Vec<Override>, Usage> {
    set.iter()
        .map(|text| {
            Override::parse(text).map_err(|message| Usage(format!("invalid `--set`: {message}")))
        })
        .collect()
}

pub fn run(root: &Path, args: RunArgs) -> anyhow::Result<ExitCode> {
    let overrides = parse_overrides(&args.set)?;
    if args.jobs == Some(0) {
        bail!(Usage("`--jobs` must be at least 1".into()));
    }
    let project = load(root)?;
    let mut workspace = Workspace::open(&project.root)?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // A second Ctrl-C while stopping is ignored: the run is already being wound down.
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    let options = RunOptions {
        models: args.models.clone(),
        overrides,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        force: args.force,
        cancel: cancel.clone(),
        artifact_check: None,
    };
    let progress = Progress::new(false);
    let result = kiln_pipeline::run(&mut workspace, &project, &options, &progress)?;

    for model in &result.models {
        for stage in &model.stages {
            if let Outcome::Failed(failure) = &stage.outcome {
                explain_failure(
                    &stage.id.to_string(),
                    failure,
                    stage.log.as_deref(),
                    &project.root,
                    &stage.checks,
                );
            }
        }
        for warning in &model.warnings {
            eprintln!("warning: {warning}");
        }
        if !model.gates.is_empty() {
            eprintln!("\n{}", report::gate_table(model));
        }
        if let Some(servable) = model.servable.as_ref().filter(|s| !s.passed) {
            eprintln!(
                "\nerror: the artifact of `{}` could not be served: {}",
                model.model, servable.message
            );
            if let Some(detail) = &servable.detail {
                eprintln!("--- the model's error ---\n{}\n---", detail.trim_end());
            }
        }
    }
    if let Some(path) = &args.junit {
        report::write_junit(path, &result)
            .with_context(|| format!("cannot write the JUnit report `{}`", path.display()))?;
    }
    if let Some(path) = &args.report {
        report::write_markdown(path, &result)
            .with_context(|| format!("cannot write the Markdown report `{}`", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::run_json(&result))?
        );
    }
    let runs: Vec<String> = result
        .models
        .iter()
        .map(|m| {
            let why = m
                .failure
                .filter(|_| m.status == Status::Failed)
                .map_or(String::new(), |kind| format!(" ({})", kind.as_str()));
            format!(
                "run {} of `{}` {}{why}",
                m.run_id,
                m.model,
                m.status.as_str()
            )
        })
        .collect();
    let code = match result.failure {
        None => exit::SUCCESS,
        Some(FailureKind::Stage) => exit::STAGE_FAILED,
        Some(FailureKind::Check) => exit::CHECK_FAILED,
        Some(FailureKind::Gate) => exit::GATE_FAILED,
        Some(FailureKind::Unservable) => exit::UNSERVABLE,
        Some(FailureKind::Cancelled) => exit::CANCELLED,
        // Not a result: the run returns an error instead.
        Some(FailureKind::Environment) => exit::STAGE_FAILED,
    };
    eprintln!("\n{} ({})", runs.join(", "), ui::duration(result.duration));
    Ok(exit::code(code))
}

fn explain_failure(
    id: &str,
    failure: &Failure,
    log: Option<&Path>,
    root: &Path,
    checks: &[kiln_registry::CheckResult],
) {
    eprintln!("\nerror: stage `{id}` {}", failure.describe());
    match failure {
        Failure::Exit { log_tail, .. } => {
            if !log_tail.is_empty() {
                eprintln!("--- last lines of its log ---\n{log_tail}\n---");
            }
        }
        Failure::Checks => {
            for check in checks.iter().filter(|c| !c.passed) {
                eprintln!("  data check failed: `{}`: {}", check.file, check.message);
            }
        }
        Failure::MissingOut(_) => {
            eprintln!("hint: make the command write it, or remove it from `outs`")
        }
        Failure::Internal(_) => {}
    }
    if let Some(log) = log {
        eprintln!(
            "full log: {}",
            log.strip_prefix(root).unwrap_or(log).display()
        );
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Models to show (default: all).
    models: Vec<String>,
    /// What would run with this param set, e.g. `--set train.C=0.5` (repeatable); nothing is
    /// written.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the status as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn status(root: &Path, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let overrides = parse_overrides(&args.set)?;
    let project = load(root)?;
    let workspace = Workspace::open(&project.root)?;
    let report = kiln_pipeline::status(&workspace, &project, &args.models, &overrides)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let described = report.stages.iter().map(|(id, status)| {
        let (word, reasons): (&str, &[String]) = match status {
            StageStatus::UpToDate => ("up to date", &[]),
            StageStatus::NeverRun => ("never run", &[]),
            StageStatus::WillRestore(reasons) => ("will be restored from the cache", reasons),
            StageStatus::Stale(reasons) => ("stale", reasons),
        };
        (id, word, reasons)
    });
    if args.json {
        let items: Vec<_> = described
            .map(|(id, word, reasons)| json!({"stage": id.to_string(), "status": word, "reasons": reasons}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(exit::code(exit::SUCCESS));
    }
    for (id, word, reasons) in described {
        println!("{id}: {word}");
        for reason in reasons {
            println!("    {reason}");
        }
    }
    Ok(exit::code(exit::SUCCESS))
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    show: Option<RunsCommand>,
    /// Only runs of this model.
    #[arg(long)]
    model: Option<String>,
    /// How many runs to list, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Show one run: stages, metrics, data checks, gates.
    Show {
        /// The run's id (see `kiln runs`).
        id: i64,
    },
}

/// A run's status, with why it failed: `failed (gate)`.
fn status_word(run: &Run) -> String {
    match (run.status, run.failure) {
        (Status::Failed, Some(kind)) => format!("failed ({})", kind.as_str()),
        (status, _) => status.as_str().to_string(),
    }
}

/// When a run started, in UTC (`2026-11-29 18:56:38`).
fn when(run: &Run) -> String {
    jiff::Timestamp::from_millisecond(run.started_at_ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| "-".to_string())
}

pub fn runs(root: &Path, args: RunsArgs) -> anyhow::Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let workspace = Workspace::open(&root)?;
    if let Some(RunsCommand::Show { id }) = args.show {
        let detail = workspace
            .registry
            .run(id)
            .map_err(|e| Usage(format!("{e}: see `kiln runs` for the ids")))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&detail)?);
            return Ok(exit::code(exit::SUCCESS));
        }
        let run = &detail.run;
        println!("run {}  model {}  {}", run.id, run.model, status_word(run));
        println!(
            "started   {} UTC ({})",
            when(run),
            run.duration_ms
                .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
        );
        println!(
            "commit    {}{}",
            run.commit.as_deref().unwrap_or("(not a git checkout)"),
            if run.dirty {
                " (uncommitted changes)"
            } else {
                ""
            }
        );
        if let Some(message) = &run.message {
            println!("message   {message}");
        }
        if let Some(overrides) = run.overrides.as_object().filter(|o| !o.is_empty()) {
            let pairs: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("overrides {}", pairs.join(" "));
        }
        println!("\nstages:");
        for stage in &detail.stages {
            println!(
                "  {:<20} {:<10} {:>8.2}s  {}",
                stage.stage,
                stage.outcome.label(),
                stage.duration_ms as f64 / 1000.0,
                stage.log_path.as_deref().unwrap_or("")
            );
        }
        if !detail.metrics.is_empty() {
            println!("\nmetrics:");
            for (key, value) in &detail.metrics {
                println!("  {key:<30} {value}");
            }
        }
        if !detail.checks.is_empty() {
            println!("\ndata checks:");
            for check in &detail.checks {
                println!(
                    "  {} {} {}  {}",
                    if check.passed { "pass" } else { "FAIL" },
                    check.file,
                    check.rule_name(),
                    check.message
                );
            }
        }
        if !detail.gates.is_empty() {
            println!("\ngates:");
            for gate in &detail.gates {
                println!(
                    "  {:<8} {:<40} {}",
                    gate.verdict.as_str(),
                    gate.expr,
                    gate.detail
                );
            }
        }
        if let Some(servable) = &detail.servable {
            println!(
                "\nservable check: {}  {} ({:.2}s)",
                if servable.passed { "pass" } else { "FAIL" },
                servable.message,
                servable.duration_ms as f64 / 1000.0
            );
            if let Some(more) = &servable.detail {
                for line in more.lines() {
                    println!("  {line}");
                }
            }
        }
        return Ok(exit::code(exit::SUCCESS));
    }
    let runs = workspace.registry.runs(args.model.as_deref(), args.limit)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(exit::code(exit::SUCCESS));
    }
    if runs.is_empty() {
        eprintln!("no runs yet: start one with `kiln run`");
    } else {
        println!(
            "{:>5}  {:<16} {:<20} {:<20} {:>9}  commit",
            "id", "model", "status", "started (UTC)", "duration"
        );
    }
    for run in &runs {
        let commit = run.commit.as_deref().map_or("-".to_string(), |c| {
            format!(
                "{}{}",
                &c[..c.len().min(10)],
                if run.dirty { "+" } else { "" }
            )
        });
        let duration = run
            .duration_ms
            .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0));
        println!(
            "{:>5}  {:<16} {:<20} {:<20} {:>9}  {commit}",
            run.id,
            run.model,
            status_word(run),
            when(run),
            duration
        );
    }
    Ok(exit::code(exit::SUCCESS))
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run's id (see `kiln runs`).
    id: i64,
    /// The stage (default: every stage that has a log).
    stage: Option<String>,
}

pub fn logs(root: &Path, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let workspace = Workspace::open(&root)?;
    let detail = workspace
        .registry
        .run(args.id)
        .map_err(|e| Usage(format!("{e}: see `kiln runs` for the ids")))?;
    let stages: Vec<_> = detail
        .stages
        .iter()
        .filter(|s| args.stage.as_ref().is_none_or(|name| &s.stage == name))
        .collect();
    if let Some(name) = &args.stage
        && stages.is_empty()
    {
        let known: Vec<&str> = detail.stages.iter().map(|s| s.stage.as_str()).collect();
        bail!(Usage(format!(
            "run {} has no stage `{name}` (stages: {})",
            args.id,
            known.join(", ")
        )));
    }
    let mut printed = false;
    for stage in stages {
        let Some(log) = &stage.log_path else {
            if args.stage.is_some() {
                eprintln!(
                    "stage `{}` did not run a command in run {} ({}): it has no log",
                    stage.stage,
                    args.id,
                    stage.outcome.label()
                );
            }
            continue;
        };
        let text = std::fs::read_to_string(root.join(log))
            .with_context(|| format!("cannot read the log `{log}`"))?;
        if args.stage.is_none() {
            println!("=== {} ({log}) ===", stage.stage);
        }
        print!("{text}");
        printed = true;
    }
    if !printed && args.stage.is_none() {
        eprintln!(
            "no stage of run {} ran a command (all cached or not run)",
            args.id
        );
    }
    Ok(exit::code(exit::SUCCESS))
}

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Compare two runs' metrics (default: the newest run with metrics and the one before it).
    #[command(after_help = "Examples:\n  kiln metrics diff\n  kiln metrics diff 3 7 --json")]
    Diff {
        /// The older run (default: the run before RUN_B of the same model).
        run_a: Option<i64>,
        /// The newer run (default: the newest run with metrics).
        run_b: Option<i64>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub fn metrics(root: &Path, command: MetricsCommand) -> anyhow::Result<ExitCode> {
    let MetricsCommand::Diff { run_a, run_b, json } = command;
    let root = std::path::absolute(root)?;
    let workspace = Workspace::open(&root)?;
    let registry = &workspace.registry;
    let (a, b) = match (run_a, run_b) {
        (Some(a), Some(b)) => (a, b),
        (Some(only), None) => {
            let newest = registry
                .runs(None, 1)?
                .first()
                .map(|r| r.id)
                .ok_or_else(|| Usage("no runs yet".into()))?;
            (only, newest)
        }
        _ => {
            let newest = registry
                .runs(None, 200)?
                .into_iter()
                .find(|r| registry.metrics(r.id).is_ok_and(|m| !m.is_empty()));
            let newest = newest
                .ok_or_else(|| Usage("no run has metrics yet: run the pipeline first".into()))?;
            let previous = registry
                .previous_run_with_metrics(&newest.model, Some(newest.id), false)?
                .ok_or_else(|| {
                    Usage(format!(
                        "run {} is the only run of `{}` with metrics: nothing to compare",
                        newest.id, newest.model
                    ))
                })?;
            (previous, newest.id)
        }
    };
    let old = registry.run(a).map_err(|e| Usage(e.to_string()))?.metrics;
    let new = registry.run(b).map_err(|e| Usage(e.to_string()))?.metrics;
    let rows = report::metric_rows(&new, Some(&old));
    if json {
        let metrics: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, new, old)| {
                let delta = new.zip(*old).map(|(n, o)| n - o);
                (k.clone(), json!({"old": old, "new": new, "delta": delta}))
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"run_a": a, "run_b": b, "metrics": metrics}))?
        );
        return Ok(exit::code(exit::SUCCESS));
    }
    println!(
        "{:<30} {:>12} {:>12} {:>12}",
        "metric",
        format!("run {a}"),
        format!("run {b}"),
        "change"
    );
    for (key, new, old) in rows {
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let delta = new
            .zip(old)
            .map_or("-".to_string(), |(n, o)| format!("{:+.4}", n - o));
        println!("{key:<30} {:>12} {:>12} {delta:>12}", show(old), show(new));
    }
    Ok(exit::code(exit::SUCCESS))
}

/// `kiln serve`: a bare model name is this project's model, served as its latest green run
/// stored it and swapped when a later run is green; anything else is a path for the server to
/// load. ONNX Runtime is found as
/// explicitly given, else in the model's Python environment, else in the default python, else
/// Kiln installs it once into its cache (see [`managed_onnx_runtime`]).
pub fn serve(root: &Path, mut args: crate::serve_cmd::ServeArgs) -> anyhow::Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let mut model_python = None;
    if let Some(name) = args.path.clone()
        && !root.join(&name).exists()
    {
        let name = name.to_string_lossy().into_owned();
        if name.contains('/') {
            bail!(Usage(format!("`{name}` does not exist")));
        }
        let project = load(&root).map_err(|error| match error.downcast_ref::<kiln_spec::Error>() {
            Some(kiln_spec::Error::NotFound { .. }) => anyhow::Error::new(Usage(format!(
                "`{name}` is neither a file nor a folder here, and there is no project to find a model `{name}` in"
            ))),
            _ => error,
        })?;
        let workspace = Workspace::open(&project.root)?;
        let (artifact, path) = kiln_pipeline::publish(&workspace, &project, &name)?;
        eprintln!(
            "serving `{name}` from run {} (artifact {}); later green runs are swapped in",
            artifact.run,
            artifact.digest.short()
        );
        args.path = None;
        args.models.insert(0, format!("{name}={}", path.display()));
        if args.request_log.is_none() {
            args.request_log = Some(workspace.state_dir.join("requests"));
        }
        if let Some(python) = project.model(&name).and_then(|m| m.python.as_ref()) {
            let options = EnvOptions::from_env()?;
            let environment = ensure_env(
                &python.requirements.to_path(&project.root),
                &options,
                &mut |line| eprintln!("  {line}"),
            )?;
            model_python = Some(environment.python);
        }
    }
    if args.python.is_none() {
        args.python = model_python;
    }
    let serves_onnx = args
        .path
        .iter()
        .map(|p| root.join(p))
        .chain(
            args.models
                .iter()
                .filter_map(|m| m.split_once('=').map(|(_, p)| root.join(p))),
        )
        .any(|p| p.is_file());
    // Found once here and handed to the server, which would otherwise ask python again.
    if serves_onnx && args.ort_lib.is_none() {
        args.ort_lib = match kiln_serve::ortlib::locate_library(None, args.python.as_deref()) {
            Ok(library) => Some(library),
            Err(_) => managed_onnx_runtime()
                .inspect_err(|error| {
                    eprintln!(
                        "warning: could not install ONNX Runtime into Kiln's cache: {error:#}"
                    )
                })
                .ok(),
        };
    }
    crate::serve_cmd::run(args, &root)
}

/// ONNX Runtime from a Python environment that Kiln builds once in its cache with the
/// `onnxruntime` wheel, for machines where no environment at hand has it.
fn managed_onnx_runtime() -> anyhow::Result<PathBuf> {
    let options = EnvOptions::from_env()?;
    let requirements = options
        .cache_root
        .join("runtime")
        .join("onnxruntime-requirements.txt");
    std::fs::create_dir_all(requirements.parent().expect("has a parent"))?;
    if !requirements.exists() {
        std::fs::write(&requirements, "onnxruntime\n")?;
    }
    eprintln!("installing ONNX Runtime into Kiln's cache (once)...");
    let environment = ensure_env(&requirements, &options, &mut |line| eprintln!("  {line}"))?;
    Ok(kiln_serve::ortlib::locate_library(
        None,
        Some(&environment.python),
    )?)
}
