//! `kiln models`: the model registry. Versions (`list`, `show`, `diff`) and aliases (`alias`,
//! `promote`, `rollback`, `history`); an alias move also moves `.kiln/serving/<model>@<alias>`,
//! so a server following the alias swaps versions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use kiln_pipeline::{AliasChange, Workspace};
use kiln_registry::{
    AliasCommand, AliasMove, ModelRef, ModelVersion, MoveBy, Registry, Selector, Version,
};
use serde::Serialize;

use crate::commands::load;
use crate::error::{CliError, Result};
use crate::exit;
use crate::notify;
use crate::printer::{errln, outln};
use kiln_notify::Event;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the registered models (versions, latest version, aliases), or one model's versions.
    List {
        /// List this model's versions instead, newest first: run, commit, aliases, metrics.
        model: Option<String>,
        /// With a model: at most this many versions.
        #[arg(long, value_name = "N", requires = "model")]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Show a version: lineage, metrics, aliases, signature, example and training-data profile
    /// (`iris` is `iris@latest`).
    Show {
        /// `MODEL`, `MODEL@vN` or `MODEL@ALIAS`.
        #[arg(value_name = "MODEL[@VERSION|@ALIAS]")]
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare two versions: metrics with deltas, params, dep digests, commits, and per-column
    /// changes of their training data.
    Diff {
        #[arg(value_name = "MODEL@A")]
        a: String,
        #[arg(value_name = "MODEL@B")]
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Point an alias at a version (`kiln models alias iris@v3 staging`).
    Alias {
        #[arg(value_name = "MODEL@VERSION")]
        reference: String,
        alias: String,
        /// Why, kept in the alias history.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Point alias `--to` at the version alias `--from` holds.
    Promote {
        model: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Why, kept in the alias history.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Move an alias back to the version it held before its last move.
    Rollback {
        model: String,
        alias: String,
        /// Why, kept in the alias history.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a version, its lineage and its artifact to a tar file, for `kiln models import`.
    Export {
        /// `MODEL`, `MODEL@vN` or `MODEL@ALIAS`.
        #[arg(value_name = "MODEL[@VERSION|@ALIAS]")]
        reference: String,
        /// The tar file to write (replaced if it exists).
        #[arg(value_name = "FILE.tar")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Register a version exported by `kiln models export` (elsewhere), after checking all of it.
    Import {
        /// A file written by `kiln models export`; one that is not whole and sound is refused
        /// (exit code 2) and leaves nothing behind.
        #[arg(value_name = "FILE.tar")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every alias move of a model: when, which alias, from and to which version, by what, why.
    History {
        model: String,
        /// Only this alias.
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn models(root: &Path, command: ModelsCommand) -> Result<ExitCode> {
    let root = std::path::absolute(root)?;
    let mut workspace = Workspace::open(&root)?;
    repair_serving_links(&root, &workspace);
    let registry = &mut workspace.registry;
    match command {
        ModelsCommand::List {
            model: None, json, ..
        } => list(registry, json)?,
        ModelsCommand::List {
            model: Some(model),
            limit,
            json,
        } => list_versions(registry, &model, limit, json)?,
        ModelsCommand::Show { reference, json } => show(registry, &reference, json)?,
        ModelsCommand::Diff { a, b, json } => diff(registry, &a, &b, json)?,
        ModelsCommand::History { model, alias, json } => {
            history(registry, &model, alias.as_deref(), json)?
        }
        ModelsCommand::Export {
            reference,
            file,
            json,
        } => export(&root, &workspace, &reference, &file, json)?,
        ModelsCommand::Import { file, json } => import(&root, &mut workspace, &file, json)?,
        ModelsCommand::Alias {
            reference,
            alias,
            reason,
            json,
        } => {
            let reference = parse(&reference)?;
            let version = registry.resolve(&reference)?;
            let change = AliasChange::To {
                version,
                by: moved_by(AliasCommand::Alias, reason.as_deref()),
            };
            let moved = (reference.model.as_str(), alias.as_str(), Event::Promoted);
            move_alias(
                &root,
                &mut workspace,
                moved,
                change,
                reason.as_deref(),
                json,
            )?;
        }
        ModelsCommand::Promote {
            model,
            from,
            to,
            reason,
            json,
        } => {
            let source = ModelRef {
                model: model.clone(),
                selector: Selector::Alias(from),
            };
            let version = registry.resolve(&source)?;
            let change = AliasChange::To {
                version,
                by: moved_by(AliasCommand::Promote, reason.as_deref()),
            };
            let moved = (model.as_str(), to.as_str(), Event::Promoted);
            move_alias(
                &root,
                &mut workspace,
                moved,
                change,
                reason.as_deref(),
                json,
            )?;
        }
        ModelsCommand::Rollback {
            model,
            alias,
            reason,
            json,
        } => {
            let change = AliasChange::Rollback {
                reason: reason.as_deref(),
            };
            let moved = (model.as_str(), alias.as_str(), Event::RolledBack);
            move_alias(
                &root,
                &mut workspace,
                moved,
                change,
                reason.as_deref(),
                json,
            )?;
        }
    }
    Ok(exit::code(exit::SUCCESS))
}

/// Serving links an interrupted alias move left behind are re-pointed at the registry's version
/// (`kiln_pipeline::republish_stale_aliases`), so that the next command recovers from a crash.
/// Without a valid project here there is nothing to publish (a command that needs the project
/// says what is wrong with it).
fn repair_serving_links(root: &Path, workspace: &Workspace) {
    let Ok(project) = kiln_spec::load(root) else {
        return;
    };
    for model in project.models.iter().filter(|m| m.artifact.is_some()) {
        match kiln_pipeline::republish_stale_aliases(workspace, &project, &model.name) {
            Ok(republished) => {
                for (alias, version) in republished {
                    errln!(
                        "`{}@{alias}` was served from an older version (a move was interrupted): it serves v{version} now",
                        model.name
                    );
                }
            }
            Err(error) => errln!(
                "warning: could not bring the serving links of `{}` up to date: {error}",
                model.name
            ),
        }
    }
}

fn parse(text: &str) -> Result<ModelRef> {
    Ok(ModelRef::parse(text)?)
}

fn moved_by(command: AliasCommand, reason: Option<&str>) -> MoveBy<'_> {
    MoveBy {
        command,
        run_id: None,
        reason,
    }
}

/// `v3`, or `-` for none.
fn named(version: Option<Version>) -> String {
    version.map_or("-".to_string(), |v| format!("v{v}"))
}

/// Unix milliseconds as UTC (`2026-11-29 18:56:38`).
fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| "-".to_string())
}

/// Moves an alias (`(model, alias, what it is for notifications)`) and its serving link,
/// reports the move and notifies; a link that cannot be moved (no project here, a model without
/// artifact) is a warning: the move itself is recorded.
fn move_alias(
    root: &Path,
    workspace: &mut Workspace,
    (model, alias, event): (&str, &str, Event),
    change: AliasChange<'_>,
    reason: Option<&str>,
    json: bool,
) -> Result<()> {
    let project = load(root).map_err(|error| error.to_string());
    let moved = kiln_pipeline::move_alias(
        workspace,
        project.as_ref().map_err(Clone::clone),
        model,
        alias,
        change,
    )?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&moved)?);
    }
    errln!(
        "`{model}@{alias}`: {} -> v{}",
        named(moved.from_version),
        moved.to_version
    );
    if let Some(warning) = &moved.serving_warning {
        errln!("warning: could not publish `{model}@{alias}` for serving: {warning}");
    }
    if let Ok(project) = &project {
        let notifier = notify::start(project);
        notifier.send(&notify::alias_message(
            event,
            model,
            alias,
            moved.from_version,
            moved.to_version,
            reason,
        ));
        notify::finish(notifier);
    }
    Ok(())
}

fn export(
    root: &Path,
    workspace: &Workspace,
    reference: &str,
    file: &Path,
    json: bool,
) -> Result<()> {
    let reference = parse(reference)?;
    let project = load(root)?;
    let exported = kiln_pipeline::transfer::export_version(workspace, &project, &reference, file)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&exported)?);
    }
    errln!(
        "exported `{}` v{} to `{}` ({} blob{}, {} bytes)",
        exported.model,
        exported.version,
        file.display(),
        exported.blobs,
        if exported.blobs == 1 { "" } else { "s" },
        exported.bytes
    );
    Ok(())
}

