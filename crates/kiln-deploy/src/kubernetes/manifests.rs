//! The objects one environment of one model is made of in a cluster: a Deployment, a Service, a
//! HorizontalPodAutoscaler (autoscaling/v2, when `autoscale` is set) and a PodDisruptionBudget
//! (policy/v1), all named `<model>-<environment>` and labelled as Kiln's. Only fields that
//! Kubernetes v1.28 knows are set: server-side apply rejects unknown ones, and the rendered YAML
//! (`kiln deploy --dry-run -o yaml`) must pass `kubernetes-validate -k 1.28` for GitOps users.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
    LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::settings::KubernetesSettings;
use crate::Error;

/// The port the serving container listens on (the image's entrypoint serves there).
pub const CONTAINER_PORT: i32 = 8080;
/// The port of the Service, in the cluster.
pub const SERVICE_PORT: i32 = 80;
/// The pods' user and group: any non-root id works with the image; a fixed one lets
/// `runAsNonRoot` be checked whatever the image's `USER` says.
const RUN_AS: i64 = 65532;

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_MODEL: &str = "kiln.dev/model";
pub const LABEL_ENVIRONMENT: &str = "kiln.dev/environment";
pub const LABEL_MODEL_VERSION: &str = "kiln.dev/version";
pub const LABEL_GIT_SHA: &str = "kiln.dev/git-sha";
/// On the Deployment: the JSON of the objects applied for the version it runs, so that the
/// next rollout can put them back if it fails.
pub const ANNOTATION_APPLIED: &str = "kiln.dev/applied";
/// On the Deployment, during and after a rollout: the objects of the version that served
/// before it (re-applied when the rollout fails, also by a later `kiln` process).
pub const ANNOTATION_PREVIOUS: &str = "kiln.dev/previous";
/// `app.kubernetes.io/managed-by` of every object Kiln applies.
pub const MANAGED_BY: &str = "kiln";

/// What is deployed: one version of one model, in one environment, from one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub model: String,
    pub environment: String,
    pub version: i64,
    /// The git commit the version was trained from.
    pub commit: Option<String>,
    /// The image, by digest: `registry/repo@sha256:…`.
    pub image: String,
}

/// The objects of one environment, as Kiln applies them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifests {
    pub deployment: Deployment,
    pub service: Service,
    /// `None` without `autoscale`: the Deployment's `replicas` holds.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    pub disruption_budget: PodDisruptionBudget,
}

impl Manifests {
    /// The objects' name (all four share it): `<model>-<environment>`.
    pub fn name(&self) -> &str {
        self.deployment.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.deployment
            .metadata
            .namespace
            .as_deref()
            .unwrap_or_default()
    }

    /// The model version the Deployment runs, from its labels.
    pub fn version(&self) -> Option<i64> {
        label(&self.deployment.metadata, LABEL_MODEL_VERSION)?
            .parse()
            .ok()
    }

    /// The image of the serving container.
    pub fn image(&self) -> Option<&str> {
        self.deployment
            .spec
            .as_ref()?
            .template
            .spec
            .as_ref()?
            .containers
            .first()?
            .image
            .as_deref()
    }
}

pub(crate) fn label<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The name of an environment's objects: `<model>-<environment>`, lowercase, `_` and `.` as
/// `-`. It must be a DNS-1035 label (a Service's name is one).
pub fn object_name(model: &str, environment: &str) -> Result<String, Error> {
    let name: String = format!("{model}-{environment}")
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(name)
    } else {
        Err(Error::KubernetesName {
            model: model.to_string(),
            environment: environment.to_string(),
            name,
        })
    }
}

