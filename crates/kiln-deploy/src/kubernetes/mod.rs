//! The Kubernetes target: each environment of a model is a Deployment, a Service, a
//! HorizontalPodAutoscaler and a PodDisruptionBudget named `<model>-<environment>` in the
//! environment's namespace, server-side applied with field manager `kiln`. A rollout applies
//! the new version's objects and watches the Deployment until `kubectl rollout status` would
//! call it done; a rollout that fails (progress deadline, Kiln's timeout) re-applies the
//! objects of the version that served before, kept in an annotation of the Deployment, and
//! says why from the new pods (crash loop, image pull, not ready). It implements [`Target`], so
//! the controller's promotion, rollback, alias history and notifications are the same as on
//! the local target. This module is the only place in Kiln that speaks Kubernetes.
//!
//! The trait is blocking and kube is async: each target drives a private tokio runtime.

mod api;
mod manifests;
mod rollout;
mod settings;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

pub use api::{FIELD_MANAGER, FieldConflict};
pub use manifests::{
    ANNOTATION_APPLIED, ANNOTATION_PREVIOUS, CONTAINER_PORT, LABEL_ENVIRONMENT, LABEL_GIT_SHA,
    LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_MODEL, LABEL_MODEL_VERSION, LABEL_NAME, LABEL_VERSION,
    MANAGED_BY, Manifests, SERVICE_PORT, Workload, manifests, object_name, render_yaml,
};
pub use rollout::{RolloutState, pod_reason, rollout_state};
pub use settings::{Autoscale, Cluster, KubernetesSettings, Resources};

use crate::Error;
use crate::target::{DeploymentStatus, Health, Release, Replicas, RolloutError, Target};
use api::Kube;
use manifests::label;
use rollout::RolloutFailure;

/// The image of a release, pushed where the cluster pulls from: `registry/repo@sha256:…`
/// (building and pushing is the caller's). `Err` is a one-line reason.
pub type ImageResolver = Box<dyn Fn(&Release) -> Result<String, String> + Send + Sync>;

/// One line of a rollout's progress, for the terminal.
#[derive(Debug, Clone, Copy)]
pub struct RolloutProgress<'a> {
    pub model: &'a str,
    pub environment: &'a str,
    pub version: i64,
    /// E.g. `2/3 updated, 1 ready, 1 available`.
    pub line: &'a str,
}