/// Imports an export; when this is a project that declares the model, `latest` is laid out for
/// serving as a run would lay it out.
fn import(root: &Path, workspace: &mut Workspace, file: &Path, json: bool) -> Result<()> {
    let imported = kiln_pipeline::transfer::import_version(workspace, file)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&imported)?);
    }
    let origin = &imported.origin;
    if imported.new {
        errln!(
            "imported `{}@v{}` from `{}` as `{}` v{} (now `latest`)",
            origin.model,
            origin.version,
            file.display(),
            imported.model,
            imported.version
        );
    } else {
        errln!(
            "`{}` v{} already holds `{}@v{}` from `{}`: nothing to import",
            imported.model,
            imported.version,
            origin.model,
            origin.version,
            file.display()
        );
    }
    let declared = kiln_spec::load(root).ok().filter(|project| {
        project
            .model(&imported.model)
            .is_some_and(|m| m.artifact.is_some())
    });
    if let Some(project) = declared
        && let Err(error) = kiln_pipeline::publish_alias(
            workspace,
            &project,
            &imported.model,
            kiln_registry::LATEST,
        )
    {
        errln!(
            "warning: could not publish `{}@latest` for serving: {error}",
            imported.model
        );
    }
    Ok(())
}

fn list(registry: &Registry, json: bool) -> Result<()> {
    let models = registry.models()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        errln!("no model is registered yet: a green `kiln run` registers its model's artifact");
        return Ok(());
    }
    outln!("{:<20} {:>8} {:>7}  ALIASES", "MODEL", "VERSIONS", "LATEST");
    for model in &models {
        let aliases: Vec<String> = model
            .aliases
            .iter()
            .map(|(alias, version)| format!("{alias}=v{version}"))
            .collect();
        outln!(
            "{:<20} {:>8} {:>7}  {}",
            model.model,
            model.versions,
            format!("v{}", model.latest_version),
            aliases.join(" ")
        );
    }
    Ok(())
}

