//! The Kubernetes target against a real v1.28 control plane (kube-apiserver with its
//! controllers and scheduler; the test plays the kubelet): server-side apply and its conflicts,
//! rollouts that succeed, crash-loop or cannot pull their image, rollback to the previous
//! version, the controller's promotion and rollback, RBAC and connection errors, and the
//! dry-run YAML checked by `kubernetes-validate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kiln_deploy::kubernetes::{
    Autoscale, Cluster, KubernetesSettings, KubernetesTarget, LABEL_MODEL_VERSION, Manifests,
    Workload, manifests, render_yaml,
};
use kiln_deploy::{Change, Controller, Error, Health, Release, ServedModel, Target};
use kiln_pipeline::{AliasChange, Artifact, Event, Observer, RunOptions, Workspace};
use kiln_registry::{AliasCommand, MoveBy};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use kiln_deploy::kubernetes::testing::{Fate, TestCluster, kubeconfig, sibling_kubeconfig};

const IMAGE_V1: &str = "registry.example/kiln/iris@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE_V2: &str = "registry.example/kiln/iris@sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn image_of(version: i64) -> String {
    if version == 1 {
        IMAGE_V1.to_string()
    } else {
        IMAGE_V2.to_string()
    }
}

/// A release of `version` of `iris` (the Kubernetes target reads only names and version).
fn release(environment: &str, version: i64) -> Release {
    let artifact = Artifact {
        model: "iris".into(),
        run: 1,
        digest: kiln_store::Digest([0; 32]),
        path: PathBuf::from("/nonexistent/model"),
    };
    Release {
        environment: environment.into(),
        model: ServedModel {
            name: "iris".into(),
            version,
            artifact,
            path: PathBuf::from("/nonexistent/model"),
            version_file: PathBuf::from("/nonexistent/VERSION"),
            python: None,
            onnx_runtime: None,
        },
        example: None,
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
    }
}

fn target(
    cluster: &Cluster,
    environments: BTreeMap<(String, String), KubernetesSettings>,
) -> KubernetesTarget {
    KubernetesTarget::new(
        cluster,
        environments,
        Box::new(|release: &Release| Ok(image_of(release.model.version))),
    )
    .unwrap()
}

fn version_label(pod: &Pod) -> Option<String> {
    pod.metadata
        .labels
        .as_ref()?
        .get(LABEL_MODEL_VERSION)
        .cloned()
}

fn managers(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|f| f.operation.as_deref() == Some("Apply"))
        .filter_map(|f| f.manager.clone())
        .collect()
}

