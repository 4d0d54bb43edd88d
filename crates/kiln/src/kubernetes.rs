//! Kubernetes environments from the command line: each environment's settings (kiln.yaml's
//! `deploy.<env>` with `target: kubernetes`), the cluster (`$KUBECONFIG`, as `kubectl` reads
//! it), and the images the cluster pulls: built into the project's image layout and pushed to
//! the model's `image.repository` when a rollout needs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_deploy::kubernetes::{
    Autoscale, Cluster, ImageResolver, KubernetesSettings, Resources, RolloutProgress,
};
use kiln_deploy::{KubernetesTarget, Release};
use kiln_image::PushOptions;
use kiln_pipeline::Workspace;
use kiln_spec::{Project, TargetKind};

use crate::error::Result;
use crate::image_push_cmd::Tags;
use crate::printer::errln;

/// The longest a rollout may take in all, as a multiple of its progress deadline: a rollout
/// that keeps progressing slowly (many replicas, a slow image pull) is given time.
const TIMEOUT_PER_DEADLINE: u32 = 5;

/// The settings kiln.yaml gives a Kubernetes environment, as the target takes them.
pub fn settings(spec: &kiln_spec::deploy::Kubernetes) -> KubernetesSettings {
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let deadline = Duration::from_secs(spec.rollout_timeout_secs);
    KubernetesSettings {
        namespace: spec.namespace.clone(),
        replicas: count(spec.replicas),
        autoscale: spec.autoscale.map(|a| Autoscale {
            min: count(a.min),
            max: count(a.max),
            cpu: count(a.cpu_percent),
        }),
        resources: Resources {
            cpu: spec.resources.cpu.clone(),
            memory: spec.resources.memory.clone(),
            limit_cpu: spec.resources.cpu_limit.clone(),
            limit_memory: spec.resources.memory_limit.clone(),
        },
        pull_secret: spec.pull_secret.clone(),
        progress_deadline: deadline,
        rollout_timeout: deadline * TIMEOUT_PER_DEADLINE,
        ..KubernetesSettings::default()
    }
}

/// Whether any environment of the project runs on Kubernetes.
pub fn in_use(project: &Project) -> bool {
    project
        .models
        .iter()
        .flat_map(|m| &m.deploy.environments)
        .any(|e| e.target == TargetKind::Kubernetes)
}

/// A Kubernetes target for the project's Kubernetes environments. `push`: images are pushed
/// to the models' `image.repository` (else only built, for `--dry-run`, whose manifests name
/// the digest the push will give).
pub fn target(project: &Project, push: bool) -> Result<KubernetesTarget> {
    let mut environments = BTreeMap::new();
    let mut repositories = BTreeMap::new();
    for model in &project.models {
        for environment in &model.deploy.environments {
            if let Some(spec) = &environment.kubernetes {
                environments.insert(
                    (model.name.clone(), environment.name.clone()),
                    settings(spec),
                );
            }
        }
        if let Some(repository) = &model.image_repository {
            repositories.insert(model.name.clone(), repository.clone());
        }
    }
    let images = resolver(project.root.clone(), repositories, push);
    let target = KubernetesTarget::new(&Cluster::default(), environments, images)?;
    Ok(target.on_progress(|progress: &RolloutProgress<'_>| {
        errln!(
            "  `{}@{}` v{}: {}",
            progress.model,
            progress.environment,
            progress.version,
            progress.line
        )
    }))
}

/// Gives each release the image the cluster pulls: built (or found built) in the project's
/// layout, pushed to the model's repository, recorded on the version.
fn resolver(root: PathBuf, repositories: BTreeMap<String, String>, push: bool) -> ImageResolver {
    Box::new(move |release: &Release| {
        let model = release.model_name();
        let repository = repositories.get(model).ok_or_else(|| {
            format!(
                "model `{model}` has no `image.repository` in kiln.yaml: name the registry repository the cluster pulls its images from"
            )
        })?;
        image_for(&root, repository, release, push).map_err(|error| error.to_string())
    })
}

fn image_for(root: &Path, repository: &str, release: &Release, push: bool) -> Result<String> {
    let mut progress = |line: &str| errln!("  {line}");
    let built = crate::image_cmd::build_served(root, &release.model, &mut progress)?;
    if !push {
        return Ok(format!("{repository}@{}", built.manifest_digest));
    }
    let mut workspace = Workspace::open(root)?;
    let version = workspace
        .registry
        .model_version(release.model_name(), release.model.version)?;
    let pushed = crate::image_push_cmd::push_and_record(
        &mut workspace,
        &version,
        &built.layout,
        repository,
        Tags::VersionOnly,
        &PushOptions::default(),
        &mut progress,
    )?;
    Ok(format!("{}@{}", pushed.repository, pushed.digest))
}