fn list_versions(registry: &Registry, model: &str, limit: Option<usize>, json: bool) -> Result<()> {
    let versions = registry.version_summaries(model, limit)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    outln!(
        "{:<8} {:<19}  {:>6}  {:<12} {:<20} METRICS",
        "VERSION",
        "REGISTERED (UTC)",
        "RUN",
        "COMMIT",
        "ALIASES"
    );
    for version in &versions {
        let commit = match &version.commit {
            Some(sha) => format!(
                "{}{}",
                &sha[..sha.len().min(8)],
                if version.dirty { "+" } else { "" }
            ),
            None => "-".to_string(),
        };
        let run = if version.imported {
            "import".to_string()
        } else {
            version.run_id.to_string()
        };
        let metrics: Vec<String> = version
            .metrics
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        outln!(
            "{:<8} {:<19}  {:>6}  {:<12} {:<20} {}",
            format!("v{}", version.version),
            when(version.registered_at_ms),
            run,
            commit,
            version.aliases.join(","),
            metrics.join(" ")
        );
    }
    Ok(())
}

fn find(registry: &Registry, text: &str) -> Result<ModelVersion> {
    let reference = parse(text)?;
    let version = registry.resolve(&reference)?;
    Ok(registry.model_version(&reference.model, version)?)
}

