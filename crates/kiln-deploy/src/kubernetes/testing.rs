//! The Kubernetes tests' harness: a namespace and a Node of the test's own on the real control
//! plane (`KILN_TEST_KUBECONFIG`), and a stand-in kubelet that plays the node's part through the
//! API — it renews the Node's Lease, marks pods bound to the Node Running and Ready, crash
//! looping or failing to pull their image (as the test decides per pod), and confirms pod
//! deletions. Everything the test made is deleted when the guard drops, also when it fails.
//! Built with the `testing` feature, for kiln-deploy's tests and the binary's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use crate::kubernetes::{Cluster, KubernetesSettings};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Config};
use serde_json::json;

/// What the stand-in kubelet does with a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Ready,
    CrashLoop,
    ImagePull,
}

pub type Decide = dyn Fn(&Pod) -> Fate + Send + Sync;

/// The admin kubeconfig of the test cluster.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os("KILN_TEST_KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "KILN_TEST_KUBECONFIG is not set: the Kubernetes tests need the test control plane. \
             Start it with `bash .ci/k8s/build && bash .ci/k8s/up` and export \
             KILN_TEST_KUBECONFIG=~/.cache/kiln-k8s/run/admin.kubeconfig (`.ci/run` does both)"
        ),
    }
}

/// A kubeconfig beside the admin one (`user-token.kubeconfig`: a user without grants).
pub fn sibling_kubeconfig(name: &str) -> PathBuf {
    kubeconfig().with_file_name(name)
}

/// The test's namespace and Node, deleted on drop.
pub struct TestCluster {
    pub runtime: tokio::runtime::Runtime,
    pub client: Client,
    pub namespace: String,
    pub node: String,
    stop: Arc<AtomicBool>,
    kubelet: Option<tokio::task::JoinHandle<()>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Now as the API's MicroTime: RFC 3339 with microseconds.
fn now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!(
        "{}.{:06}Z",
        seconds_text(now.as_secs()),
        now.subsec_micros()
    )
}

/// Now as the API's Time: RFC 3339 in seconds.
fn now_seconds() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}Z", seconds_text(now.as_secs()))
}

fn seconds_text(seconds: u64) -> String {
    let timestamp = k8s_openapi::jiff::Timestamp::from_second(seconds as i64).unwrap();
    timestamp.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

impl TestCluster {
    /// A fresh namespace `kiln-<what>-…` and a Ready Node for its pods.
    pub fn start(what: &str) -> TestCluster {
        let path = kubeconfig();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = runtime.block_on(async {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
            let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap();
            Client::try_from(config).unwrap()
        });
        let unique = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let namespace = format!("kiln-{what}-{unique}");
        let node = format!("kiln-node-{what}-{unique}");
        let cluster = TestCluster {
            runtime,
            client,
            namespace,
            node,
            stop: Arc::new(AtomicBool::new(false)),
            kubelet: None,
        };
        if let Err(error) = cluster.runtime.block_on(cluster.create()) {
            panic!(
                "cannot set up the test's namespace and Node on the cluster of \
                 KILN_TEST_KUBECONFIG=`{}`: {error}. Is the test control plane up? \
                 (`bash .ci/k8s/up`)",
                path.display()
            );
        }
        cluster
    }

    async fn create(&self) -> Result<(), kube::Error> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace: Namespace = serde_json::from_value(
            json!({"metadata": {"name": self.namespace, "labels": {"kiln-test": "true"}}}),
        )
        .unwrap();
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({"metadata": {
            "name": self.node,
            "labels": {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kiln-test-node": self.node},
        }}))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": self.node},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": now()},
        }))
        .unwrap();
        leases.create(&PostParams::default(), &lease).await?;
        let time = now_seconds();
        let capacity = json!({"cpu": "8", "memory": "32Gi", "pods": "110"});
        let status = json!({"status": {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "set by the test", "lastHeartbeatTime": time,
                            "lastTransitionTime": time}],
        }});
        nodes
            .patch_status(&self.node, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Settings whose pods land on this test's Node only, in its namespace.
    pub fn settings(&self) -> KubernetesSettings {
        KubernetesSettings {
            namespace: self.namespace.clone(),
            node_selector: BTreeMap::from([("kiln-test-node".to_string(), self.node.clone())]),
            progress_deadline: Duration::from_secs(10),
            rollout_timeout: Duration::from_secs(90),
            ..KubernetesSettings::default()
        }
    }

    pub fn cluster(&self) -> Cluster {
        Cluster {
            kubeconfig: Some(kubeconfig()),
            context: None,
        }
    }

    /// Starts the stand-in kubelet: each new pod bound to this Node gets the fate `decide`
    /// gives it.
    pub fn kubelet(&mut self, decide: impl Fn(&Pod) -> Fate + Send + Sync + 'static) {
        let decide: Arc<Decide> = Arc::new(decide);
        let client = self.client.clone();
        let namespace = self.namespace.clone();
        let node = self.node.clone();
        let stop = Arc::clone(&self.stop);
        self.kubelet = Some(self.runtime.spawn(async move {
            kubelet(client, namespace, node, decide, stop).await;
        }));
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The Deployment `name` of the test's namespace, if there is one.
    pub fn deployment(&self, name: &str) -> Option<Deployment> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        self.block_on(deployments.get_opt(name))
            .unwrap_or_else(|error| panic!("cannot read Deployment `{name}`: {error}"))
    }
}

