//! The pipeline commands: `check`, `run`, `status`, `runs`, `logs`, `metrics diff`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_pipeline::run::Failure;
use kiln_pipeline::{FailureKind, Outcome, Override, RunOptions, StageStatus, Workspace};
use kiln_registry::{Run, Status};
use kiln_spec::Project;
use serde_json::json;

use crate::error::{CliError, Result};
use crate::exit;
use crate::notify;
use crate::printer::{errln, out, outln};
use crate::report;
use crate::ui::{self, Progress};

/// Loads the project, printing every diagnostic when it is invalid.
pub(crate) fn load(root: &Path) -> Result<Project> {
    match kiln_spec::load(root) {
        Ok(project) => Ok(project),
        Err(kiln_spec::Error::Invalid { file, diagnostics }) => {
            let color = ui::color();
            for diagnostic in &diagnostics {
                errln!("{}\n", diagnostic.render(color));
            }
            // Name the files the problems are in: a params file's mistake is not kiln.yaml's.
            let mut files: Vec<String> = Vec::new();
            for diagnostic in &diagnostics {
                let path = diagnostic
                    .location
                    .as_ref()
                    .map_or(file.as_path(), |l| l.file.path.as_path());
                let shown = format!("`{}`", path.display());
                if !files.contains(&shown) {
                    files.push(shown);
                }
            }
            let n = diagnostics.len();
            errln!(
                "error: {} {} {n} problem{}",
                files.join(" and "),
                if files.len() == 1 { "has" } else { "have" },
                if n == 1 { "" } else { "s" }
            );
            Err(CliError::Reported(exit::INVALID))
        }
        Err(error) => Err(error.into()),
    }
}