fn show(registry: &Registry, text: &str, json: bool) -> Result<()> {
    let version = find(registry, text)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&version)?);
        return Ok(());
    }
    let lineage = &version.lineage;
    let aliases = if version.aliases.is_empty() {
        String::new()
    } else {
        format!("  ({})", version.aliases.join(", "))
    };
    outln!("{} v{}{aliases}", version.model, version.version);
    outln!("registered  {} UTC", when(version.registered_at_ms));
    match &version.origin {
        Some(origin) => {
            outln!(
                "imported    from `{}`: {}@v{}, registered {} UTC",
                origin.source,
                origin.model,
                origin.version,
                when(origin.registered_at_ms)
            );
            outln!(
                "run         {} (in the registry it came from)",
                lineage.run_id
            );
        }
        None => outln!("run         {}", lineage.run_id),
    }
    outln!(
        "commit      {}{}",
        lineage.commit.as_deref().unwrap_or("(not a git checkout)"),
        if lineage.dirty {
            " (uncommitted changes)"
        } else {
            ""
        }
    );
    outln!("artifact    {}", version.artifact_digest);
    for image in &version.images {
        outln!(
            "image       {}@{} ({}), pushed {} UTC",
            image.repository,
            image.digest,
            image.tags.join(", "),
            when(image.pushed_at_ms)
        );
    }
    if let Some(servable) = &lineage.servable {
        outln!(
            "servable    {}: {}",
            if servable.passed { "passed" } else { "failed" },
            servable.message
        );
    }
    outln!("\nmetrics:");
    for (key, value) in &lineage.metrics {
        outln!("  {key:<24} {value}");
    }
    outln!("\nparams:");
    if let Some(params) = lineage.params.as_object() {
        for (key, value) in params {
            outln!("  {key:<24} {value}");
        }
    }
    outln!("\ndeps:");
    for (path, digest) in &lineage.deps {
        outln!(
            "  {path:<40} {}",
            digest.as_deref().unwrap_or("(did not exist)")
        );
    }
    if let Some(packages) = &lineage.environment {
        outln!("\nenvironment ({} packages):", packages.len());
        for package in packages {
            outln!("  {package}");
        }
    }
    crate::version_data::show(
        lineage.signature.as_ref(),
        lineage.example.as_ref(),
        lineage.profile.as_ref(),
    )?;
    Ok(())
}

/// One metric of two versions.
#[derive(Debug, Serialize)]
struct MetricChange<'a> {
    key: &'a str,
    a: Option<f64>,
    b: Option<f64>,
    /// `b - a`, when both have it.
    delta: Option<f64>,
}

/// A param or dep that differs between two versions.
#[derive(Debug, Serialize)]
struct ValueChange<T: Serialize> {
    key: String,
    a: Option<T>,
    b: Option<T>,
}

/// Which version each side of a diff is.
#[derive(Debug, Serialize)]
struct DiffSide<'a> {
    version: Version,
    run_id: i64,
    commit: Option<&'a str>,
    dirty: bool,
    artifact_digest: &'a str,
}

#[derive(Debug, Serialize)]
struct VersionDiff<'a> {
    model: &'a str,
    a: DiffSide<'a>,
    b: DiffSide<'a>,
    metrics: Vec<MetricChange<'a>>,
    /// Only the params that differ.
    params: Vec<ValueChange<serde_json::Value>>,
    /// Only the deps whose digest differs.
    deps: Vec<ValueChange<Option<String>>>,
    /// Per column of the training data, when both versions have a profile.
    profile: Option<crate::version_data::ProfileDiff>,
}

fn side(version: &ModelVersion) -> DiffSide<'_> {
    DiffSide {
        version: version.version,
        run_id: version.lineage.run_id,
        commit: version.lineage.commit.as_deref(),
        dirty: version.lineage.dirty,
        artifact_digest: &version.artifact_digest,
    }
}

/// The keys of two maps whose values differ, with both values.
fn changes<T: Serialize + Clone + PartialEq>(
    a: &BTreeMap<String, T>,
    b: &BTreeMap<String, T>,
) -> Vec<ValueChange<T>> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|key| a.get(*key) != b.get(*key))
        .map(|key| ValueChange {
            key: key.clone(),
            a: a.get(key).cloned(),
            b: b.get(key).cloned(),
        })
        .collect()
}

