//! Watching a Deployment's rollout as `kubectl rollout status` does: the controller has seen
//! the new spec (`observedGeneration`), every replica is updated, no old one is left, every
//! updated one is available; and it failed when the `Progressing` condition says
//! `ProgressDeadlineExceeded`. (kube's `is_deployment_completed` checks less.) When it fails,
//! the new pods say why: a container's waiting reason (`CrashLoopBackOff`, `ErrImagePull`,
//! `ImagePullBackOff`, …), its last exit, or the pod not being scheduled or not ready.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

use super::api::{Call, Kube, chain};
use super::manifests::{LABEL_INSTANCE, LABEL_MODEL_VERSION};
use crate::Error;

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Under way; the line says how far (`1/3 updated, 2 ready, 2 available, 2 old`: replicas
    /// of the new version, ready and available ones of both, and those of older versions).
    Progressing(String),
    Complete,
    /// `Progressing=False` with reason `ProgressDeadlineExceeded`: the condition's message.
    DeadlineExceeded(String),
}

/// The state of `deployment`'s rollout of generation `generation` (what the apply returned).
pub fn rollout_state(deployment: &Deployment, generation: i64) -> RolloutState {
    let status = deployment.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return RolloutState::Progressing(
            "waiting for the Deployment controller to see the new spec".into(),
        );
    }
    if let Some(progressing) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        && progressing.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return RolloutState::DeadlineExceeded(progressing.message.clone().unwrap_or_default());
    }
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let mut line = format!("{updated}/{desired} updated, {ready} ready, {available} available");
    if replicas > updated {
        line.push_str(&format!(", {} old", replicas - updated));
    }
    if updated < desired || replicas > updated || available < updated {
        RolloutState::Progressing(line)
    } else {
        RolloutState::Complete
    }
}

/// How a rollout that did not complete ended.
#[derive(Debug)]
pub enum RolloutFailure {
    /// The Deployment's progress deadline passed: the message of its condition.
    Deadline(String),
    /// Kiln's own `rollout_timeout` passed.
    Timeout(Duration),
    /// The API failed (unreachable, forbidden) or the Deployment was deleted meanwhile.
    Api(Error),
}

