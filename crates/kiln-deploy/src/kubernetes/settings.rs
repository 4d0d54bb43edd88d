//! What a Kubernetes environment is configured with (`deploy.<env>: {target: kubernetes, …}` in
//! kiln.yaml maps onto [`KubernetesSettings`]), and which cluster Kiln talks to ([`Cluster`]).
//! Every field has a default, so an environment that names only its target gets a small,
//! safe Deployment in the `default` namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How one environment of one model runs in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// Where its objects live; it must exist. Default `default`.
    pub namespace: String,
    /// Pods when there is no `autoscale`. Default 1.
    pub replicas: i32,
    /// A HorizontalPodAutoscaler instead of a fixed replica count. Default none.
    pub autoscale: Option<Autoscale>,
    pub resources: Resources,
    /// The Secret (`kubernetes.io/dockerconfigjson`) the kubelet pulls the image with.
    pub pull_secret: Option<String>,
    /// `progressDeadlineSeconds`: a rollout that makes no progress for this long has failed.
    /// Default 120 s.
    pub progress_deadline: Duration,
    /// The longest a rollout may take in all, progress or not. Default 10 minutes.
    pub rollout_timeout: Duration,
    /// `nodeSelector` of the pods (e.g. a node pool). Default none.
    pub node_selector: BTreeMap<String, String>,
}

/// `autoscale:`: an autoscaling/v2 HorizontalPodAutoscaler on CPU utilisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscale {
    pub min: i32,
    pub max: i32,
    /// Target average CPU utilisation, in percent of the CPU request.
    pub cpu: i32,
}

/// `resources:`: what each pod asks for (requests) and may use at most (limits), as
/// Kubernetes quantities (`100m`, `256Mi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// Default `100m`.
    pub cpu: String,
    /// Default `256Mi`.
    pub memory: String,
    /// Default none: a CPU limit throttles a model's latency spikes for no gain.
    pub limit_cpu: Option<String>,
    /// Default none, which means the memory request: a pod never uses more than it reserved.
    pub limit_memory: Option<String>,
}

impl Default for KubernetesSettings {
    fn default() -> KubernetesSettings {
        KubernetesSettings {
            namespace: "default".into(),
            replicas: 1,
            autoscale: None,
            resources: Resources::default(),
            pull_secret: None,
            progress_deadline: Duration::from_secs(120),
            rollout_timeout: Duration::from_secs(600),
            node_selector: BTreeMap::new(),
        }
    }
}

impl Default for Resources {
    fn default() -> Resources {
        Resources {
            cpu: "100m".into(),
            memory: "256Mi".into(),
            limit_cpu: None,
            limit_memory: None,
        }
    }
}

/// The cluster and credentials: a kubeconfig file as `kubectl` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// `None`: `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig other than its current one.
    pub context: Option<String>,
}
