//! `kiln deploy`, `kiln promote`, `kiln rollback` and `kiln ps`: deployments by environment.
//! The first three move the environment's alias in the registry (kept in the alias history with
//! the command that moved it), then see the move rolled out: a local environment by the running
//! `kiln up` (without one, the move is recorded and `kiln up` rolls it out when it starts), a
//! Kubernetes environment by the command itself (image built and pushed, objects applied, the
//! rollout watched). `kiln ps` shows what runs, on both.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kiln_deploy::local::state;
use kiln_deploy::{Change, Controller, DeploymentStatus, KubernetesTarget, kubernetes};
use kiln_notify::Event;
use kiln_pipeline::{AliasChange, Workspace};
use kiln_registry::{AliasCommand, ModelRef, MoveBy, Selector, Version};
use kiln_spec::{Environment, Project, TargetKind};
use serde::Serialize;

use crate::commands::load;
use crate::error::{CliError, Result};
use crate::exit;
use crate::notify;
use crate::printer::{errln, outln};
use crate::ui;

/// How long to wait for the rollout, and how to report it.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// How long to wait for the running `kiln up` to roll the change out, in seconds (0: do
    /// not wait). Kubernetes environments are rolled out by the command itself, within the
    /// environment's `rollout_timeout`.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    timeout: u64,
    /// Take over fields of Kiln's Kubernetes objects that another field manager (kubectl, a
    /// GitOps tool) set, instead of stopping at the conflict.
    #[arg(long)]
    force_conflicts: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// What `--dry-run` prints the manifests as.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    Yaml,
    Json,
}

/// Where `--target` puts the environment.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetArg {
    Local,
    #[value(alias = "k8s")]
    Kubernetes,
}

/// Deploy a version to an environment.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The version: `MODEL@vN`, `MODEL@ALIAS`, or `MODEL` (its `latest`).
    #[arg(value_name = "MODEL[@VERSION|@ALIAS]")]
    reference: String,
    /// The environment (default: the model's first, e.g. `staging`).
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
    /// Why, kept in the alias history.
    #[arg(long)]
    reason: Option<String>,
    /// Serve the environment on this target for this deploy, whatever kiln.yaml says (`k8s` is
    /// `kubernetes`; its settings are kiln.yaml's or the defaults).
    #[arg(long, value_enum)]
    target: Option<TargetArg>,
    /// Print the Kubernetes objects the deploy would apply (image by digest; the image is built
    /// but not pushed, and nothing is applied or recorded).
    #[arg(long)]
    dry_run: bool,
    /// The format of `--dry-run`'s manifests.
    #[arg(short, long, value_enum, default_value = "yaml", requires = "dry_run")]
    output: ManifestFormat,
    #[command(flatten)]
    wait: WaitArgs,
}