/// Waits until `name`'s rollout of `generation` completes, calling `progress` with each new
/// progress line.
pub async fn wait(
    kube: &Kube,
    namespace: &str,
    name: &str,
    generation: i64,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<(), RolloutFailure> {
    let api = kube.api::<Deployment>(namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_line = String::new();
    loop {
        let event = match tokio::time::timeout_at(deadline, events.try_next()).await {
            Err(_) => return Err(RolloutFailure::Timeout(timeout)),
            // Too old a resource version: the watcher lists again by itself.
            Ok(Err(watcher::Error::WatchError(status))) if status.code == 410 => continue,
            Ok(Err(error)) => return Err(RolloutFailure::Api(watch_error(kube, namespace, error))),
            Ok(Ok(None)) => {
                return Err(RolloutFailure::Api(Error::KubernetesApi {
                    verb: "watch",
                    resource: "deployments.apps",
                    namespace: namespace.to_string(),
                    code: 0,
                    reason: "WatchEnded".into(),
                    message: "the watch ended".into(),
                }));
            }
            Ok(Ok(Some(event))) => event,
        };
        let deployment = match event {
            watcher::Event::Apply(deployment) | watcher::Event::InitApply(deployment) => deployment,
            watcher::Event::Delete(_) => {
                return Err(RolloutFailure::Api(Error::KubernetesApi {
                    verb: "watch",
                    resource: "deployments.apps",
                    namespace: namespace.to_string(),
                    code: 404,
                    reason: "Deleted".into(),
                    message: format!("the Deployment `{name}` was deleted during its rollout"),
                }));
            }
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        match rollout_state(&deployment, generation) {
            RolloutState::Complete => return Ok(()),
            RolloutState::DeadlineExceeded(message) => {
                return Err(RolloutFailure::Deadline(message));
            }
            RolloutState::Progressing(line) => {
                if line != last_line {
                    progress(&line);
                    last_line = line;
                }
            }
        }
    }
}

fn watch_error(kube: &Kube, namespace: &str, error: watcher::Error) -> Error {
    let call = Call::new("watch", "deployments.apps", namespace);
    match error {
        watcher::Error::InitialListFailed(error) | watcher::Error::WatchStartFailed(error) => {
            kube.error(call, error)
        }
        watcher::Error::WatchError(status) => kube.error(call, kube::Error::Api(status)),
        watcher::Error::WatchFailed(error) => kube.error(call, error),
        other => Error::KubernetesApi {
            verb: "watch",
            resource: "deployments.apps",
            namespace: namespace.to_string(),
            code: 0,
            reason: "WatchFailed".into(),
            message: chain(&other),
        },
    }
}

/// Why the pods of version `version` of the environment `instance` are not available: one
/// line per pod that says something (at most a few).
pub async fn pod_reasons(
    kube: &Kube,
    namespace: &str,
    instance: &str,
    version: i64,
) -> Result<Vec<String>, Error> {
    let selector = format!("{LABEL_INSTANCE}={instance},{LABEL_MODEL_VERSION}={version}");
    let mut pods = kube.pods(namespace, &selector).await?;
    pods.retain(|pod| pod.metadata.deletion_timestamp.is_none());
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(pods.iter().filter_map(pod_reason).take(5).collect())
}

/// Why one pod is not available, e.g. ``pod `iris-production-5d8f-x2x`: CrashLoopBackOff: back-off
/// 40s restarting failed container (restarted 3 times; last exit code 1)``.
pub fn pod_reason(pod: &Pod) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref()?;
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
    if condition("Ready").is_some_and(|c| c.status == "True") {
        return None;
    }
    for container in status.container_statuses.iter().flatten() {
        if container.ready {
            continue;
        }
        let mut after = Vec::new();
        if container.restart_count > 0 {
            after.push(format!("restarted {} times", container.restart_count));
        }
        if let Some(terminated) = container
            .last_state
            .as_ref()
            .and_then(|state| state.terminated.as_ref())
        {
            after.push(format!("last exit code {}", terminated.exit_code));
        }
        let after = if after.is_empty() {
            String::new()
        } else {
            format!(" ({})", after.join("; "))
        };
        let state = container.state.as_ref();
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or("Waiting");
            let message = waiting
                .message
                .as_deref()
                .map_or(String::new(), |m| format!(": {m}"));
            return Some(format!("pod `{name}`: {reason}{message}{after}"));
        }
        if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
            let reason = terminated.reason.as_deref().unwrap_or("Terminated");
            return Some(format!(
                "pod `{name}`: {reason} (exit code {}){after}",
                terminated.exit_code
            ));
        }
        return Some(format!(
            "pod `{name}`: container `{}` running but not ready (failing its readiness probe on /v2/health/ready){after}",
            container.name
        ));
    }
    if let Some(scheduled) = condition("PodScheduled").filter(|c| c.status == "False") {
        return Some(format!(
            "pod `{name}`: not scheduled: {}",
            scheduled
                .message
                .as_deref()
                .or(scheduled.reason.as_deref())
                .unwrap_or("no node fits it")
        ));
    }
    let phase = status.phase.as_deref().unwrap_or("Pending");
    Some(format!("pod `{name}`: {phase}, not ready"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "iris-production", "generation": generation},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_rollout_is_complete_only_as_kubectl_rollout_status_says() {
        let unseen = deployment(2, serde_json::json!({"observedGeneration": 1}));
        assert!(matches!(
            rollout_state(&unseen, 2),
            RolloutState::Progressing(line) if line.contains("Deployment controller")
        ));
        // All updated and available, but an old pod is still counted: not done yet
        // (kube's `is_deployment_completed` would say done).
        let old_left = deployment(
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3,
                               "readyReplicas": 4, "availableReplicas": 4}),
        );
        assert_eq!(
            rollout_state(&old_left, 2),
            RolloutState::Progressing("3/3 updated, 4 ready, 4 available, 1 old".into())
        );
        let done = deployment(
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3,
                               "readyReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(rollout_state(&done, 2), RolloutState::Complete);
        let stuck = deployment(
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                "conditions": [{"type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet \"iris-production-5d8f\" has timed out progressing."}]}),
        );
        assert_eq!(
            rollout_state(&stuck, 2),
            RolloutState::DeadlineExceeded(
                "ReplicaSet \"iris-production-5d8f\" has timed out progressing.".into()
            )
        );
    }

    #[test]
    fn an_unscheduled_pod_says_why() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "iris-production-5d8f-x2x"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient memory."}]},
        }))
        .unwrap();
        assert_eq!(
            pod_reason(&pod).unwrap(),
            "pod `iris-production-5d8f-x2x`: not scheduled: 0/1 nodes are available: 1 Insufficient memory."
        );
    }
}