#[test]
fn apply_creates_the_four_objects_as_kiln_reapplies_as_a_no_op_and_reports_conflicts() {
    let test = TestCluster::start("apply");
    let settings = KubernetesSettings {
        autoscale: Some(Autoscale {
            min: 2,
            max: 4,
            cpu: 70,
        }),
        pull_secret: Some("registry-credentials".into()),
        ..test.settings()
    };
    let workload = Workload {
        model: "iris".into(),
        environment: "production".into(),
        version: 3,
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        image: IMAGE_V1.into(),
    };
    let objects = manifests(&workload, &settings).unwrap();
    let target = target(&test.cluster(), BTreeMap::new());
    target.apply(&objects, false).unwrap();

    let ns = &test.namespace;
    let (deployment, service, autoscaler, budget) = test.block_on(async {
        (
            Api::<Deployment>::namespaced(test.client.clone(), ns)
                .get("iris-production")
                .await
                .unwrap(),
            Api::<Service>::namespaced(test.client.clone(), ns)
                .get("iris-production")
                .await
                .unwrap(),
            Api::<HorizontalPodAutoscaler>::namespaced(test.client.clone(), ns)
                .get("iris-production")
                .await
                .unwrap(),
            Api::<PodDisruptionBudget>::namespaced(test.client.clone(), ns)
                .get("iris-production")
                .await
                .unwrap(),
        )
    });
    for (kind, meta) in [
        ("Deployment", &deployment.metadata),
        ("Service", &service.metadata),
        ("HorizontalPodAutoscaler", &autoscaler.metadata),
        ("PodDisruptionBudget", &budget.metadata),
    ] {
        assert_eq!(managers(meta), vec!["kiln".to_string()], "{kind}");
        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "kiln", "{kind}");
        assert_eq!(labels["kiln.dev/model"], "iris", "{kind}");
        assert_eq!(labels["kiln.dev/environment"], "production", "{kind}");
    }
    let labels = deployment.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/version"], "v3");
    assert_eq!(labels["kiln.dev/version"], "3");
    assert_eq!(
        labels["kiln.dev/git-sha"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    let spec = deployment.spec.clone().unwrap();
    // The autoscaler owns the replica count: Kiln does not set it.
    assert!(
        deployment
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|f| f.manager.as_deref() == Some("kiln"))
            .all(|f| !serde_json::to_string(&f.fields_v1)
                .unwrap()
                .contains("f:replicas"))
    );
    assert_eq!(spec.progress_deadline_seconds, Some(10));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        pod.image_pull_secrets.unwrap()[0].name,
        "registry-credentials"
    );
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(IMAGE_V1));
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        security.capabilities.unwrap().drop.unwrap(),
        vec!["ALL".to_string()]
    );
    let readiness = container.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/v2/health/ready"));
    let liveness = container.liveness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(liveness.path.as_deref(), Some("/v2/health/live"));
    let requests = container.resources.clone().unwrap().requests.unwrap();
    assert_eq!(requests["cpu"].0, "100m");
    assert_eq!(requests["memory"].0, "256Mi");
    assert_eq!(autoscaler.spec.unwrap().max_replicas, 4);

    // The same objects again: Kiln writes nothing. (Controllers keep writing the objects'
    // status, so the resource versions move; an apply that changed anything would renew the
    // time of Kiln's `managedFields` entry, hence the second's wait.)
    let kiln_entries = |test: &TestCluster| {
        test.block_on(async {
            let ns = &test.namespace;
            let name = "iris-production";
            let metas = [
                Api::<Deployment>::namespaced(test.client.clone(), ns)
                    .get(name)
                    .await
                    .unwrap()
                    .metadata,
                Api::<Service>::namespaced(test.client.clone(), ns)
                    .get(name)
                    .await
                    .unwrap()
                    .metadata,
                Api::<HorizontalPodAutoscaler>::namespaced(test.client.clone(), ns)
                    .get(name)
                    .await
                    .unwrap()
                    .metadata,
                Api::<PodDisruptionBudget>::namespaced(test.client.clone(), ns)
                    .get(name)
                    .await
                    .unwrap()
                    .metadata,
            ];
            metas
                .iter()
                .map(|meta| {
                    let entry = meta
                        .managed_fields
                        .iter()
                        .flatten()
                        .find(|f| f.manager.as_deref() == Some("kiln"))
                        .cloned();
                    (
                        meta.generation,
                        meta.labels.clone(),
                        meta.annotations.clone(),
                        entry,
                    )
                })
                .collect::<Vec<_>>()
        })
    };
    let before = kiln_entries(&test);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    target.apply(&objects, false).unwrap();
    assert!(
        kiln_entries(&test) == before,
        "re-applying the same objects changed them"
    );

    // Someone else takes a field Kiln set (`kubectl edit` would): Kiln reports it and stops.
    test.block_on(async {
        let patch = json!({"spec": {"revisionHistoryLimit": 2}});
        let params = PatchParams {
            field_manager: Some("ops-edit".into()),
            ..PatchParams::default()
        };
        Api::<Deployment>::namespaced(test.client.clone(), &test.namespace)
            .patch("iris-production", &params, &Patch::Merge(&patch))
            .await
            .unwrap();
    });
    let error = target.apply(&objects, false).unwrap_err();
    let Error::KubernetesConflict {
        resource,
        name,
        conflicts,
        ..
    } = &error
    else {
        panic!("not a conflict: {error}");
    };
    assert_eq!(
        (*resource, name.as_str()),
        ("deployments.apps", "iris-production")
    );
    assert_eq!(conflicts.len(), 1, "{error}");
    assert_eq!(conflicts[0].field, ".spec.revisionHistoryLimit");
    assert_eq!(conflicts[0].manager, "ops-edit");
    assert!(
        error
            .to_string()
            .contains("`.spec.revisionHistoryLimit` (owned by `ops-edit`)"),
        "{error}"
    );
    assert!(error.hint().unwrap().contains("--force-conflicts"));

    // Forced, Kiln takes the field back.
    target.apply(&objects, true).unwrap();
    let deployment = test.deployment("iris-production").unwrap();
    assert_eq!(deployment.spec.unwrap().revision_history_limit, Some(5));
}