/// Promote the version an environment serves to the next one.
#[derive(clap::Args, Debug)]
pub struct PromoteArgs {
    model: String,
    /// The environment to promote to (default: the model's second, e.g. `production`).
    #[arg(long, value_name = "ENV")]
    to: Option<String>,
    /// The environment whose version is promoted (default: the one before `--to`).
    #[arg(long, value_name = "ENV")]
    from: Option<String>,
    /// Why, kept in the alias history.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

/// Put an environment back on the version it served before its last change.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    model: String,
    /// The environment to roll back.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// Why, kept in the alias history.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

/// Show what is deployed where.
#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Print the deployments as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// What became of a move.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
enum Rollout {
    /// The running `kiln up` serves the version now.
    Served { deployment: DeploymentStatus },
    /// The rollout failed and the environment was moved back.
    RolledBack { to: Option<Version>, reason: String },
    /// No `kiln up` runs for the project: the move waits for it.
    Recorded,
    /// Not rolled out within `--timeout`.
    TimedOut,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    environment: String,
    from: Option<Version>,
    to: Version,
    #[serde(flatten)]
    rollout: Rollout,
}

pub fn deploy(root: &Path, args: DeployArgs) -> Result<ExitCode> {
    let (mut project, mut workspace) = open(root)?;
    let reference = ModelRef::parse(&args.reference)?;
    let model = reference.model.clone();
    let environment = environment(&project, &model, args.env.as_deref(), 0)?
        .name
        .clone();
    if let Some(target) = args.target {
        place(&mut project, &model, &environment, target)?;
    }
    let environment = environment_of(&project, &model, &environment);
    let version = workspace.registry.resolve(&reference)?;
    if args.dry_run {
        return dry_run(
            &project,
            &workspace,
            &model,
            environment,
            version,
            args.output,
        );
    }
    let by = MoveBy {
        command: AliasCommand::Deploy,
        run_id: None,
        reason: args.reason.as_deref(),
    };
    let cluster = cluster_for(&project, environment, &args.wait)?;
    let moved = kiln_pipeline::move_alias(
        &mut workspace,
        Ok(&project),
        &model,
        &environment.name,
        AliasChange::To { version, by },
    )?;
    finish(
        &project,
        &mut workspace,
        environment,
        moved,
        cluster,
        &args.wait,
    )
}

pub fn promote(root: &Path, args: PromoteArgs) -> Result<ExitCode> {
    let (project, mut workspace) = open(root)?;
    let to = environment(&project, &args.model, args.to.as_deref(), 1)?;
    let from = match &args.from {
        Some(from) => environment(&project, &args.model, Some(from), 0)?,
        None => project
            .model(&args.model)
            .and_then(|m| m.deploy.previous_before(&to.name))
            .ok_or_else(|| {
                CliError::usage(format!(
                    "`{}` is the first environment of `{}`: there is nothing to promote from; name one with `--from`",
                    to.name, args.model
                ))
            })?,
    };
    let source = ModelRef {
        model: args.model.clone(),
        selector: Selector::Alias(from.name.clone()),
    };
    let version = workspace.registry.resolve(&source)?;
    let by = MoveBy {
        command: AliasCommand::Promote,
        run_id: None,
        reason: args.reason.as_deref(),
    };
    let cluster = cluster_for(&project, to, &args.wait)?;
    let moved = kiln_pipeline::move_alias(
        &mut workspace,
        Ok(&project),
        &args.model,
        &to.name,
        AliasChange::To { version, by },
    )?;
    tell(&project, Event::Promoted, &moved, args.reason.as_deref());
    finish(&project, &mut workspace, to, moved, cluster, &args.wait)
}

pub fn rollback(root: &Path, args: RollbackArgs) -> Result<ExitCode> {
    let (project, mut workspace) = open(root)?;
    let environment = environment(&project, &args.model, Some(&args.env), 0)?;
    let cluster = cluster_for(&project, environment, &args.wait)?;
    let moved = kiln_pipeline::move_alias(
        &mut workspace,
        Ok(&project),
        &args.model,
        &environment.name,
        AliasChange::Rollback {
            reason: args.reason.as_deref(),
        },
    )?;
    tell(&project, Event::RolledBack, &moved, args.reason.as_deref());
    finish(
        &project,
        &mut workspace,
        environment,
        moved,
        cluster,
        &args.wait,
    )
}

fn open(root: &Path) -> Result<(Project, Workspace)> {
    let project = load(root)?;
    let workspace = Workspace::open(&project.root)?;
    Ok((project, workspace))
}

/// The environment `name` of `model` (default: its environment number `default`).
fn environment<'a>(
    project: &'a Project,
    model: &str,
    name: Option<&str>,
    default: usize,
) -> Result<&'a Environment> {
    let Some(spec) = project.model(model) else {
        let known: Vec<&str> = project.models.iter().map(|m| m.name.as_str()).collect();
        return Err(CliError::usage(format!(
            "there is no model `{model}` in `{}` (models: {})",
            project.file.display(),
            known.join(", ")
        )));
    };
    if spec.artifact.is_none() {
        return Err(CliError::usage(format!(
            "`{model}` has no `artifact`: there is nothing of it to deploy"
        )));
    }
    let environments = &spec.deploy.environments;
    let names = || {
        environments
            .iter()
            .map(|e| format!("`{}`", e.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(name) => spec.deploy.environment(name).ok_or_else(|| {
            CliError::usage(format!(
                "`{model}` has no environment `{name}` (its environments: {}); declare it under `deploy:` in kiln.yaml",
                names()
            ))
        }),
        None => environments.get(default).ok_or_else(|| {
            CliError::usage(format!(
                "`{model}` has only {}: name the environment",
                names()
            ))
        }),
    }
}

/// Puts `environment` of `model` on `target` for this command (`kiln deploy --target`).
fn place(project: &mut Project, model: &str, environment: &str, target: TargetArg) -> Result<()> {
    let Some(spec) = project.models.iter_mut().find(|m| m.name == model) else {
        return Ok(());
    };
    if target == TargetArg::Kubernetes && spec.image_repository.is_none() {
        return Err(CliError::usage(format!(
            "`{model}` has no `image.repository` in kiln.yaml: the cluster pulls the model's image from a registry; add `image: {{repository: registry.example.com/team/{model}}}` to the model"
        )));
    }
    if let Some(env) = spec
        .deploy
        .environments
        .iter_mut()
        .find(|e| e.name == environment)
    {
        match target {
            TargetArg::Local => {
                env.target = TargetKind::Local;
                env.kubernetes = None;
            }
            TargetArg::Kubernetes => {
                env.target = TargetKind::Kubernetes;
                env.kubernetes.get_or_insert_with(Default::default);
                env.port = None;
            }
        }
    }
    Ok(())
}

/// The environment `name` of `model`, which [`environment`] found.
fn environment_of<'a>(project: &'a Project, model: &str, name: &str) -> &'a Environment {
    project
        .model(model)
        .and_then(|m| m.deploy.environment(name))
        .expect("the environment was found before")
}

