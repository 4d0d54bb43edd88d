//! A stage's outs as the run records them, restores them, and reports Kiln's own failures.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kiln_pipeline::run::Failure;
use kiln_pipeline::{
    Error, Event, FailureKind, Observer, Outcome, RunOptions, RunReport, Workspace,
};
use kiln_registry::{OutKind, StageOutcome};

struct Quiet;

impl Observer for Quiet {
    fn on_event(&self, _event: Event<'_>) {}
}

fn run(root: &Path) -> RunReport {
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
    kiln_pipeline::run(&mut workspace, &project, &options, &Quiet).unwrap()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o111 != 0
}

#[test]
fn an_executable_out_is_recorded_and_restored_executable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kiln.yaml"),
        "models:\n  m:\n    stages:\n      build: {cmd: 'echo echo hi > tool.sh && chmod +x tool.sh', outs: [tool.sh]}\n",
    )
    .unwrap();
    let first = run(dir.path());
    let out = &first.models[0].stages[0].outs[0];
    assert_eq!(
        (out.path.as_str(), out.kind, out.executable),
        ("tool.sh", OutKind::File, true)
    );
    let workspace = Workspace::open(dir.path()).unwrap();
    let recorded = workspace.registry.run(first.models[0].run_id).unwrap();
    assert_eq!(recorded.stages[0].outs, vec![out.clone()]);
    drop(workspace);

    let tool = dir.path().join("tool.sh");
    std::fs::remove_file(&tool).unwrap();
    let second = run(dir.path());
    assert_eq!(second.models[0].stages[0].outcome, Outcome::Restored);
    assert!(
        is_executable(&tool),
        "a restored executable out lost its execute bit"
    );
}

#[test]
fn kiln_failing_at_its_part_of_a_stage_is_a_typed_internal_failure() {
    let dir = tempfile::tempdir().unwrap();
    // The old out cannot be removed, nor its folder created: `blocker` is a file.
    std::fs::write(dir.path().join("blocker"), "").unwrap();
    std::fs::write(
        dir.path().join("kiln.yaml"),
        "models:\n  m:\n    stages:\n      a: {cmd: 'true', outs: [blocker/out.txt]}\n",
    )
    .unwrap();
    let report = run(dir.path());
    assert_eq!(report.failure, Some(FailureKind::Stage));
    let Outcome::Failed(Failure::Internal(error)) = &report.models[0].stages[0].outcome else {
        panic!("{:?}", report.models[0].stages[0].outcome);
    };
    assert!(
        matches!(&**error, Error::Io { action: "remove", path, .. } if path.ends_with("blocker/out.txt")),
        "{error:?}"
    );
    let described = Failure::Internal(error.clone()).describe();
    assert!(
        described.starts_with("could not be run by Kiln: cannot remove `"),
        "{described}"
    );
    let workspace = Workspace::open(dir.path()).unwrap();
    let recorded = workspace.registry.run(report.models[0].run_id).unwrap();
    assert_eq!(recorded.stages[0].outcome, StageOutcome::Failed);
    assert!(recorded.run.message.unwrap().contains("cannot remove"));
}
