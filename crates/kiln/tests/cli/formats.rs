//! `dvc.yaml` projects run as they are, and `kiln init` scaffolds a `kiln.yaml`.

use crate::common::{TestProject, outcomes, stderr};

#[test]
fn a_dvc_project_runs_and_caches() {
    let project = TestProject::empty();
    project.write(
        "dvc.yaml",
        r#"stages:
  prepare:
    cmd: mkdir -p data/prepared && cp data/raw.csv data/prepared/train.csv
    deps: [data/raw.csv]
    params: [prepare.split]
    outs: [data/prepared]
  train:
    foreach: [small, large]
    do:
      cmd: echo ${item} > model-${item}.txt && cat data/prepared/train.csv >> model-${item}.txt
      deps: [data/prepared]
      params: [train]
      outs:
        - model-${item}.txt
  evaluate:
    cmd: "echo '{\"auc\": 0.9}' > scores.json"
    deps: [model-small.txt, model-large.txt]
    metrics:
      - scores.json:
          cache: false
"#,
    );
    project.write(
        "params.yaml",
        "prepare:\n  split: 0.2\ntrain:\n  n_est: 50\n",
    );
    project.write("data/raw.csv", "a,b\n1,2\n");
    let first = project.kiln(&["run"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(
        outcomes(&first),
        [
            "evaluate: ran",
            "prepare: ran",
            "train@large: ran",
            "train@small: ran"
        ]
    );
    assert_eq!(project.read("model-large.txt"), "large\na,b\n1,2\n");
    let second = project.kiln(&["run"]);
    assert_eq!(
        outcomes(&second),
        [
            "evaluate: cached",
            "prepare: cached",
            "train@large: cached",
            "train@small: cached"
        ]
    );
    let check = project.kiln(&["check"]);
    assert!(
        stderr(&check).contains("`dvc.yaml` is valid"),
        "{}",
        stderr(&check)
    );
}

#[test]
fn dvc_yaml_mistakes_point_into_the_file() {
    let project = TestProject::empty();
    project.write(
        "dvc.yaml",
        "stages:\n  train:\n    cmd: python train.py\n    dep: [train.py]\n",
    );
    let output = project.kiln(&["check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--> dvc.yaml:4:5"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_scaffolds_a_monorepo_and_refuses_to_overwrite() {
    let project = TestProject::empty();
    for model in ["iris", "churn"] {
        project.write(&format!("models/{model}/src/train.py"), "");
        project.write(
            &format!("models/{model}/src/requirements.txt"),
            "scikit-learn\n",
        );
    }
    project.write("models/iris/src/prepare.py", "");
    project.write("data/raw/iris.csv", "a\n1\n");
    let output = project.kiln(&["init"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let yaml = project.read("kiln.yaml");
    assert!(
        yaml.contains("  iris:") && yaml.contains("  churn:"),
        "{yaml}"
    );
    assert!(
        yaml.lines().any(|l| l.trim_start().starts_with('#')),
        "the scaffold explains itself in comments"
    );
    let check = project.kiln(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));

    let again = project.kiln(&["init"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(project.kiln(&["init", "--force"]).status.code(), Some(0));
}
