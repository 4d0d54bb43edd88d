//! Green means servable: after the gates, a model's artifact from this run is handed to the
//! caller's `ArtifactCheck`, and a failed check fails the run with its own kind.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kiln_pipeline::python_env::PythonEnvironment;
use kiln_pipeline::{
    Artifact, ArtifactCheck, Event, FailureKind, Observer, RunOptions, RunReport,
    ServabilityFailure, ServablePass, Workspace,
};
use kiln_registry::Status;
use kiln_spec::{Model, Project};

/// Stands in for the engine: "loads" `predict.py` from the artifact it is given and fails the
/// way a model would when the file says `raise`.
#[derive(Default)]
struct FakeCheck {
    /// The `predict.py` each call saw.
    seen: Mutex<Vec<String>>,
}

impl ArtifactCheck for FakeCheck {
    fn check(
        &self,
        _project: &Project,
        model: &Model,
        artifact: &Artifact,
        _environment: Option<&PythonEnvironment>,
    ) -> Result<ServablePass, ServabilityFailure> {
        let predict = artifact.path.join("predict.py");
        let text = std::fs::read_to_string(&predict).map_err(|e| ServabilityFailure {
            message: format!("cannot read `{}`: {e}", predict.display()),
            detail: None,
        })?;
        self.seen.lock().unwrap().push(text.clone());
        if text.contains("raise") {
            return Err(ServabilityFailure {
                message: "`predict.py` raised `ValueError: bad input`".into(),
                detail: Some("Traceback (most recent call last):\nValueError: bad input".into()),
            });
        }
        Ok(ServablePass::new(format!(
            "`{}` predicted 1 row",
            model.name
        )))
    }
}

/// Keeps the events about the servable check.
#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Observer for Events {
    fn on_event(&self, event: Event<'_>) {
        let line = match event {
            Event::ServableCheckStarted { model } => format!("started {model}"),
            Event::ServableCheckFinished { model, result } => {
                format!("finished {model} passed={}", result.passed)
            }
            _ => return,
        };
        self.0.lock().unwrap().push(line);
    }
}

const PROJECT: &str = "models:
  m:
    stages:
      train:
        cmd: \"mkdir -p model && cp source.py model/predict.py && echo '{\\\"accuracy\\\": 0.95}' > metrics.json\"
        deps: [source.py]
        outs: [model]
        metrics: [metrics.json]
    artifact: model
    gates: [\"accuracy >= 0.9\"]
";

fn project(dir: &Path, kiln_yaml: &str, source: &str) -> Project {
    std::fs::write(dir.join("kiln.yaml"), kiln_yaml).unwrap();
    std::fs::write(dir.join("source.py"), source).unwrap();
    kiln_spec::load(dir).unwrap()
}

fn run(project: &Project, check: &Arc<FakeCheck>, events: &Events) -> RunReport {
    let mut workspace = Workspace::open(&project.root).unwrap();
    let options = RunOptions {
        models: Vec::new(),
        overrides: Vec::new(),
        jobs: 2,
        force: false,
        cancel: Arc::new(AtomicBool::new(false)),
        artifact_check: Some(check.clone()),
    };
    kiln_pipeline::run(&mut workspace, project, &options, events).unwrap()
}

#[test]
fn a_servable_artifact_makes_the_run_green_and_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path(), PROJECT, "def predict(x): return x\n");
    let (check, events) = (Arc::new(FakeCheck::default()), Events::default());
    let report = run(&project, &check, &events);

    assert_eq!(report.failure, None);
    let model = &report.models[0];
    assert_eq!(model.status, Status::Succeeded);
    let servable = model.servable.as_ref().expect("the check ran");
    assert!(servable.passed);
    assert_eq!(servable.message, "`m` predicted 1 row");
    assert_eq!(
        *events.0.lock().unwrap(),
        vec!["started m", "finished m passed=true"]
    );
    assert!(dir.path().join(".kiln/serving/m/model/predict.py").exists());

    let workspace = Workspace::open(dir.path()).unwrap();
    let recorded = workspace.registry.run(model.run_id).unwrap();
    assert_eq!(recorded.servable.as_ref(), Some(servable));
    assert_eq!(recorded.run.failure, None);
}

#[test]
fn an_unservable_artifact_fails_the_run_and_keeps_the_last_green_one_served() {
    let dir = tempfile::tempdir().unwrap();
    let good = project(dir.path(), PROJECT, "def predict(x): return x\n");
    let check = Arc::new(FakeCheck::default());
    assert_eq!(run(&good, &check, &Events::default()).failure, None);
    let served = std::fs::read_link(dir.path().join(".kiln/serving/m")).unwrap();

    let bad = project(
        dir.path(),
        PROJECT,
        "def predict(x): raise ValueError('bad input')\n",
    );
    let events = Events::default();
    let report = run(&bad, &check, &events);

    assert_eq!(report.failure, Some(FailureKind::Unservable));
    let model = &report.models[0];
    assert_eq!(model.status, Status::Failed);
    assert_eq!(model.failure, Some(FailureKind::Unservable));
    // The check was given this run's artifact, not the last green run's.
    assert!(check.seen.lock().unwrap()[1].contains("raise ValueError"));
    let message = model.message.as_deref().unwrap();
    assert!(
        message.contains("could not be served") && message.contains("ValueError: bad input"),
        "{message}"
    );
    assert_eq!(
        *events.0.lock().unwrap(),
        vec!["started m", "finished m passed=false"]
    );
    // Nothing new is published: the server keeps the green model.
    assert_eq!(
        std::fs::read_link(dir.path().join(".kiln/serving/m")).unwrap(),
        served
    );

    let workspace = Workspace::open(dir.path()).unwrap();
    let recorded = workspace.registry.run(model.run_id).unwrap();
    assert_eq!(recorded.run.status, Status::Failed);
    assert_eq!(recorded.run.failure, Some(FailureKind::Unservable));
    assert_eq!(recorded.run.message.as_deref(), Some(message));
    let servable = recorded.servable.unwrap();
    assert!(!servable.passed);
    assert!(servable.detail.unwrap().starts_with("Traceback"));
    // The next run of the same inputs is judged again, not taken as green from the cache.
    let again = run(&bad, &check, &Events::default());
    assert_eq!(again.failure, Some(FailureKind::Unservable));
}

#[test]
fn the_check_runs_only_after_the_gates_pass() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(
        dir.path(),
        &PROJECT.replace("accuracy >= 0.9", "accuracy >= 0.99"),
        "def predict(x): return x\n",
    );
    let (check, events) = (Arc::new(FakeCheck::default()), Events::default());
    let report = run(&project, &check, &events);
    assert_eq!(report.failure, Some(FailureKind::Gate));
    assert!(report.models[0].servable.is_none());
    assert!(check.seen.lock().unwrap().is_empty());
    assert!(events.0.lock().unwrap().is_empty());
}

#[test]
fn an_artifact_missing_from_its_out_is_unservable() {
    let dir = tempfile::tempdir().unwrap();
    let project = project(
        dir.path(),
        &PROJECT.replace("artifact: model", "artifact: model/model.onnx"),
        "def predict(x): return x\n",
    );
    let check = Arc::new(FakeCheck::default());
    let report = run(&project, &check, &Events::default());
    assert_eq!(report.failure, Some(FailureKind::Unservable));
    let servable = report.models[0].servable.as_ref().unwrap();
    assert!(
        servable
            .message
            .contains("`model` of run 1 holds no `model/model.onnx`"),
        "{}",
        servable.message
    );
    assert!(check.seen.lock().unwrap().is_empty());
}