/// `kiln deploy --dry-run`: the Kubernetes objects the deploy would apply, on stdout. The image
/// is built (its digest is in the Deployment) but neither pushed nor applied.
fn dry_run(
    project: &Project,
    workspace: &Workspace,
    model: &str,
    environment: &Environment,
    version: Version,
    format: ManifestFormat,
) -> Result<ExitCode> {
    let Some(settings) = &environment.kubernetes else {
        return Err(CliError::usage(format!(
            "`--dry-run` prints the Kubernetes objects of a deploy, and `{model}@{}` is served on this machine: add `--target kubernetes`, or set `target: kubernetes` for it in kiln.yaml",
            environment.name
        )));
    };
    let repository = project
        .model(model)
        .and_then(|m| m.image_repository.clone())
        .ok_or_else(|| {
            CliError::usage(format!(
                "`{model}` has no `image.repository` in kiln.yaml: name the registry repository the cluster pulls its images from"
            ))
        })?;
    let reference = ModelRef {
        model: model.to_string(),
        selector: Selector::Version(version),
    };
    let mut progress = |line: &str| errln!("  {line}");
    let served = kiln_deploy::prepare(workspace, project, &reference, &mut progress)?;
    let built = crate::image_cmd::build_served(&project.root, &served, &mut progress)?;
    let workload = kubernetes::Workload {
        model: model.to_string(),
        environment: environment.name.clone(),
        version,
        commit: workspace
            .registry
            .model_version(model, version)?
            .lineage
            .commit,
        image: format!("{repository}@{}", built.manifest_digest),
    };
    let manifests = kubernetes::manifests(&workload, &crate::kubernetes::settings(settings))?;
    match format {
        ManifestFormat::Yaml => {
            let yaml = kubernetes::render_yaml(&manifests)?;
            outln!("{}", yaml.trim_end());
        }
        ManifestFormat::Json => {
            let mut items = vec![
                serde_json::to_value(&manifests.deployment)?,
                serde_json::to_value(&manifests.service)?,
            ];
            if let Some(autoscaler) = &manifests.autoscaler {
                items.push(serde_json::to_value(autoscaler)?);
            }
            items.push(serde_json::to_value(&manifests.disruption_budget)?);
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            outln!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(exit::code(exit::SUCCESS))
}

/// The Kubernetes target that rolls `environment` out, when it is a Kubernetes one, once the
/// cluster answered: it is asked before the alias moves, since a move that no command could roll
/// out would be rolled out by surprise later.
fn cluster_for(
    project: &Project,
    environment: &Environment,
    wait: &WaitArgs,
) -> Result<Option<KubernetesTarget>> {
    if environment.target != TargetKind::Kubernetes {
        return Ok(None);
    }
    let target = crate::kubernetes::target(project, true)?;
    target.try_status()?;
    Ok(Some(target.force_conflicts(wait.force_conflicts)))
}

/// Rolls a Kubernetes environment out from this command: what its alias names (and whatever
/// else the aliases of the project's Kubernetes environments ask for, as `kiln up` would).
fn roll_out_here(
    project: &Project,
    workspace: &mut Workspace,
    target: KubernetesTarget,
    model: &str,
    environment: &str,
) -> Result<Rollout> {
    let mut controller = Controller::new(Box::new(target), project, 0);
    let notifier = notify::start(project);
    let mut outcome = None;
    let reconciled = controller.reconcile(workspace, project, &mut |change| {
        match &change {
            Change::Deployed { status, .. }
                if status.model == model && status.environment == environment =>
            {
                outcome = Some(Rollout::Served {
                    deployment: status.clone(),
                });
            }
            Change::RolloutFailed {
                model: failed,
                environment: failed_in,
                error,
                rolled_back_to,
                ..
            } if failed == model && failed_in == environment => {
                outcome = Some(Rollout::RolledBack {
                    to: *rolled_back_to,
                    reason: error.message.clone(),
                });
            }
            _ => {}
        }
        crate::up_cmd::say(&notifier, change);
    });
    notify::finish(notifier);
    reconciled?;
    // Nothing rolled out here: the environment serves that version already, healthy, or
    // someone else (a running `kiln up`) is rolling it out, which `kiln ps` shows.
    Ok(outcome.unwrap_or_else(|| {
        let desired = workspace
            .registry
            .alias_version(model, environment)
            .ok()
            .flatten();
        match controller.status().into_iter().find(|s| {
            s.model == model
                && s.environment == environment
                && Some(s.version) == desired
                && s.health == kiln_deploy::Health::Ready
        }) {
            Some(deployment) => Rollout::Served { deployment },
            None => Rollout::TimedOut,
        }
    }))
}

fn tell(project: &Project, event: Event, moved: &kiln_pipeline::AliasMoved, reason: Option<&str>) {
    let notifier = notify::start(project);
    notifier.send(&notify::alias_message(
        event,
        &moved.model,
        &moved.alias,
        moved.from_version,
        moved.to_version,
        reason,
    ));
    notify::finish(notifier);
}

/// Reports the move, then sees it rolled out: by the running supervisor (local), or here
/// (Kubernetes).
fn finish(
    project: &Project,
    workspace: &mut Workspace,
    environment: &Environment,
    moved: kiln_pipeline::AliasMoved,
    cluster: Option<KubernetesTarget>,
    wait: &WaitArgs,
) -> Result<ExitCode> {
    let model = moved.model.as_str();
    let environment_kind = environment.target;
    let environment = environment.name.as_str();
    let from = moved
        .from_version
        .map_or("nothing".to_string(), |v| format!("v{v}"));
    errln!(
        "`{model}@{environment}`: {from} -> v{} (recorded in the alias history)",
        moved.to_version
    );
    let rollout = match cluster {
        Some(target) => roll_out_here(project, workspace, target, model, environment)?,
        None => wait_for_rollout(
            workspace,
            model,
            environment,
            moved.to_version,
            Duration::from_secs(wait.timeout),
        )?,
    };
    let code = match &rollout {
        Rollout::Served { deployment } => {
            errln!(
                "`{model}` v{} serves `{environment}` at {}",
                deployment.version,
                deployment.url
            );
            exit::SUCCESS
        }
        Rollout::RolledBack { to, reason } => {
            let to = to.map_or("its previous version".to_string(), |v| format!("v{v}"));
            errln!("error: the rollout failed and `{environment}` is back on {to}: {reason}");
            exit::NOT_DEPLOYED
        }
        Rollout::Recorded => {
            errln!("no `kiln up` runs for this project: it rolls this out when it starts");
            exit::SUCCESS
        }
        Rollout::TimedOut if environment_kind == TargetKind::Kubernetes => {
            errln!(
                "error: `{environment}` does not serve v{} ready yet (another rollout of it may be under way); `kiln ps` shows where it is",
                moved.to_version
            );
            exit::NOT_DEPLOYED
        }
        Rollout::TimedOut => {
            errln!(
                "error: the running `kiln up` did not finish the rollout within {} s; `kiln ps` shows where it is",
                wait.timeout
            );
            exit::NOT_DEPLOYED
        }
    };
    if wait.json {
        let report = Report {
            model: model.to_string(),
            environment: environment.to_string(),
            from: moved.from_version,
            to: moved.to_version,
            rollout,
        };
        outln!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(exit::code(code))
}

fn wait_for_rollout(
    workspace: &Workspace,
    model: &str,
    environment: &str,
    version: Version,
    timeout: Duration,
) -> Result<Rollout> {
    if !state::supervisor_running(&workspace.state_dir) {
        return Ok(Rollout::Recorded);
    }
    if timeout.is_zero() {
        return Ok(Rollout::TimedOut);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let served = state::read(&workspace.state_dir).and_then(|state| {
            state.deployments.into_iter().find(|d| {
                d.model == model
                    && d.environment == environment
                    && d.version == version
                    && d.health == kiln_deploy::Health::Ready
            })
        });
        if let Some(deployment) = served {
            return Ok(Rollout::Served { deployment });
        }
        let now = workspace.registry.alias_version(model, environment)?;
        if now != Some(version) {
            let reason = workspace
                .registry
                .alias_history(model, Some(environment))?
                .last()
                .and_then(|m| m.reason.clone())
                .unwrap_or_else(|| "moved by another command".into());
            return Ok(Rollout::RolledBack { to: now, reason });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Rollout::TimedOut)
}

/// One row of `kiln ps`.
#[derive(Debug, Serialize)]
struct PsRow {
    #[serde(flatten)]
    deployment: DeploymentStatus,
    uptime_seconds: Option<u64>,
}

pub fn ps(root: &Path, args: PsArgs) -> Result<ExitCode> {
    let (project, workspace) = open(root)?;
    let live = state::read(&workspace.state_dir);
    let running = live.is_some();
    let mut rows: Vec<PsRow> = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match live {
        Some(state) => {
            for deployment in state.deployments {
                let uptime = (deployment.started_ms > 0)
                    .then(|| ((now - deployment.started_ms).max(0) / 1000) as u64);
                rows.push(PsRow {
                    deployment,
                    uptime_seconds: uptime,
                });
            }
        }
        None => {
            // Nothing runs: what `kiln up` would serve, from the aliases.
            for model in project.models.iter().filter(|m| m.artifact.is_some()) {
                let local = model
                    .deploy
                    .environments
                    .iter()
                    .filter(|e| e.target == TargetKind::Local);
                for environment in local {
                    let Some(version) = workspace
                        .registry
                        .alias_version(&model.name, &environment.name)?
                    else {
                        continue;
                    };
                    rows.push(PsRow {
                        deployment: DeploymentStatus {
                            model: model.name.clone(),
                            environment: environment.name.clone(),
                            version,
                            target: "local".into(),
                            url: String::new(),
                            port: environment.port.unwrap_or(0),
                            pid: None,
                            since_ms: 0,
                            started_ms: 0,
                            restarts: 0,
                            health: kiln_deploy::Health::Stopped,
                            replicas: None,
                        },
                        uptime_seconds: None,
                    });
                }
            }
        }
    }
    if crate::kubernetes::in_use(&project) {
        let listed = crate::kubernetes::target(&project, false)
            .and_then(|target| target.try_status().map_err(CliError::from));
        match listed {
            Ok(deployments) => rows.extend(deployments.into_iter().map(|deployment| {
                PsRow {
                    uptime_seconds: (deployment.since_ms > 0)
                        .then(|| ((now - deployment.since_ms).max(0) / 1000) as u64),
                    deployment,
                }
            })),
            Err(error) => errln!("warning: cannot list the Kubernetes deployments: {error}"),
        }
    }
    if args.json {
        let json = serde_json::json!({ "supervisor_running": running, "deployments": rows });
        outln!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(exit::code(exit::SUCCESS));
    }
    if !running {
        errln!(
            "no `kiln up` runs for this project: nothing is served on this machine (it serves these when it starts)"
        );
    }
    if rows.is_empty() {
        errln!("no deployments");
        return Ok(exit::code(exit::SUCCESS));
    }
    outln!(
        "{:<12} {:<12} {:<8} {:<6} {:<24} {:<8} {:<8} {:<8} HEALTH",
        "MODEL",
        "ENV",
        "VERSION",
        "TARGET",
        "URL",
        "PID",
        "UPTIME",
        "RESTARTS"
    );
    for row in rows {
        let d = &row.deployment;
        outln!(
            "{:<12} {:<12} {:<8} {:<6} {:<24} {:<8} {:<8} {:<8} {}",
            d.model,
            d.environment,
            format!("v{}", d.version),
            d.target,
            if d.url.is_empty() { "-" } else { &d.url },
            d.pid.map_or("-".to_string(), |p| p.to_string()),
            row.uptime_seconds
                .map_or("-".to_string(), |s| ui::duration(Duration::from_secs(s))),
            d.restarts,
            d.health.as_str()
        );
    }
    Ok(exit::code(exit::SUCCESS))
}