/// The four objects of `workload` with `settings`.
pub fn manifests(workload: &Workload, settings: &KubernetesSettings) -> Result<Manifests, Error> {
    check_settings(workload, settings)?;
    let name = object_name(&workload.model, &workload.environment)?;
    let namespace = settings.namespace.clone();
    let selector: BTreeMap<String, String> = [
        (LABEL_NAME.to_string(), label_value(&workload.model)),
        (LABEL_INSTANCE.to_string(), name.clone()),
    ]
    .into();
    let mut labels = selector.clone();
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels.insert(LABEL_MODEL.into(), label_value(&workload.model));
    labels.insert(LABEL_ENVIRONMENT.into(), label_value(&workload.environment));
    // The environment's labels: the same on every version (the Service and PDB carry them).
    let environment_labels = labels.clone();
    labels.insert(LABEL_VERSION.into(), format!("v{}", workload.version));
    labels.insert(LABEL_MODEL_VERSION.into(), workload.version.to_string());
    if let Some(commit) = &workload.commit {
        labels.insert(LABEL_GIT_SHA.into(), label_value(commit));
    }
    let metadata = |labels: &BTreeMap<String, String>| ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(labels.clone()),
        ..ObjectMeta::default()
    };

    let deployment = Deployment {
        metadata: metadata(&labels),
        spec: Some(DeploymentSpec {
            // With an autoscaler the replica count is the autoscaler's: applying one would undo
            // its scaling on every rollout.
            replicas: settings.autoscale.is_none().then_some(settings.replicas),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            progress_deadline_seconds: Some(seconds(settings.progress_deadline)),
            revision_history_limit: Some(5),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // A new pod must be ready before an old one goes: the environment never serves
                // with fewer pods than it had.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(workload, settings)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };

    let service = Service {
        metadata: metadata(&environment_labels),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    };

    let autoscaler = settings.autoscale.map(|autoscale| HorizontalPodAutoscaler {
        metadata: metadata(&environment_labels),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.clone(),
            },
            min_replicas: Some(autoscale.min),
            max_replicas: autoscale.max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(autoscale.cpu),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        status: None,
    });

    let disruption_budget = PodDisruptionBudget {
        metadata: metadata(&environment_labels),
        spec: Some(PodDisruptionBudgetSpec {
            // At most one pod evicted at a time (node drains, upgrades); `minAvailable` would
            // block every drain of a one-replica environment.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    };

    Ok(Manifests {
        deployment,
        service,
        autoscaler,
        disruption_budget,
    })
}

fn pod_spec(workload: &Workload, settings: &KubernetesSettings) -> PodSpec {
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let resources = &settings.resources;
    let mut requests = BTreeMap::new();
    requests.insert("cpu".to_string(), Quantity(resources.cpu.clone()));
    requests.insert("memory".to_string(), Quantity(resources.memory.clone()));
    let mut limits = BTreeMap::new();
    limits.insert(
        "memory".to_string(),
        Quantity(
            resources
                .limit_memory
                .clone()
                .unwrap_or_else(|| resources.memory.clone()),
        ),
    );
    if let Some(cpu) = &resources.limit_cpu {
        limits.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(30),
        image_pull_secrets: settings.pull_secret.as_ref().map(|secret| {
            vec![LocalObjectReference {
                name: secret.clone(),
            }]
        }),
        node_selector: (!settings.node_selector.is_empty()).then(|| settings.node_selector.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![Container {
            name: "model".into(),
            image: Some(workload.image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: CONTAINER_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]),
            env: Some(vec![
                env("KILN_MODEL", workload.model.clone()),
                env("KILN_MODEL_VERSION", workload.version.to_string()),
                env("KILN_ENVIRONMENT", workload.environment.clone()),
            ]),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                limits: Some(limits),
                ..ResourceRequirements::default()
            }),
            // Loading a model may take a while: liveness starts once it has answered once.
            startup_probe: Some(probe("/v2/health/live", 2, 60)),
            readiness_probe: Some(probe("/v2/health/ready", 5, 3)),
            liveness_probe: Some(probe("/v2/health/live", 10, 3)),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Capabilities::default()
                }),
                ..SecurityContext::default()
            }),
            // The root filesystem is read-only: scratch space for the runtime.
            volume_mounts: Some(vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        }],
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending with an
/// alphanumeric character. Model and environment names follow the registry's alias rules,
/// which fit; anything else is replaced.
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn seconds(duration: std::time::Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn check_settings(workload: &Workload, settings: &KubernetesSettings) -> Result<(), Error> {
    let invalid = |field: &str, problem: String| Error::KubernetesSettings {
        model: workload.model.clone(),
        environment: workload.environment.clone(),
        field: field.to_string(),
        problem,
    };
    if !workload.image.contains("@sha256:") {
        return Err(invalid(
            "image",
            format!(
                "`{}` names no digest: Kiln deploys images by digest (`registry/repo@sha256:…`)",
                workload.image
            ),
        ));
    }
    if !is_dns_label(&settings.namespace) {
        return Err(invalid(
            "namespace",
            format!(
                "`{}` is not a namespace name (lowercase letters, digits and `-`, at most 63)",
                settings.namespace
            ),
        ));
    }
    if settings.replicas < 0 {
        return Err(invalid(
            "replicas",
            format!("`{}` is negative", settings.replicas),
        ));
    }
    if let Some(autoscale) = settings.autoscale {
        if autoscale.min < 1 || autoscale.max < autoscale.min {
            return Err(invalid(
                "autoscale",
                format!(
                    "`min: {}`, `max: {}`: need 1 <= min <= max",
                    autoscale.min, autoscale.max
                ),
            ));
        }
        if autoscale.cpu < 1 {
            return Err(invalid(
                "autoscale.cpu",
                format!(
                    "`{}` is not a utilisation percentage above 0",
                    autoscale.cpu
                ),
            ));
        }
    }
    let resources = &settings.resources;
    for (field, value) in [
        ("resources.cpu", Some(&resources.cpu)),
        ("resources.memory", Some(&resources.memory)),
        ("resources.limits.cpu", resources.limit_cpu.as_ref()),
        ("resources.limits.memory", resources.limit_memory.as_ref()),
    ] {
        if let Some(value) = value
            && !is_quantity(value)
        {
            return Err(invalid(
                field,
                format!(
                    "`{value}` is not a Kubernetes quantity (e.g. `500m`, `1`, `256Mi`, `2Gi`)"
                ),
            ));
        }
    }
    if let Some(secret) = &settings.pull_secret
        && !is_dns_subdomain(secret)
    {
        return Err(invalid(
            "pull_secret",
            format!("`{secret}` is not a Secret name"),
        ));
    }
    Ok(())
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// A resource quantity as Kubernetes parses it: a decimal number and an optional suffix
/// (`m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki` … `Ei`, or an exponent `e3`).
fn is_quantity(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exponent| {
        let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit())
    });
    number_ok && suffix_ok
}

/// The objects as a multi-document YAML stream, in the order to apply them (for
/// `kiln deploy --dry-run -o yaml` and GitOps repositories).
pub fn render_yaml(manifests: &Manifests) -> Result<String, Error> {
    let mut documents: Vec<serde_json::Value> = Vec::new();
    let mut push = |object: serde_json::Result<serde_json::Value>| -> Result<(), Error> {
        documents.push(object.map_err(|error| Error::KubernetesRender(error.to_string()))?);
        Ok(())
    };
    push(serde_json::to_value(&manifests.deployment))?;
    push(serde_json::to_value(&manifests.service))?;
    if let Some(autoscaler) = &manifests.autoscaler {
        push(serde_json::to_value(autoscaler))?;
    }
    push(serde_json::to_value(&manifests.disruption_budget))?;
    // Plain scalars, as kubectl writes them: no `>-` folding of a long image reference, which
    // would make a GitOps diff of one digest span lines.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    let body = serde_saphyr::to_string_multiple_with_options(&documents, options)
        .map_err(|error| Error::KubernetesRender(error.to_string()))?;
    Ok(format!("---\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_told_from_other_text() {
        for good in ["100m", "1", "0.5", "256Mi", "2Gi", "1e3", "+1", ".5"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "abc", "100 m", "1.2.3", "12mb", "Mi", "1e", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn object_names_follow_dns_1035() {
        assert_eq!(
            object_name("iris", "production").unwrap(),
            "iris-production"
        );
        assert_eq!(
            object_name("My_Model", "prod.eu").unwrap(),
            "my-model-prod-eu"
        );
        assert!(object_name("1model", "prod").is_err());
        assert!(object_name(&"m".repeat(60), "production").is_err());
    }
}