pub fn check(root: &Path) -> Result<ExitCode> {
    let project = load(root)?;
    let stages = project.stages().count();
    errln!(
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
fn parse_overrides(set: &[String]) -> Result<Vec<Override>> {
    set.iter()
        .map(|text| {
            Override::parse(text)
                .map_err(|message| CliError::usage(format!("invalid `--set`: {message}")))
        })
        .collect()
}

pub fn run(root: &Path, args: RunArgs) -> Result<ExitCode> {
    let overrides = parse_overrides(&args.set)?;
    if args.jobs == Some(0) {
        return Err(CliError::usage("`--jobs` must be at least 1"));
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
        artifact_check: Some(Arc::new(kiln_deploy::ServableCheck::new())),
    };
    let progress = Progress::new(false);
    let notifier = notify::start(&project);
    let result = match kiln_pipeline::run(&mut workspace, &project, &options, &progress) {
        Ok(result) => result,
        Err(error) => {
            // Kiln could not do its part (an environment that does not build): the run failed
            // all the same, and whoever watches it hears so.
            for model in project
                .models
                .iter()
                .filter(|m| args.models.is_empty() || args.models.contains(&m.name))
            {
                notifier.send(&notify::failed_message(&model.name, &error.to_string()));
            }
            notify::finish(notifier);
            return Err(error.into());
        }
    };
    for message in notify::run_messages(&result) {
        notifier.send(&message);
    }

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
            errln!("warning: {warning}");
        }
        if !model.gates.is_empty() {
            errln!("\n{}", report::gate_table(model));
        }
        match model.version {
            Some(kiln_registry::Registered::New(version)) => {
                errln!("registered `{}` v{version} (now `latest`)", model.model)
            }
            Some(kiln_registry::Registered::Existing(version)) => errln!(
                "`{}` v{version} already holds this artifact with this lineage: nothing new to register",
                model.model
            ),
            None => {}
        }
        if let Some(servable) = model.servable.as_ref().filter(|s| !s.passed) {
            errln!(
                "\nerror: the artifact of `{}` could not be served: {}",
                model.model,
                servable.message
            );
            if let Some(detail) = &servable.detail {
                errln!("--- the model's error ---\n{}\n---", detail.trim_end());
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
        // The run is over and recorded: a reader that stopped reading must not turn its exit
        // code into success (`kiln run --json | jq ...` in CI).
        let text = serde_json::to_string_pretty(&report::run_json(&result))?;
        let printed = (|| -> Result<()> {
            outln!("{text}");
            Ok(())
        })();
        match printed {
            Ok(()) | Err(CliError::Closed(_)) => {}
            Err(error) => return Err(error),
        }
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
    errln!("\n{} ({})", runs.join(", "), ui::duration(result.duration));
    notify::finish(notifier);
    Ok(exit::code(code))
}

fn explain_failure(
    id: &str,
    failure: &Failure,
    log: Option<&Path>,
    root: &Path,
    checks: &[kiln_registry::CheckResult],
) {
    errln!("\nerror: stage `{id}` {}", failure.describe());
    match failure {
        Failure::Exit { log_tail, .. } => {
            if !log_tail.is_empty() {
                errln!("--- last lines of its log ---\n{log_tail}\n---");
            }
        }
        Failure::Checks => {
            for check in checks.iter().filter(|c| !c.passed) {
                errln!("  data check failed: `{}`: {}", check.file, check.message);
            }
        }
        Failure::MissingOut(_) => {
            errln!("hint: make the command write it, or remove it from `outs`")
        }
        Failure::Internal(_) => {}
    }
    if let Some(log) = log {
        errln!(
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

pub fn status(root: &Path, args: StatusArgs) -> Result<ExitCode> {
    let overrides = parse_overrides(&args.set)?;
    let project = load(root)?;
    let workspace = Workspace::open(&project.root)?;
    let report = kiln_pipeline::status(&workspace, &project, &args.models, &overrides)?;
    for warning in &report.warnings {
        errln!("warning: {warning}");
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
        outln!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(exit::code(exit::SUCCESS));
    }
    for (id, word, reasons) in described {
        outln!("{id}: {word}");
        for reason in reasons {
            outln!("    {reason}");
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

pub fn runs(root: &Path, args: RunsArgs) -> Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let workspace = Workspace::open(&root)?;
    if let Some(RunsCommand::Show { id }) = args.show {
        let detail = workspace
            .registry
            .run(id)
            .map_err(|e| CliError::usage(format!("{e}: see `kiln runs` for the ids")))?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&detail)?);
            return Ok(exit::code(exit::SUCCESS));
        }
        let run = &detail.run;
        outln!("run {}  model {}  {}", run.id, run.model, status_word(run));
        outln!(
            "started   {} UTC ({})",
            when(run),
            run.duration_ms
                .map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
        );
        outln!(
            "commit    {}{}",
            run.commit.as_deref().unwrap_or("(not a git checkout)"),
            if run.dirty {
                " (uncommitted changes)"
            } else {
                ""
            }
        );
        if let Some(message) = &run.message {
            outln!("message   {message}");
        }
        if let Some(overrides) = run.overrides.as_object().filter(|o| !o.is_empty()) {
            let pairs: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
            outln!("overrides {}", pairs.join(" "));
        }
        outln!("\nstages:");
        for stage in &detail.stages {
            outln!(
                "  {:<20} {:<10} {:>8.2}s  {}",
                stage.stage,
                stage.outcome.label(),
                stage.duration_ms as f64 / 1000.0,
                stage.log_path.as_deref().unwrap_or("")
            );
        }
        if !detail.metrics.is_empty() {
            outln!("\nmetrics:");
            for (key, value) in &detail.metrics {
                outln!("  {key:<30} {value}");
            }
        }
        if !detail.checks.is_empty() {
            outln!("\ndata checks:");
            for check in &detail.checks {
                outln!(
                    "  {} {} {}  {}",
                    if check.passed { "pass" } else { "FAIL" },
                    check.file,
                    check.rule_name(),
                    check.message
                );
            }
        }
        if !detail.gates.is_empty() {
            outln!("\ngates:");
            for gate in &detail.gates {
                outln!(
                    "  {:<8} {:<40} {}",
                    gate.verdict.as_str(),
                    gate.expr,
                    gate.detail
                );
            }
        }
        if let Some(servable) = &detail.servable {
            outln!(
                "\nservable check: {}  {} ({:.2}s)",
                if servable.passed { "pass" } else { "FAIL" },
                servable.message,
                servable.duration_ms as f64 / 1000.0
            );
            if let Some(more) = &servable.detail {
                for line in more.lines() {
                    outln!("  {line}");
                }
            }
        }
        return Ok(exit::code(exit::SUCCESS));
    }
    let runs = workspace.registry.runs(args.model.as_deref(), args.limit)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(exit::code(exit::SUCCESS));
    }
    if runs.is_empty() {
        errln!("no runs yet: start one with `kiln run`");
    } else {
        outln!(
            "{:>5}  {:<16} {:<20} {:<20} {:>9}  commit",
            "id",
            "model",
            "status",
            "started (UTC)",
            "duration"
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
        outln!(
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

pub fn logs(root: &Path, args: LogsArgs) -> Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let workspace = Workspace::open(&root)?;
    let detail = workspace
        .registry
        .run(args.id)
        .map_err(|e| CliError::usage(format!("{e}: see `kiln runs` for the ids")))?;
    let stages: Vec<_> = detail
        .stages
        .iter()
        .filter(|s| args.stage.as_ref().is_none_or(|name| &s.stage == name))
        .collect();
    if let Some(name) = &args.stage
        && stages.is_empty()
    {
        let known: Vec<&str> = detail.stages.iter().map(|s| s.stage.as_str()).collect();
        return Err(CliError::usage(format!(
            "run {} has no stage `{name}` (stages: {})",
            args.id,
            known.join(", ")
        )));
    }
    let mut printed = false;
    for stage in stages {
        let Some(log) = &stage.log_path else {
            if args.stage.is_some() {
                errln!(
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
            outln!("=== {} ({log}) ===", stage.stage);
        }
        out!("{text}");
        printed = true;
    }
    if !printed && args.stage.is_none() {
        errln!(
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

pub fn metrics(root: &Path, command: MetricsCommand) -> Result<ExitCode> {
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
                .ok_or_else(|| CliError::usage("no runs yet"))?;
            (only, newest)
        }
        _ => {
            let newest = registry
                .runs(None, 200)?
                .into_iter()
                .find(|r| registry.metrics(r.id).is_ok_and(|m| !m.is_empty()));
            let newest = newest
                .ok_or_else(|| CliError::usage("no run has metrics yet: run the pipeline first"))?;
            let previous = registry
                .previous_run_with_metrics(&newest.model, Some(newest.id), false)?
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "run {} is the only run of `{}` with metrics: nothing to compare",
                        newest.id, newest.model
                    ))
                })?;
            (previous, newest.id)
        }
    };
    let old = registry
        .run(a)
        .map_err(|e| CliError::usage(e.to_string()))?
        .metrics;
    let new = registry
        .run(b)
        .map_err(|e| CliError::usage(e.to_string()))?
        .metrics;
    let rows = report::metric_rows(&new, Some(&old));
    if json {
        let metrics: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, new, old)| {
                let delta = new.zip(*old).map(|(n, o)| n - o);
                (k.clone(), json!({"old": old, "new": new, "delta": delta}))
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"run_a": a, "run_b": b, "metrics": metrics}))?
        );
        return Ok(exit::code(exit::SUCCESS));
    }
    outln!(
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
        outln!("{key:<30} {:>12} {:>12} {delta:>12}", show(old), show(new));
    }
    Ok(exit::code(exit::SUCCESS))
}