#[test]
fn a_rollout_succeeds_once_available_and_a_crash_looping_version_is_rolled_back() {
    let mut test = TestCluster::start("rollout");
    // v1 starts and becomes ready; v2 crash-loops.
    test.kubelet(|pod| match version_label(pod).as_deref() {
        Some("1") => Fate::Ready,
        _ => Fate::CrashLoop,
    });
    let settings = KubernetesSettings {
        replicas: 2,
        ..test.settings()
    };
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let target = {
        let lines = Arc::clone(&lines);
        target(
            &test.cluster(),
            BTreeMap::from([(("iris".into(), "production".into()), settings)]),
        )
        .on_progress(move |progress| {
            lines
                .lock()
                .unwrap()
                .push(format!("v{}: {}", progress.version, progress.line));
        })
    };

    let status = target.roll_out(&release("production", 1), None).unwrap();
    assert_eq!(
        (status.version, status.health, status.target.as_str()),
        (1, Health::Ready, "kubernetes")
    );
    assert_eq!(
        status.url,
        format!("http://iris-production.{}.svc", test.namespace)
    );
    let replicas = status.replicas.unwrap();
    assert_eq!((replicas.ready, replicas.desired), (2, 2));
    let said = lines.lock().unwrap().clone();
    assert!(
        said.iter().any(|l| l.contains("/2 updated")),
        "no progress lines: {said:?}"
    );
    assert!(said.last().unwrap().contains("rolled out"), "{said:?}");

    let error = target
        .roll_out(&release("production", 2), None)
        .unwrap_err();
    assert!(
        error.message.contains("progress deadline"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("CrashLoopBackOff"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("last exit code 1"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("v1 was re-applied and is available"),
        "{}",
        error.message
    );
    assert!(error.log_tail.unwrap().contains("CrashLoopBackOff"));

    // v1's Deployment is back, and available.
    let deployment = test.deployment("iris-production").unwrap();
    let labels = deployment.metadata.labels.clone().unwrap();
    assert_eq!(labels["kiln.dev/version"], "1");
    let spec = deployment.spec.clone().unwrap();
    assert_eq!(
        spec.template.spec.unwrap().containers[0].image.as_deref(),
        Some(IMAGE_V1)
    );
    let available = deployment.status.unwrap().conditions.unwrap();
    assert!(
        available
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    );
    let status = target.status();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!((status[0].version, status[0].health), (1, Health::Ready));
}

#[test]
fn an_image_that_cannot_be_pulled_fails_a_first_rollout_and_leaves_nothing() {
    let mut test = TestCluster::start("pull");
    test.kubelet(|_| Fate::ImagePull);
    let target = target(
        &test.cluster(),
        BTreeMap::from([(("iris".into(), "staging".into()), test.settings())]),
    );
    let error = target.roll_out(&release("staging", 1), None).unwrap_err();
    assert!(
        error.message.contains("ImagePullBackOff"),
        "{}",
        error.message
    );
    assert!(error.message.contains(IMAGE_V1), "{}", error.message);
    assert!(
        error.message.contains("nothing served before"),
        "{}",
        error.message
    );
    let left = test.deployment("iris-staging");
    assert!(
        left.is_none(),
        "the failed first rollout left its Deployment"
    );
    assert!(target.status().is_empty());
}

#[test]
fn a_failed_rollout_never_deletes_a_deployment_kiln_cannot_restore() {
    // v1 applied as `kiln deploy --dry-run -o yaml`'s output would be (no annotations of the
    // versions Kiln applied); v2 then crash-loops.
    let mut test = TestCluster::start("gitops");
    test.kubelet(|pod| match version_label(pod).as_deref() {
        Some("2") => Fate::CrashLoop,
        _ => Fate::Ready,
    });
    let target = target(
        &test.cluster(),
        BTreeMap::from([(("iris".into(), "production".into()), test.settings())]),
    );
    let v1 = target.manifests(&release("production", 1)).unwrap();
    target.apply(&v1, false).unwrap();
    let error = target
        .roll_out(&release("production", 2), None)
        .unwrap_err();
    assert!(
        error.message.contains("holds no version Kiln applied"),
        "{}",
        error.message
    );
    let left = test.deployment("iris-production");
    assert!(left.is_some(), "the Deployment that served was deleted");
}

struct Quiet;

impl Observer for Quiet {
    fn on_event(&self, _event: Event<'_>) {}
}

/// Writes the model's `predict.py` (its content makes each version) and runs the pipeline:
/// the new version.
fn register(root: &Path, offset: i64) -> i64 {
    std::fs::write(
        root.join("predict.py"),
        format!("def predict(inputs):\n    return {{\"y\": inputs[\"x\"] + {offset}}}\n"),
    )
    .unwrap();
    let project = kiln_spec::load(root).unwrap();
    let mut workspace = Workspace::open(root).unwrap();
    let options = RunOptions {
        models: Vec::new(),
        overrides: Vec::new(),
        jobs: 1,
        force: false,
        cancel: Arc::new(AtomicBool::new(false)),
        artifact_check: None,
    };
    let report = kiln_pipeline::run(&mut workspace, &project, &options, &Quiet).unwrap();
    report.models[0]
        .version
        .expect("no version registered")
        .version()
}

#[test]
fn the_controller_promotes_and_rolls_back_on_kubernetes() {
    let mut test = TestCluster::start("controller");
    test.kubelet(|pod| match version_label(pod).as_deref() {
        Some("1") => Fate::Ready,
        _ => Fate::CrashLoop,
    });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("kiln.yaml"),
        "models:\n  iris:\n    stages:\n      package: {cmd: 'mkdir -p model && cp predict.py model/predict.py', deps: [predict.py], outs: [model]}\n    artifact: model\n    image: {repository: registry.example.com/kiln/iris}\n    deploy:\n      staging: {target: kubernetes}\n      production: {target: kubernetes, approve: manual}\n",
    )
    .unwrap();
    let v1 = register(root, 1);
    let project = kiln_spec::load(root).unwrap();
    let mut workspace = Workspace::open(root).unwrap();
    let environments = BTreeMap::from([
        (("iris".into(), "staging".into()), test.settings()),
        (("iris".into(), "production".into()), test.settings()),
    ]);
    let mut controller =
        Controller::new(Box::new(target(&test.cluster(), environments)), &project, 0);
    let mut changes = Vec::new();
    controller
        .deploy_new_version(&mut workspace, &project, "iris", v1, None, &mut |c| {
            changes.push(c)
        })
        .unwrap();
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Deployed { status, .. } if status.environment == "staging" && status.version == v1)),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::AwaitingApproval { environment, .. } if environment == "production")),
        "{changes:?}"
    );

    // `kiln promote iris --to production`.
    kiln_pipeline::move_alias(
        &mut workspace,
        Ok(&project),
        "iris",
        "production",
        AliasChange::To {
            version: v1,
            by: MoveBy {
                command: AliasCommand::Promote,
                run_id: None,
                reason: None,
            },
        },
    )
    .unwrap();
    changes.clear();
    controller
        .reconcile(&mut workspace, &project, &mut |c| changes.push(c))
        .unwrap();
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Deployed { status, .. } if status.environment == "production" && status.version == v1)),
        "{changes:?}"
    );
    let serving: Vec<_> = controller
        .status()
        .iter()
        .map(|s| (s.environment.clone(), s.version, s.health))
        .collect();
    assert!(serving.contains(&("production".into(), v1, Health::Ready)));
    assert!(serving.contains(&("staging".into(), v1, Health::Ready)));

    // v2 crash-loops in staging: rolled back, the alias back on v1, production untouched.
    drop(workspace);
    let v2 = register(root, 2);
    let mut workspace = Workspace::open(root).unwrap();
    changes.clear();
    controller
        .deploy_new_version(&mut workspace, &project, "iris", v2, None, &mut |c| {
            changes.push(c)
        })
        .unwrap();
    let failed = changes.iter().find_map(|c| match c {
        Change::RolloutFailed {
            environment,
            version,
            error,
            rolled_back_to,
            ..
        } => Some((
            environment.clone(),
            *version,
            error.message.clone(),
            *rolled_back_to,
        )),
        _ => None,
    });
    let (environment, version, message, rolled_back_to) =
        failed.unwrap_or_else(|| panic!("no failed rollout: {changes:?}"));
    assert_eq!(
        (environment.as_str(), version, rolled_back_to),
        ("staging", v2, Some(v1))
    );
    assert!(message.contains("CrashLoopBackOff"), "{message}");
    assert_eq!(
        workspace.registry.alias_version("iris", "staging").unwrap(),
        Some(v1)
    );
    assert_eq!(
        workspace
            .registry
            .alias_version("iris", "production")
            .unwrap(),
        Some(v1)
    );
    let history = workspace
        .registry
        .alias_history("iris", Some("staging"))
        .unwrap();
    let commands: Vec<_> = history.iter().map(|m| (m.command, m.to_version)).collect();
    assert_eq!(
        commands,
        vec![
            (AliasCommand::Deploy, v1),
            (AliasCommand::Deploy, v2),
            (AliasCommand::Rollback, v1)
        ]
    );
    assert!(
        history[2]
            .reason
            .as_deref()
            .unwrap()
            .contains("failed its rollout")
    );
    let serving: Vec<_> = controller
        .status()
        .iter()
        .map(|s| (s.environment.clone(), s.version, s.health))
        .collect();
    assert!(
        serving.contains(&("staging".into(), v1, Health::Ready)),
        "{serving:?}"
    );
    // Nothing more to do: the controller does not retry v2 by itself.
    changes.clear();
    controller
        .reconcile(&mut workspace, &project, &mut |c| changes.push(c))
        .unwrap();
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn rbac_denials_and_an_unreachable_server_name_the_verb_resource_and_namespace() {
    let settings = KubernetesSettings {
        namespace: "kiln-rbac".into(),
        ..KubernetesSettings::default()
    };
    let environments = BTreeMap::from([(("iris".into(), "production".into()), settings)]);
    let unprivileged = Cluster {
        kubeconfig: Some(sibling_kubeconfig("user-token.kubeconfig")),
        context: None,
    };
    let denied = target(&unprivileged, environments.clone());
    let error = denied.try_status().unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::KubernetesForbidden { .. }), "{text}");
    assert!(
        text.contains("forbids `list` on `deployments.apps` in namespace `kiln-rbac`"),
        "{text}"
    );
    assert!(text.contains("kiln-user"), "{text}");
    assert!(error.hint().unwrap().contains("Role"), "{error:?}");
    let failed = denied
        .roll_out(&release("production", 1), None)
        .unwrap_err();
    assert!(
        failed
            .message
            .contains("forbids `get` on `deployments.apps` in namespace `kiln-rbac`"),
        "{}",
        failed.message
    );

    // A namespace that does not exist (the admin may do anything): said so, with a hint.
    let admin = target(
        &Cluster {
            kubeconfig: Some(kubeconfig()),
            context: None,
        },
        environments.clone(),
    );
    let failed = admin.roll_out(&release("production", 1), None).unwrap_err();
    assert!(
        failed.message.contains(
            "refused `patch` on `services` in namespace `kiln-rbac` (404 NotFound): namespaces \"kiln-rbac\" not found"
        ),
        "{}",
        failed.message
    );
    assert!(
        failed
            .message
            .contains("kubectl create namespace kiln-rbac"),
        "{}",
        failed.message
    );

    // A server that is not there: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = std::fs::read_to_string(kubeconfig()).unwrap();
    let moved = kubeconfig.replace(
        "https://127.0.0.1:6443",
        &format!("https://127.0.0.1:{port}"),
    );
    assert_ne!(moved, kubeconfig, "the kubeconfig names another server");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, moved).unwrap();
    let nowhere = Cluster {
        kubeconfig: Some(path),
        context: None,
    };
    let nowhere = target(&nowhere, environments);
    let error = nowhere.try_status().unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, Error::KubernetesUnreachable { .. }),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "cannot reach the Kubernetes API server at `https://127.0.0.1:{port}` (to `list` `deployments.apps` in namespace `kiln-rbac`)"
        )),
        "{text}"
    );
    // `status` of a target that never reached its server: nothing, not a panic.
    assert!(nowhere.status().is_empty());
}

