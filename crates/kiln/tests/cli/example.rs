//! The bundled example, for real: scikit-learn in a Kiln-managed virtualenv, ONNX export,
//! data checks and gates.

use std::path::Path;

use crate::common::{kiln_command, outcomes, stderr};

#[test]
fn the_iris_example_trains_checks_and_gates() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/iris");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&source, dir.path());

    let first = kiln_command(dir.path())
        .args(["run", "--junit", "junit.xml"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(
        outcomes(&first),
        ["evaluate: ran", "ingest: ran", "prepare: ran", "train: ran"]
    );
    assert!(dir.path().join("models/iris/model.onnx").is_file());
    let text = stderr(&first);
    assert!(text.contains("accuracy >= 0.9  pass"), "{text}");
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");

    // A param override that ruins the model is caught by the gates, and only train and
    // evaluate run again.
    let worse = kiln_command(dir.path())
        .args(["run", "--set", "train.C=0.0001"])
        .output()
        .unwrap();
    assert_eq!(worse.status.code(), Some(4), "{}", stderr(&worse));
    assert_eq!(
        outcomes(&worse),
        [
            "evaluate: ran",
            "ingest: cached",
            "prepare: cached",
            "train: ran"
        ]
    );

    let again = kiln_command(dir.path()).args(["run"]).output().unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        outcomes(&again),
        [
            "evaluate: restored",
            "ingest: cached",
            "prepare: cached",
            "train: restored"
        ]
    );
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if [".kiln", "data", "model.onnx", "metrics.json", "__pycache__"]
            .iter()
            .any(|skip| name == *skip)
        {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
