//! The deployment controller: what should serve is in the registry (each environment is an alias
//! of the model: `staging`, `production`), what serves is the target's; [`Controller::reconcile`]
//! closes the gap, as a Kubernetes controller does. So `kiln deploy`, `kiln promote` and
//! `kiln rollback` only move aliases (recorded in the alias history), from any process, and the
//! running supervisor rolls the change out. The rules are the target's business only in how:
//! - a green run's new version goes to the first environment when it is `auto`;
//! - a later environment with `approve: auto` is promoted to once the one before it serves the
//!   version (unless it held that version before and was rolled back from it); with
//!   `approve: manual` it waits for `kiln promote`;
//! - a rollout that fails (start, readiness, smoke test) moves the alias back to the version
//!   still serving, and a version that crash-loops after its rollout is rolled back the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kiln_pipeline::{AliasChange, ModelRef, Selector, Workspace};
use kiln_registry::{AliasCommand, MoveBy, RunId, Version};
use kiln_spec::{Approve, Project, TargetKind};

use crate::Error;
use crate::target::{DeploymentStatus, Release, RolloutError, Target, TargetEvent};

/// What the controller did or saw, for the caller to print and to notify.
#[derive(Debug, Clone)]
pub enum Change {
    /// A slow step of preparing a version (building its Python environment).
    Step(String),
    RollingOut {
        model: String,
        environment: String,
        version: Version,
        from: Option<Version>,
    },
    Deployed {
        status: DeploymentStatus,
        from: Option<Version>,
        took: Duration,
    },
    /// The rollout did not happen; the alias was moved back to `rolled_back_to` when a version
    /// was serving (it still serves).
    RolloutFailed {
        model: String,
        environment: String,
        version: Version,
        error: RolloutError,
        rolled_back_to: Option<Version>,
    },
    Promoted {
        model: String,
        from_environment: String,
        environment: String,
        version: Version,
    },
    /// `environment` holds `approve: manual`: `version` waits for `kiln promote`.
    AwaitingApproval {
        model: String,
        from_environment: String,
        environment: String,
        version: Version,
    },
    /// The version crash-looped after its rollout: the alias went back to `to`.
    RolledBack {
        model: String,
        environment: String,
        from: Version,
        to: Version,
        reason: String,
    },
    /// The serving process died or hung (it is being restarted).
    Crashed {
        model: String,
        environment: String,
        version: Version,
        detail: String,
        restart_in: Duration,
    },
    Restarted {
        model: String,
        environment: String,
        version: Version,
        down: Duration,
    },
    /// An environment on a target this build cannot drive.
    Unsupported {
        model: String,
        environment: String,
        reason: String,
    },
}

/// Drives the targets towards the registry's aliases: each environment is rolled out on the
/// target of its kind (`target:` in kiln.yaml).
pub struct Controller {
    targets: Vec<Box<dyn Target>>,
    /// Kinds of target that cannot be driven, with why (a cluster that cannot be reached): their
    /// environments are reported once and not served. Kinds neither here nor in `targets` are
    /// left alone (a `kiln deploy` to a Kubernetes environment drives only that target).
    unavailable: BTreeMap<TargetKind, String>,
    ports: BTreeMap<(String, String), Option<u16>>,
    /// Rollouts that failed with nothing to fall back to: not retried until the alias moves.
    failed: BTreeSet<(String, String, Version)>,
    /// Said once each: approvals awaited, unsupported targets.
    announced: BTreeSet<(String, String, Version)>,
}

impl Controller {
    /// A controller for `project`'s environments. Ports: each environment's `port:`, else
    /// `port_base`, `port_base + 1`, ... in the order of the models and their environments
    /// (skipping ports taken by `port:`); `port_base` 0 gives every such environment a free port.
    pub fn new(target: Box<dyn Target>, project: &Project, port_base: u16) -> Controller {
        let configured: BTreeSet<u16> = deployable(project)
            .flat_map(|model| model.deploy.environments.iter().filter_map(|e| e.port))
            .collect();
        let mut next = port_base;
        let mut ports = BTreeMap::new();
        for model in deployable(project) {
            for environment in &model.deploy.environments {
                let port = environment.port.or_else(|| {
                    if port_base == 0 {
                        return None;
                    }
                    while configured.contains(&next) {
                        next = next.saturating_add(1);
                    }
                    let port = next;
                    next = next.saturating_add(1);
                    Some(port)
                });
                ports.insert((model.name.clone(), environment.name.clone()), port);
            }
        }
        Controller {
            targets: vec![target],
            unavailable: BTreeMap::new(),
            ports,
            failed: BTreeSet::new(),
            announced: BTreeSet::new(),
        }
    }

    /// Drives `target` too, for the environments of its kind.
    pub fn with_target(mut self, target: Box<dyn Target>) -> Controller {
        self.targets.push(target);
        self
    }