#[test]
fn the_dry_run_yaml_passes_kubernetes_validate_for_kubernetes_1_28() {
    let python = std::env::var_os("KILN_TEST_PYTHON").expect(
        "KILN_TEST_PYTHON is not set: the test virtualenv's python (`bash .ci/setup` makes it)",
    );
    let workload = Workload {
        model: "iris".into(),
        environment: "production".into(),
        version: 3,
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        image: IMAGE_V1.into(),
    };
    let plain = KubernetesSettings::default();
    let full = KubernetesSettings {
        namespace: "ml".into(),
        replicas: 3,
        autoscale: Some(Autoscale {
            min: 2,
            max: 10,
            cpu: 75,
        }),
        pull_secret: Some("registry-credentials".into()),
        node_selector: BTreeMap::from([("pool".to_string(), "cpu".to_string())]),
        resources: kiln_deploy::kubernetes::Resources {
            cpu: "500m".into(),
            memory: "1Gi".into(),
            limit_cpu: Some("2".into()),
            limit_memory: Some("2Gi".into()),
        },
        ..KubernetesSettings::default()
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, settings, documents) in [("plain", plain, 3), ("full", full, 4)] {
        let objects: Manifests = manifests(&workload, &settings).unwrap();
        let yaml = render_yaml(&objects).unwrap();
        assert_eq!(
            yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: ")),
            documents,
            "{yaml}"
        );
        assert!(
            yaml.contains("apiVersion: autoscaling/v2") == (documents == 4),
            "{yaml}"
        );
        // Quantities stay strings, as the API wants them.
        assert!(!yaml.contains("cpu: 2\n"), "{yaml}");
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &yaml).unwrap();
        let output = Command::new(&python)
            .args(["-m", "kubernetes_validate", "--strict", "-k", "1.28.0"])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{name}: {said}\n{yaml}");
        assert_eq!(said.matches("INFO").count(), documents, "{said}");
    }
}