type ProgressSink = Box<dyn Fn(&RolloutProgress<'_>) + Send + Sync>;
/// (model, environment).
type EnvironmentKey = (String, String);

/// Environments served by Deployments in a Kubernetes cluster.
pub struct KubernetesTarget {
    runtime: tokio::runtime::Runtime,
    kube: Kube,
    /// Per (model, environment); others get [`KubernetesSettings::default`].
    environments: BTreeMap<EnvironmentKey, KubernetesSettings>,
    default_settings: KubernetesSettings,
    images: ImageResolver,
    force_conflicts: bool,
    progress: ProgressSink,
    /// One rollout at a time per environment.
    rollouts: Mutex<BTreeMap<EnvironmentKey, Arc<Mutex<()>>>>,
    /// The last listing that succeeded: what `status` says while the API cannot be reached
    /// (an empty answer would make the controller roll everything out again).
    last_status: Mutex<Vec<DeploymentStatus>>,
}

impl std::fmt::Debug for KubernetesTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesTarget")
            .field("server", &self.kube.server)
            .field("environments", &self.environments)
            .field("force_conflicts", &self.force_conflicts)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl KubernetesTarget {
    /// A target on `cluster`. `environments` holds the settings of each (model, environment)
    /// served here; `images` gives each release's image reference. Nothing is sent to the API
    /// server until the first rollout or status.
    pub fn new(
        cluster: &Cluster,
        environments: BTreeMap<(String, String), KubernetesSettings>,
        images: ImageResolver,
    ) -> Result<KubernetesTarget, Error> {
        // Both of rustls' crypto providers are linked (kube's ring, object_store's aws-lc-rs):
        // rustls then wants one chosen for the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kiln-kubernetes")
            .enable_all()
            .build()
            .map_err(|error| Error::KubernetesConfig {
                path: None,
                message: format!("cannot start the runtime of the Kubernetes client: {error}"),
            })?;
        let kube = runtime.block_on(Kube::connect(cluster))?;
        Ok(KubernetesTarget {
            runtime,
            kube,
            environments,
            default_settings: KubernetesSettings::default(),
            images,
            force_conflicts: false,
            progress: Box::new(|_| {}),
            rollouts: Mutex::new(BTreeMap::new()),
            last_status: Mutex::new(Vec::new()),
        })
    }

    /// Take over fields another field manager owns instead of failing on the conflict
    /// (`kiln deploy --force-conflicts`).
    pub fn force_conflicts(mut self, force: bool) -> KubernetesTarget {
        self.force_conflicts = force;
        self
    }

    /// Where rollouts report their progress.
    pub fn on_progress(
        mut self,
        progress: impl Fn(&RolloutProgress<'_>) + Send + Sync + 'static,
    ) -> KubernetesTarget {
        self.progress = Box::new(progress);
        self
    }

    /// The API server's address.
    pub fn server(&self) -> &str {
        &self.kube.server
    }

    /// The settings of `environment` of `model`.
    pub fn settings(&self, model: &str, environment: &str) -> &KubernetesSettings {
        self.environments
            .get(&(model.to_string(), environment.to_string()))
            .unwrap_or(&self.default_settings)
    }

    /// The objects `release` is rolled out as, with the image `images` gives it.
    pub fn manifests(&self, release: &Release) -> Result<Manifests, Error> {
        let settings = self.settings(release.model_name(), &release.environment);
        let image = (self.images)(release).map_err(|problem| Error::KubernetesSettings {
            model: release.model_name().to_string(),
            environment: release.environment.clone(),
            field: "image".into(),
            problem,
        })?;
        let workload = Workload {
            model: release.model_name().to_string(),
            environment: release.environment.clone(),
            version: release.model.version,
            commit: release.commit.clone(),
            image,
        };
        manifests(&workload, settings)
    }

    /// Server-side applies `manifests` as they are (no rollout watch, no rollback): a
    /// conflict with another field manager fails unless `force`.
    pub fn apply(&self, manifests: &Manifests, force: bool) -> Result<(), Error> {
        self.runtime
            .block_on(self.kube.apply_all(manifests, force))
            .map(|_| ())
    }

    /// Deletes the objects of `environment` of `model` (those Kiln applied).
    pub fn remove(&self, model: &str, environment: &str) -> Result<(), Error> {
        let name = object_name(model, environment)?;
        let namespace = &self.settings(model, environment).namespace;
        self.runtime
            .block_on(self.kube.delete_all(namespace, &name))
    }

    /// Kiln's Deployments in the namespaces of the configured environments (`default` when none
    /// is configured), or why they could not be listed.
    pub fn try_status(&self) -> Result<Vec<DeploymentStatus>, Error> {
        let mut namespaces: BTreeSet<&str> = self
            .environments
            .values()
            .map(|settings| settings.namespace.as_str())
            .collect();
        if namespaces.is_empty() {
            namespaces.insert(&self.default_settings.namespace);
        }
        let statuses = self.runtime.block_on(async {
            let mut statuses = Vec::new();
            for namespace in namespaces {
                let deployments = self.kube.deployments(namespace).await?;
                if deployments.is_empty() {
                    continue;
                }
                let pods = self
                    .kube
                    .pods(namespace, &format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
                    .await?;
                statuses.extend(
                    deployments
                        .iter()
                        .filter_map(|deployment| deployment_status(deployment, &pods)),
                );
            }
            Ok::<_, Error>(statuses)
        })?;
        *lock(&self.last_status) = statuses.clone();
        Ok(statuses)
    }

    fn rollout_lock(&self, model: &str, environment: &str) -> Arc<Mutex<()>> {
        let mut rollouts = lock(&self.rollouts);
        Arc::clone(
            rollouts
                .entry((model.to_string(), environment.to_string()))
                .or_default(),
        )
    }

    /// The rollout of `release` as the objects `new`, in the runtime.
    async fn roll_out_async(
        &self,
        release: &Release,
        new: Manifests,
    ) -> Result<DeploymentStatus, RolloutError> {
        let model = release.model_name();
        let environment = release.environment.as_str();
        let version = release.model.version;
        let settings = self.settings(model, environment);
        let say = |line: &str| {
            (self.progress)(&RolloutProgress {
                model,
                environment,
                version,
                line,
            })
        };
        let fail = |error: Error| RolloutError {
            message: with_hint(&error),
            log_tail: None,
        };
        let (namespace, name) = (new.namespace().to_string(), new.name().to_string());
        let current = self
            .kube
            .deployment(&namespace, &name)
            .await
            .map_err(fail)?;
        let previous = current
            .as_ref()
            .and_then(|deployment| previous_of(deployment, version));
        let stamped = stamp(&new, previous.as_ref()).map_err(fail)?;
        say(&format!(
            "applying Deployment, Service, {}PodDisruptionBudget `{name}` in namespace `{namespace}`",
            if new.autoscaler.is_some() {
                "HorizontalPodAutoscaler, "
            } else {
                ""
            }
        ));
        let applied = self
            .kube
            .apply_all(&stamped, self.force_conflicts)
            .await
            .map_err(fail)?;
        let generation = applied.metadata.generation.unwrap_or(0);
        let outcome = rollout::wait(
            &self.kube,
            &namespace,
            &name,
            generation,
            settings.rollout_timeout,
            &mut |line| say(line),
        )
        .await;
        let failure = match outcome {
            Ok(()) => {
                say("rolled out: every replica is updated and available");
                return self.status_of(&namespace, &name).await.map_err(fail);
            }
            Err(failure) => failure,
        };

        // Why, from the new version's pods, then back to what served before.
        let reasons = rollout::pod_reasons(&self.kube, &namespace, &name, version)
            .await
            .unwrap_or_default();
        let mut message = match &failure {
            RolloutFailure::Deadline(condition) => format!(
                "v{version} did not become available within its progress deadline ({} s): {}",
                settings.progress_deadline.as_secs(),
                condition.trim_end_matches('.')
            ),
            RolloutFailure::Timeout(timeout) => format!(
                "v{version} was not rolled out within the rollout timeout ({} s)",
                timeout.as_secs()
            ),
            RolloutFailure::Api(error) => {
                format!("watching the rollout of v{version} failed: {error}")
            }
        };
        for reason in &reasons {
            message.push_str("; ");
            message.push_str(reason);
        }
        match previous {
            Some(previous) => {
                let back = previous.version().unwrap_or(0);
                say(&format!("the rollout failed: re-applying v{back}"));
                let mut say_back = |line: &str| say(&format!("v{back}: {line}"));
                match self.restore(&previous, settings, &mut say_back).await {
                    Ok(()) => {
                        message.push_str(&format!("; v{back} was re-applied and is available"))
                    }
                    Err(error) => message.push_str(&format!(
                        "; re-applying v{back} did not bring it back: {error}"
                    )),
                }
            }
            // A Deployment was there, but not one Kiln can restore (applied from `--dry-run`'s
            // output, or by another tool and taken over): it is left as it is, never deleted.
            None if current.is_some() => message.push_str(
                "; the Deployment that was there holds no version Kiln applied, so Kiln cannot put it back: it was left as the rollout left it (`kubectl rollout undo` restores its previous ReplicaSet)",
            ),
            None => {
                say("the rollout failed and nothing served before: deleting its objects");
                match self.kube.delete_all(&namespace, &name).await {
                    Ok(()) => message.push_str("; nothing served before, its objects were deleted"),
                    Err(error) => {
                        message.push_str(&format!("; deleting its objects failed too: {error}"))
                    }
                }
            }
        }
        Err(RolloutError {
            message,
            log_tail: (!reasons.is_empty()).then(|| reasons.join("\n")),
        })
    }

    /// Re-applies the objects of the version that served before, and waits for them.
    async fn restore(
        &self,
        previous: &Manifests,
        settings: &KubernetesSettings,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), Error> {
        let stamped = stamp(previous, None)?;
        let applied = self.kube.apply_all(&stamped, self.force_conflicts).await?;
        let generation = applied.metadata.generation.unwrap_or(0);
        let (namespace, name) = (previous.namespace(), previous.name());
        match rollout::wait(
            &self.kube,
            namespace,
            name,
            generation,
            settings.rollout_timeout,
            progress,
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(RolloutFailure::Api(error)) => Err(error),
            Err(RolloutFailure::Deadline(message)) => Err(Error::KubernetesApi {
                verb: "watch",
                resource: "deployments.apps",
                namespace: namespace.to_string(),
                code: 0,
                reason: "ProgressDeadlineExceeded".into(),
                message,
            }),
            Err(RolloutFailure::Timeout(timeout)) => Err(Error::KubernetesApi {
                verb: "watch",
                resource: "deployments.apps",
                namespace: namespace.to_string(),
                code: 0,
                reason: "Timeout".into(),
                message: format!("not available after {} s", timeout.as_secs()),
            }),
        }
    }

    async fn status_of(&self, namespace: &str, name: &str) -> Result<DeploymentStatus, Error> {
        let deployment = self.kube.deployment(namespace, name).await?;
        let pods = self
            .kube
            .pods(namespace, &format!("{LABEL_INSTANCE}={name}"))
            .await?;
        deployment
            .as_ref()
            .and_then(|deployment| deployment_status(deployment, &pods))
            .ok_or_else(|| Error::KubernetesApi {
                verb: "get",
                resource: "deployments.apps",
                namespace: namespace.to_string(),
                code: 404,
                reason: "NotFound".into(),
                message: format!("the Deployment `{name}` is gone or no longer Kiln's"),
            })
    }
}

impl Target for KubernetesTarget {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    /// `port` is the local target's business: a Kubernetes environment is reached through its
    /// Service, on port 80.
    fn roll_out(
        &self,
        release: &Release,
        _port: Option<u16>,
    ) -> Result<DeploymentStatus, RolloutError> {
        let one_at_a_time = self.rollout_lock(release.model_name(), &release.environment);
        let _guard = lock(&one_at_a_time);
        // The image is resolved (built, pushed) here, outside the runtime: the resolver may
        // block, and may run a runtime of its own.
        let outcome = self.manifests(release).map_err(|error| RolloutError {
            message: with_hint(&error),
            log_tail: None,
        });
        let outcome =
            outcome.and_then(|new| self.runtime.block_on(self.roll_out_async(release, new)));
        // Refresh what `status` says: the controller reads it right after.
        let _ = self.try_status();
        outcome
    }

    fn status(&self) -> Vec<DeploymentStatus> {
        self.try_status()
            .unwrap_or_else(|_| lock(&self.last_status).clone())
    }

    /// Leaves the cluster serving: unlike local processes, the Deployments do not need Kiln to
    /// keep running. [`KubernetesTarget::remove`] deletes an environment.
    fn stop_all(&self) {}
}

/// An error and its hint, on one line (a rollout error has no room for a hint of its own).
fn with_hint(error: &Error) -> String {
    let text = kiln_serve::error_chain(error);
    match error.hint() {
        Some(hint) => format!("{text} (hint: {hint})"),
        None => text,
    }
}

/// The objects of the version that served before `deployment` is replaced by `version`: its
/// own applied objects once its rollout finished; the ones before them when its rollout never
/// did (a Kiln interrupted mid-rollout); the same as before when `version` is what it runs.
fn previous_of(deployment: &Deployment, version: i64) -> Option<Manifests> {
    let annotation = |key: &str| -> Option<Manifests> {
        let text = deployment.metadata.annotations.as_ref()?.get(key)?;
        serde_json::from_str(text).ok()
    };
    label(&deployment.metadata, LABEL_MANAGED_BY).filter(|by| *by == MANAGED_BY)?;
    let applied = annotation(ANNOTATION_APPLIED);
    let before = annotation(ANNOTATION_PREVIOUS);
    if applied.as_ref().and_then(Manifests::version) == Some(version) {
        return before;
    }
    let finished = deployment.status.as_ref().is_some_and(|status| {
        status.observed_generation >= deployment.metadata.generation
            && status.conditions.iter().flatten().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
            })
    });
    if finished {
        applied
    } else {
        before.or(applied)
    }
}

/// `manifests` with Kiln's annotations on the Deployment: the objects themselves (without
/// annotations), and `previous`'s.
fn stamp(manifests: &Manifests, previous: Option<&Manifests>) -> Result<Manifests, Error> {
    let bare = strip(manifests);
    let json = |m: &Manifests| {
        serde_json::to_string(m).map_err(|error| Error::KubernetesRender(error.to_string()))
    };
    let mut stamped = bare.clone();
    let annotations = stamped
        .deployment
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert(ANNOTATION_APPLIED.into(), json(&bare)?);
    if let Some(previous) = previous {
        annotations.insert(ANNOTATION_PREVIOUS.into(), json(&strip(previous))?);
    }
    Ok(stamped)
}

fn strip(manifests: &Manifests) -> Manifests {
    let mut bare = manifests.clone();
    if let Some(annotations) = bare.deployment.metadata.annotations.as_mut() {
        annotations.remove(ANNOTATION_APPLIED);
        annotations.remove(ANNOTATION_PREVIOUS);
        if annotations.is_empty() {
            bare.deployment.metadata.annotations = None;
        }
    }
    bare
}

/// `kiln ps`'s view of one of Kiln's Deployments; `pods` are (at least) its pods.
fn deployment_status(deployment: &Deployment, pods: &[Pod]) -> Option<DeploymentStatus> {
    let metadata = &deployment.metadata;
    let model = label(metadata, LABEL_MODEL)?.to_string();
    let environment = label(metadata, LABEL_ENVIRONMENT)?.to_string();
    let version: i64 = label(metadata, LABEL_MODEL_VERSION)?.parse().ok()?;
    let name = metadata.name.clone()?;
    let namespace = metadata.namespace.clone()?;
    let status = deployment.status.clone().unwrap_or_default();
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let version_label = version.to_string();
    let own_pods: Vec<&Pod> = pods
        .iter()
        .filter(|pod| {
            label(&pod.metadata, LABEL_INSTANCE) == Some(name.as_str())
                && label(&pod.metadata, LABEL_MODEL_VERSION) == Some(version_label.as_str())
                && pod.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let containers = || {
        own_pods
            .iter()
            .filter_map(|pod| pod.status.as_ref()?.container_statuses.as_ref())
            .flatten()
    };
    let restarts = containers()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .sum();
    let crash_looping = containers().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff")
    });
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .cloned()
    };
    let available = condition("Available").is_some_and(|c| c.status == "True");
    let deadline_exceeded = condition("Progressing")
        .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let health = if desired == 0 {
        Health::Stopped
    } else if available && !deadline_exceeded && ready > 0 {
        Health::Ready
    } else if crash_looping {
        Health::Restarting
    } else {
        Health::Unhealthy
    };
    // When Kiln's apply last changed the Deployment: when this version was rolled out.
    let since_ms = metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry.manager.as_deref() == Some(api::FIELD_MANAGER)
                && entry.operation.as_deref() == Some("Apply")
                && entry.subresource.as_deref().unwrap_or_default().is_empty()
        })
        .filter_map(|entry| entry.time.as_ref())
        .map(|time| time.0.as_millisecond())
        .max()
        .unwrap_or(0);
    Some(DeploymentStatus {
        model,
        environment,
        version,
        target: "kubernetes".into(),
        url: format!("http://{name}.{namespace}.svc"),
        port: SERVICE_PORT as u16,
        pid: None,
        since_ms,
        started_ms: since_ms,
        restarts,
        health,
        replicas: Some(Replicas { ready, desired }),
    })
}