    /// Reports the environments of `kind` as not served, saying `reason`, instead of leaving
    /// them alone.
    pub fn with_unavailable(mut self, kind: TargetKind, reason: impl Into<String>) -> Controller {
        self.unavailable.insert(kind, reason.into());
        self
    }

    /// What serves now, on every target.
    pub fn status(&self) -> Vec<DeploymentStatus> {
        self.targets.iter().flat_map(|t| t.status()).collect()
    }

    fn target(&self, kind: TargetKind) -> Option<&dyn Target> {
        self.targets
            .iter()
            .find(|t| t.kind() == kind.as_str())
            .map(|t| t.as_ref())
    }

    /// A green run made `version` of `model`: it goes to the model's first environment when
    /// that one is `auto`, then wherever promotion takes it.
    pub fn deploy_new_version(
        &mut self,
        workspace: &mut Workspace,
        project: &Project,
        model: &str,
        version: Version,
        run: Option<RunId>,
        on_change: &mut dyn FnMut(Change),
    ) -> Result<(), Error> {
        let Some(first) = project
            .model(model)
            .and_then(|m| m.deploy.environments.first())
            .filter(|e| e.auto)
        else {
            return Ok(());
        };
        if workspace.registry.alias_version(model, &first.name)? != Some(version) {
            let by = MoveBy {
                command: AliasCommand::Deploy,
                run_id: run,
                reason: None,
            };
            kiln_pipeline::move_alias(
                workspace,
                Ok(project),
                model,
                &first.name,
                AliasChange::To { version, by },
            )?;
        }
        self.reconcile(workspace, project, on_change)
    }

    /// Rolls out whatever the aliases say and the target does not serve yet, promoting where
    /// `approve: auto` allows it.
    pub fn reconcile(
        &mut self,
        workspace: &mut Workspace,
        project: &Project,
        on_change: &mut dyn FnMut(Change),
    ) -> Result<(), Error> {
        for model in deployable(project) {
            let environments = &model.deploy.environments;
            for (index, environment) in environments.iter().enumerate() {
                let name = &model.name;
                if self.target(environment.target).is_none() {
                    let reason = self.unavailable.get(&environment.target);
                    if let Some(reason) = reason.filter(|_| {
                        self.announced
                            .insert((name.clone(), environment.name.clone(), 0))
                    }) {
                        on_change(Change::Unsupported {
                            model: name.clone(),
                            environment: environment.name.clone(),
                            reason: reason.clone(),
                        });
                    }
                    continue;
                }
                let mut desired = workspace.registry.alias_version(name, &environment.name)?;
                if index > 0 {
                    let before = &environments[index - 1];
                    let upstream = self.serving(name, &before.name).filter(|v| {
                        workspace
                            .registry
                            .alias_version(name, &before.name)
                            .ok()
                            .flatten()
                            == Some(*v)
                    });
                    if let Some(upstream) = upstream.filter(|v| desired != Some(*v)) {
                        // A version the environment held before and was moved away from (a
                        // rollback, by hand or after a failed rollout) is not promoted again by
                        // itself: that takes `kiln promote`.
                        let held_before = workspace
                            .registry
                            .alias_history(name, Some(&environment.name))?
                            .iter()
                            .any(|moved| moved.to_version == upstream);
                        match environment.approve {
                            Approve::Auto if !held_before => {
                                let by = MoveBy {
                                    command: AliasCommand::Promote,
                                    run_id: None,
                                    reason: Some(
                                        "`approve: auto`: the environment before it serves this version",
                                    ),
                                };
                                kiln_pipeline::move_alias(
                                    workspace,
                                    Ok(project),
                                    name,
                                    &environment.name,
                                    AliasChange::To {
                                        version: upstream,
                                        by,
                                    },
                                )?;
                                on_change(Change::Promoted {
                                    model: name.clone(),
                                    from_environment: before.name.clone(),
                                    environment: environment.name.clone(),
                                    version: upstream,
                                });
                                desired = Some(upstream);
                            }
                            Approve::Auto | Approve::Manual => {
                                if self.announced.insert((
                                    name.clone(),
                                    environment.name.clone(),
                                    upstream,
                                )) {
                                    on_change(Change::AwaitingApproval {
                                        model: name.clone(),
                                        from_environment: before.name.clone(),
                                        environment: environment.name.clone(),
                                        version: upstream,
                                    });
                                }
                            }
                        }
                    }
                }
                let Some(version) = desired else { continue };
                let serving = self.serving(name, &environment.name);
                let key = (name.clone(), environment.name.clone(), version);
                if serving == Some(version) || self.failed.contains(&key) {
                    continue;
                }
                self.roll_out(
                    workspace,
                    project,
                    environment,
                    name,
                    version,
                    serving,
                    on_change,
                )?;
            }
        }
        Ok(())
    }