async fn kubelet(
    client: Client,
    namespace: String,
    node: String,
    decide: Arc<Decide>,
    stop: Arc<AtomicBool>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut next_ip = 1u32;
    let mut renewed = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if renewed.elapsed() > Duration::from_secs(8) {
            renewed = std::time::Instant::now();
            let patch = json!({"spec": {"renewTime": now()}});
            let _ = leases
                .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
        let Ok(list) = pods.list(&ListParams::default()).await else {
            continue;
        };
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node);
            if !bound {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                // Confirm the deletion, as a kubelet does once the containers stopped.
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                let _ = pods.delete(&name, &params).await;
                continue;
            }
            if done.contains(&uid) {
                continue;
            }
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let time = now_seconds();
            let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 1);
            next_ip += 1;
            let status = match decide(&pod) {
                Fate::Ready => json!({"status": {
                    "phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
                    "startTime": time,
                    "conditions": [
                        {"type": "Initialized", "status": "True", "lastTransitionTime": time},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": time},
                        {"type": "Ready", "status": "True", "lastTransitionTime": time}],
                    "containerStatuses": [{"name": "model", "image": image, "imageID": "",
                        "ready": true, "started": true, "restartCount": 0,
                        "state": {"running": {"startedAt": time}}}],
                }}),
                Fate::CrashLoop => json!({"status": {
                    "phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}],
                    "startTime": time,
                    "conditions": [
                        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": time},
                        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": time}],
                    "containerStatuses": [{"name": "model", "image": image, "imageID": "",
                        "ready": false, "started": false, "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff",
                            "message": "back-off 40s restarting failed container=model"}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                            "startedAt": time, "finishedAt": time}}}],
                }}),
                Fate::ImagePull => json!({"status": {
                    "phase": "Pending", "hostIP": "127.0.0.1", "startTime": time,
                    "conditions": [
                        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": time},
                        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": time}],
                    "containerStatuses": [{"name": "model", "image": image, "imageID": "",
                        "ready": false, "started": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "ImagePullBackOff",
                            "message": format!("Back-off pulling image \"{image}\"")}}}],
                }}),
            };
            if pods
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                .await
                .is_ok()
            {
                done.insert(uid);
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.abort();
        }
        let client = self.client.clone();
        let namespace = self.namespace.clone();
        let node = self.node.clone();
        self.runtime.block_on(async move {
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let _ = namespaces
                .delete(&namespace, &DeleteParams::default())
                .await;
            let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            // Confirm every pod's deletion until the namespace is gone (bounded).
            for _ in 0..120 {
                let _ = pods.delete_collection(&now, &ListParams::default()).await;
                match namespaces.get_opt(&namespace).await {
                    Ok(None) | Err(_) => break,
                    Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            let nodes: Api<Node> = Api::all(client.clone());
            let _ = nodes.delete(&node, &DeleteParams::default()).await;
            let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
            let _ = leases.delete(&node, &DeleteParams::default()).await;
        });
    }
}
