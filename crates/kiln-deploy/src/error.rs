//! The one error type of kiln-deploy.

use std::path::PathBuf;

/// Something that stopped Kiln from preparing or checking a model for serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pipeline(#[from] kiln_pipeline::Error),
    #[error(transparent)]
    PythonEnv(#[from] kiln_pipeline::python_env::PythonEnvError),
    #[error(transparent)]
    Serve(#[from] kiln_serve::Error),
    #[error("cannot read the example input `{}`", path.display())]
    Example {
        path: PathBuf,
        #[source]
        source: ExampleError,
    },
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another `kiln up` supervises this project{}", pid.map_or(String::new(), |pid| format!(" (pid {pid})")))]
    SupervisorRunning { pid: Option<u32> },
    #[error("cannot install ONNX Runtime into Kiln's cache (`{}`)", path.display())]
    ManagedRuntime {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{model}` in `{environment}` would be named `{name}` in Kubernetes, which is not a valid object name"
    )]
    KubernetesName {
        model: String,
        environment: String,
        name: String,
    },
    #[error("the Kubernetes settings of `{model}` in `{environment}`: `{field}`: {problem}")]
    KubernetesSettings {
        model: String,
        environment: String,
        field: String,
        problem: String,
    },
    #[error("cannot render the Kubernetes manifests as YAML: {0}")]
    KubernetesRender(String),
    #[error("cannot load the Kubernetes configuration{}: {message}", path.as_ref().map_or(String::new(), |p| format!(" `{}`", p.display())))]
    KubernetesConfig {
        path: Option<PathBuf>,
        message: String,
    },
    #[error(
        "the Kubernetes API server at `{server}` forbids `{verb}` on `{resource}` in namespace `{namespace}`: {message}"
    )]
    KubernetesForbidden {
        server: String,
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        message: String,
    },
    #[error(
        "cannot reach the Kubernetes API server at `{server}` (to `{verb}` `{resource}` in namespace `{namespace}`): {message}"
    )]
    KubernetesUnreachable {
        server: String,
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        message: String,
    },
    #[error("server-side apply of {resource} `{name}` in namespace `{namespace}` conflicts with other field managers: {}", conflicts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "))]
    KubernetesConflict {
        resource: &'static str,
        name: String,
        namespace: String,
        conflicts: Vec<crate::kubernetes::FieldConflict>,
    },
    #[error(
        "the Kubernetes API server refused `{verb}` on `{resource}` in namespace `{namespace}` ({code} {reason}): {message}"
    )]
    KubernetesApi {
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        code: u16,
        reason: String,
        message: String,
    },
}

/// Why an example input file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Shape(String),
}

impl Error {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Pipeline(error) => error.hint(),
            Error::PythonEnv(error) => error.hint(),
            Error::Serve(error) => error.hint(),
            Error::Example { .. } => Some(
                "`example:` names a CSV file with a header row, or a JSON list of records".into(),
            ),
            Error::Registry(error) => error.hint(),
            Error::Io { .. } => None,
            Error::SupervisorRunning { .. } => Some(
                "stop it (Ctrl-C where it runs), or use `kiln deploy`, `kiln promote` and `kiln ps`, which work with the running one".into(),
            ),
            Error::ManagedRuntime { .. } => Some(
                "install the `onnxruntime` package into the model's Python environment, or pass `--ort-lib`"
                    .into(),
            ),
            Error::KubernetesName { .. } => Some(
                "Kubernetes names are lowercase letters, digits and `-`, start with a letter and have at most 63 characters: rename the model or the environment".into(),
            ),
            Error::KubernetesSettings { .. } | Error::KubernetesRender(_) => None,
            Error::KubernetesConfig { .. } => Some(
                "point `KUBECONFIG` at a kubeconfig file (`kubectl config view` shows the one in use)".into(),
            ),
            Error::KubernetesForbidden {
                verb,
                resource,
                namespace,
                ..
            } => Some(format!(
                "ask a cluster administrator for a Role in `{namespace}` that allows `{verb}` on `{resource}` (Kiln needs get, list, watch, create, patch and delete on deployments.apps, services, horizontalpodautoscalers.autoscaling and poddisruptionbudgets.policy, and get and list on pods)"
            )),
            Error::KubernetesUnreachable { .. } => Some(
                "is the cluster up, and is this its kubeconfig? `kubectl cluster-info` with the same kubeconfig tells".into(),
            ),
            Error::KubernetesConflict { .. } => Some(
                "another tool or person changed these fields; `kiln deploy --force-conflicts` takes them over for Kiln, or remove them from the other tool's manifests".into(),
            ),
            Error::KubernetesApi { code: 404, namespace, .. } => Some(format!(
                "does the namespace `{namespace}` exist? (`kubectl create namespace {namespace}`)"
            )),
            Error::KubernetesApi { .. } => None,
        }
    }
}