    /// Something the target reported: passed on, and a crash loop rolled back.
    pub fn handle(
        &mut self,
        workspace: &mut Workspace,
        project: &Project,
        event: TargetEvent,
        on_change: &mut dyn FnMut(Change),
    ) -> Result<(), Error> {
        match event {
            TargetEvent::Crashed {
                model,
                environment,
                version,
                detail,
                restart_in,
            } => on_change(Change::Crashed {
                model,
                environment,
                version,
                detail,
                restart_in,
            }),
            TargetEvent::Restarted {
                model,
                environment,
                version,
                down,
            } => on_change(Change::Restarted {
                model,
                environment,
                version,
                down,
            }),
            TargetEvent::CrashLoop {
                model,
                environment,
                version,
                crashes,
            } => {
                // Only while the alias still names the crashing version (nobody moved it since).
                if workspace.registry.alias_version(&model, &environment)? != Some(version) {
                    return Ok(());
                }
                let reason =
                    format!("v{version} crashed {crashes} times within a minute of its rollout");
                let moved = match kiln_pipeline::move_alias(
                    workspace,
                    Ok(project),
                    &model,
                    &environment,
                    AliasChange::Rollback {
                        reason: Some(&reason),
                    },
                ) {
                    Ok(moved) => moved,
                    // No version to go back to: it keeps being restarted, with backoff.
                    Err(kiln_pipeline::Error::Registry(
                        kiln_registry::Error::NothingToRollBack { .. },
                    )) => {
                        return Ok(());
                    }
                    Err(error) => return Err(error.into()),
                };
                on_change(Change::RolledBack {
                    model,
                    environment,
                    from: version,
                    to: moved.to_version,
                    reason,
                });
                self.reconcile(workspace, project, on_change)?;
            }
        }
        Ok(())
    }

    /// Stops every environment.
    pub fn stop(&self) {
        for target in &self.targets {
            target.stop_all();
        }
    }

    fn serving(&self, model: &str, environment: &str) -> Option<Version> {
        self.status()
            .into_iter()
            .find(|s| s.model == model && s.environment == environment)
            .map(|s| s.version)
    }

    #[allow(clippy::too_many_arguments)]
    fn roll_out(
        &mut self,
        workspace: &mut Workspace,
        project: &Project,
        spec: &kiln_spec::Environment,
        model: &str,
        version: Version,
        serving: Option<Version>,
        on_change: &mut dyn FnMut(Change),
    ) -> Result<(), Error> {
        let environment = spec.name.as_str();
        let started = Instant::now();
        on_change(Change::RollingOut {
            model: model.to_string(),
            environment: environment.to_string(),
            version,
            from: serving,
        });
        let reference = ModelRef {
            model: model.to_string(),
            selector: Selector::Version(version),
        };
        let outcome = crate::prepare(workspace, project, &reference, &mut |line| {
            on_change(Change::Step(line.to_string()))
        })
        .map_err(|error| RolloutError {
            message: format!(
                "cannot prepare v{version} for serving: {}",
                kiln_serve::error_chain(&error)
            ),
            log_tail: None,
        })
        .and_then(|served| {
            let lineage = workspace
                .registry
                .model_version(model, version)
                .ok()
                .map(|v| v.lineage);
            let release = Release {
                environment: environment.to_string(),
                model: served,
                example: lineage.as_ref().and_then(|l| l.example.clone()),
                commit: lineage.and_then(|l| l.commit),
            };
            let port = self
                .ports
                .get(&(model.to_string(), environment.to_string()))
                .copied()
                .flatten();
            match self.target(spec.target) {
                Some(target) => target.roll_out(&release, port),
                None => Err(RolloutError {
                    message: format!("no `{}` target to roll out on", spec.target.as_str()),
                    log_tail: None,
                }),
            }
        });
        match outcome {
            Ok(status) => on_change(Change::Deployed {
                status,
                from: serving,
                took: started.elapsed(),
            }),
            Err(error) => {
                // What the target serves now, which is what the alias goes back to: on
                // Kubernetes the version it re-applied, which differs from the one serving
                // before this rollout when an earlier rollout was cut short.
                let now_serving = self
                    .serving(model, environment)
                    .filter(|now| *now != version)
                    .or(serving);
                let rolled_back_to = match now_serving {
                    Some(previous) => {
                        let reason = format!("v{version} failed its rollout: {}", error.message);
                        let by = MoveBy {
                            command: AliasCommand::Rollback,
                            run_id: None,
                            reason: Some(&reason),
                        };
                        kiln_pipeline::move_alias(
                            workspace,
                            Ok(project),
                            model,
                            environment,
                            AliasChange::To {
                                version: previous,
                                by,
                            },
                        )?;
                        Some(previous)
                    }
                    None => {
                        self.failed
                            .insert((model.to_string(), environment.to_string(), version));
                        None
                    }
                };
                on_change(Change::RolloutFailed {
                    model: model.to_string(),
                    environment: environment.to_string(),
                    version,
                    error,
                    rolled_back_to,
                });
            }
        }
        Ok(())
    }
}

/// The project's models that have something to deploy.
fn deployable(project: &Project) -> impl Iterator<Item = &kiln_spec::Model> {
    project.models.iter().filter(|m| m.artifact.is_some())
}
