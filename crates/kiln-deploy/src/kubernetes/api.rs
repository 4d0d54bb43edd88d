//! Kiln's calls to the Kubernetes API: the client from a kubeconfig, server-side apply of an
//! environment's objects (field manager `kiln`, conflicts reported unless forced), and every
//! failure turned into an [`Error`] that names the verb, the resource and the namespace (a
//! 403 from RBAC, an API server that cannot be reached, a field-manager conflict).

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, ValidationDirective};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::manifests::{LABEL_MANAGED_BY, MANAGED_BY, Manifests};
use super::settings::Cluster;
use crate::Error;

/// The field manager of every apply: `managedFields` name Kiln as the owner of what it sets.
pub const FIELD_MANAGER: &str = "kiln";

/// One field another manager owns, from a conflict the API server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldConflict {
    /// The field's path, e.g. `.spec.replicas`.
    pub field: String,
    /// The field manager that owns it, e.g. `kubectl-edit`.
    pub manager: String,
}

impl fmt::Display for FieldConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` (owned by `{}`)", self.field, self.manager)
    }
}

/// An API call, for the error it may end in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub verb: &'static str,
    pub resource: &'static str,
    pub namespace: &'a str,
}

impl Call<'_> {
    pub fn new<'a>(verb: &'static str, resource: &'static str, namespace: &'a str) -> Call<'a> {
        Call {
            verb,
            resource,
            namespace,
        }
    }
}

/// A connected client, and the server's address for messages.
#[derive(Clone)]
pub(crate) struct Kube {
    pub client: Client,
    pub server: String,
}

impl Kube {
    /// The client `cluster` names. Nothing is sent to the server yet. Runs inside a tokio
    /// runtime (the client spawns its connection tasks there).
    pub async fn connect(cluster: &Cluster) -> Result<Kube, Error> {
        let options = KubeConfigOptions {
            context: cluster.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config_error = |message: String| Error::KubernetesConfig {
            path: cluster.kubeconfig.clone(),
            message,
        };
        let config = match &cluster.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|error| config_error(chain(&error)))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|error| config_error(chain(&error)))?
            }
            None if cluster.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|error| config_error(chain(&error)))?,
            None => Config::infer()
                .await
                .map_err(|error| config_error(chain(&error)))?,
        };
        let server = config.cluster_url.to_string();
        let server = server.trim_end_matches('/').to_string();
        let client = Client::try_from(config).map_err(|error| config_error(chain(&error)))?;
        Ok(Kube { client, server })
    }

    pub fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// `error` of `call`, as Kiln says it.
    pub fn error(&self, call: Call<'_>, error: kube::Error) -> Error {
        match error {
            kube::Error::Api(status) => {
                if status.code == 403 {
                    return Error::KubernetesForbidden {
                        server: self.server.clone(),
                        verb: call.verb,
                        resource: call.resource,
                        namespace: call.namespace.to_string(),
                        message: status.message.clone(),
                    };
                }
                Error::KubernetesApi {
                    verb: call.verb,
                    resource: call.resource,
                    namespace: call.namespace.to_string(),
                    code: status.code,
                    reason: status.reason.clone(),
                    message: status.message.clone(),
                }
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => Error::KubernetesUnreachable {
                server: self.server.clone(),
                verb: call.verb,
                resource: call.resource,
                namespace: call.namespace.to_string(),
                message: chain(&error),
            },
            other => Error::KubernetesApi {
                verb: call.verb,
                resource: call.resource,
                namespace: call.namespace.to_string(),
                code: 0,
                reason: "ClientError".into(),
                message: chain(&other),
            },
        }
    }

    /// Server-side applies `object` (named `name`) as Kiln. A conflict with another field
    /// manager is an [`Error::KubernetesConflict`] unless `force`; `dry_run` changes nothing.
    async fn apply<K>(
        &self,
        resource: &'static str,
        namespace: &str,
        name: &str,
        object: &K,
        options: ApplyOptions,
    ) -> Result<K, Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + fmt::Debug
            + Serialize
            + DeserializeOwned,
        <K as kube::Resource>::DynamicType: Default,
    {
        let params = PatchParams {
            dry_run: options.dry_run,
            force: options.force,
            field_manager: Some(FIELD_MANAGER.into()),
            field_validation: Some(ValidationDirective::Strict),
        };
        let call = Call::new("patch", resource, namespace);
        match self
            .api::<K>(namespace)
            .patch(name, &params, &Patch::Apply(object))
            .await
        {
            Ok(applied) => Ok(applied),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let conflicts = field_conflicts(&status);
                if conflicts.is_empty() {
                    Err(self.error(call, kube::Error::Api(status)))
                } else {
                    Err(Error::KubernetesConflict {
                        resource,
                        name: name.to_string(),
                        namespace: namespace.to_string(),
                        conflicts,
                    })
                }
            }
            Err(error) => Err(self.error(call, error)),
        }
    }

    /// Applies all of `manifests`: first as a server-side dry run (so that a conflict or a
    /// rejected field in any object changes nothing), then for real. An autoscaler Kiln
    /// applied before and `manifests` no longer has is deleted. Returns the applied
    /// Deployment.
    pub async fn apply_all(&self, manifests: &Manifests, force: bool) -> Result<Deployment, Error> {
        for dry_run in [true, false] {
            let options = ApplyOptions { force, dry_run };
            let deployment = self.apply_each(manifests, options).await?;
            if !dry_run {
                return Ok(deployment);
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn apply_each(
        &self,
        manifests: &Manifests,
        options: ApplyOptions,
    ) -> Result<Deployment, Error> {
        let namespace = manifests.namespace();
        let name = manifests.name();
        self.apply::<Service>("services", namespace, name, &manifests.service, options)
            .await?;
        self.apply::<PodDisruptionBudget>(
            "poddisruptionbudgets.policy",
            namespace,
            name,
            &manifests.disruption_budget,
            options,
        )
        .await?;
        let deployment = self
            .apply::<Deployment>(
                "deployments.apps",
                namespace,
                name,
                &manifests.deployment,
                options,
            )
            .await?;
        match &manifests.autoscaler {
            Some(autoscaler) => {
                self.apply::<HorizontalPodAutoscaler>(
                    "horizontalpodautoscalers.autoscaling",
                    namespace,
                    name,
                    autoscaler,
                    options,
                )
                .await?;
            }
            None if !options.dry_run => {
                self.delete_if_kilns::<HorizontalPodAutoscaler>(
                    "horizontalpodautoscalers.autoscaling",
                    namespace,
                    name,
                )
                .await?;
            }
            None => {}
        }
        Ok(deployment)
    }

    /// The Deployment `name`, if it exists.
    pub async fn deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Deployment>, Error> {
        self.api::<Deployment>(namespace)
            .get_opt(name)
            .await
            .map_err(|error| self.error(Call::new("get", "deployments.apps", namespace), error))
    }

    /// Kiln's Deployments in `namespace`.
    pub async fn deployments(&self, namespace: &str) -> Result<Vec<Deployment>, Error> {
        let params = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        self.api::<Deployment>(namespace)
            .list(&params)
            .await
            .map(|list| list.items)
            .map_err(|error| self.error(Call::new("list", "deployments.apps", namespace), error))
    }

    /// The pods in `namespace` that `selector` selects.
    pub async fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>, Error> {
        let params = ListParams::default().labels(selector);
        self.api::<Pod>(namespace)
            .list(&params)
            .await
            .map(|list| list.items)
            .map_err(|error| self.error(Call::new("list", "pods", namespace), error))
    }

    /// Deletes all four objects of an environment (those that exist and are Kiln's).
    pub async fn delete_all(&self, namespace: &str, name: &str) -> Result<(), Error> {
        self.delete_if_kilns::<HorizontalPodAutoscaler>(
            "horizontalpodautoscalers.autoscaling",
            namespace,
            name,
        )
        .await?;
        self.delete_if_kilns::<Deployment>("deployments.apps", namespace, name)
            .await?;
        self.delete_if_kilns::<PodDisruptionBudget>("poddisruptionbudgets.policy", namespace, name)
            .await?;
        self.delete_if_kilns::<Service>("services", namespace, name)
            .await
    }

    /// Deletes object `name` when it exists and carries Kiln's `managed-by` label.
    async fn delete_if_kilns<K>(
        &self,
        resource: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<(), Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + fmt::Debug
            + DeserializeOwned,
        <K as kube::Resource>::DynamicType: Default,
    {
        let api = self.api::<K>(namespace);
        let existing = api
            .get_opt(name)
            .await
            .map_err(|error| self.error(Call::new("get", resource, namespace), error))?;
        let kilns = existing.is_some_and(|object| {
            object
                .meta()
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_MANAGED_BY))
                .is_some_and(|by| by == MANAGED_BY)
        });
        if !kilns {
            return Ok(());
        }
        let params = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(self.error(Call::new("delete", resource, namespace), error)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ApplyOptions {
    force: bool,
    dry_run: bool,
}

/// The fields of a 409 from server-side apply, with their managers. The server gives one
/// cause per field: `{reason: FieldManagerConflict, field: .spec.replicas, message: conflict
/// with "kubectl-edit" using apps/v1}`.
fn field_conflicts(status: &kube::core::Status) -> Vec<FieldConflict> {
    let Some(details) = &status.details else {
        return Vec::new();
    };
    details
        .causes
        .iter()
        .filter(|cause| cause.reason == "FieldManagerConflict")
        .map(|cause| FieldConflict {
            field: cause.field.clone(),
            manager: cause
                .message
                .split('"')
                .nth(1)
                .unwrap_or(&cause.message)
                .to_string(),
        })
        .collect()
}

/// An error and its causes on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