fn diff(registry: &Registry, a: &str, b: &str, json: bool) -> Result<()> {
    let (first, second) = (find(registry, a)?, find(registry, b)?);
    if first.model != second.model {
        return Err(CliError::usage(format!(
            "`{a}` and `{b}` are versions of different models"
        )));
    }
    let metrics_of =
        |v: &ModelVersion| -> BTreeMap<String, f64> { v.lineage.metrics.iter().cloned().collect() };
    let (metrics_a, metrics_b) = (metrics_of(&first), metrics_of(&second));
    let metric_keys: BTreeSet<&String> = metrics_a.keys().chain(metrics_b.keys()).collect();
    let metrics: Vec<MetricChange<'_>> = metric_keys
        .into_iter()
        .map(|key| {
            let (va, vb) = (metrics_a.get(key).copied(), metrics_b.get(key).copied());
            MetricChange {
                key,
                a: va,
                b: vb,
                delta: va.zip(vb).map(|(x, y)| y - x),
            }
        })
        .collect();
    let params_of = |v: &ModelVersion| -> BTreeMap<String, serde_json::Value> {
        v.lineage
            .params
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let shown = VersionDiff {
        model: &first.model,
        a: side(&first),
        b: side(&second),
        params: changes(&params_of(&first), &params_of(&second)),
        deps: changes(&first.lineage.deps, &second.lineage.deps),
        metrics,
        profile: crate::version_data::profile_diff(
            first.lineage.profile.as_ref(),
            second.lineage.profile.as_ref(),
        ),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    let commit = |side: &DiffSide<'_>| {
        format!(
            "{}{}",
            side.commit.unwrap_or("-"),
            if side.dirty { " (dirty)" } else { "" }
        )
    };
    outln!(
        "{} v{} -> v{}",
        shown.model,
        shown.a.version,
        shown.b.version
    );
    outln!("commit   {} -> {}", commit(&shown.a), commit(&shown.b));
    outln!("run      {} -> {}", shown.a.run_id, shown.b.run_id);
    outln!("\nmetrics:");
    let number = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
    for metric in &shown.metrics {
        let delta = metric
            .delta
            .map_or(String::new(), |d| format!("  ({d:+.6})"));
        outln!(
            "  {:<24} {} -> {}{delta}",
            metric.key,
            number(metric.a),
            number(metric.b)
        );
    }
    outln!("\nparams changed:");
    if shown.params.is_empty() {
        outln!("  (none)");
    }
    let value =
        |v: &Option<serde_json::Value>| v.as_ref().map_or("-".to_string(), |v| v.to_string());
    for change in &shown.params {
        outln!(
            "  {:<24} {} -> {}",
            change.key,
            value(&change.a),
            value(&change.b)
        );
    }
    outln!("\ndeps changed:");
    if shown.deps.is_empty() {
        outln!("  (none)");
    }
    let digest = |d: &Option<Option<String>>| match d {
        None => "(not a dep)".to_string(),
        Some(None) => "(did not exist)".to_string(),
        Some(Some(digest)) => digest.chars().take(12).collect(),
    };
    for change in &shown.deps {
        outln!(
            "  {:<40} {} -> {}",
            change.key,
            digest(&change.a),
            digest(&change.b)
        );
    }
    crate::version_data::print_profile_diff(shown.profile.as_ref())?;
    Ok(())
}

fn history(registry: &Registry, model: &str, alias: Option<&str>, json: bool) -> Result<()> {
    // An unknown model is an error, not an empty history.
    registry.resolve(&ModelRef {
        model: model.to_string(),
        selector: Selector::Alias(kiln_registry::LATEST.to_string()),
    })?;
    let moves: Vec<AliasMove> = registry.alias_history(model, alias)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&moves)?);
        return Ok(());
    }
    outln!(
        "{:<19}  {:<12} {:>5} {:>5}  {:<9} {:>5}  REASON",
        "WHEN (UTC)",
        "ALIAS",
        "FROM",
        "TO",
        "BY",
        "RUN"
    );
    for shown in &moves {
        outln!(
            "{:<19}  {:<12} {:>5} {:>5}  {:<9} {:>5}  {}",
            when(shown.at_ms),
            shown.alias,
            named(shown.from_version),
            format!("v{}", shown.to_version),
            shown.command.as_str(),
            shown.run_id.map_or("-".to_string(), |id| id.to_string()),
            shown.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
