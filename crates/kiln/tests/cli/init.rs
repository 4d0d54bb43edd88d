//! `kiln init` on a repository Kiln has never seen, laid out as the design documents describe
//! (`models/<name>/src`, `data/raw`, `scripts/`, `tests/`): the scaffold runs green the first
//! time, for real, and its artifact serves.

use serde_json::json;

use crate::common::{TestProject, outcomes, stderr};
use crate::serve::{free_port, post, spawn_serve, terminate, wait_listening};

const PREPROCESS: &str = r#""""Cleans data/raw/customers.csv into data/processed/{train,test}.csv (run from the root)."""
import csv
import os


def clean(rows):
    """Drops rows with a missing value and types the numbers."""
    kept = []
    for row in rows:
        if any(value == "" for value in row.values()):
            continue
        kept.append({"tenure": float(row["tenure"]), "monthly": float(row["monthly"]), "churned": int(row["churned"])})
    return kept


def main():
    with open("data/raw/customers.csv", newline="") as file:
        rows = clean(csv.DictReader(file))
    os.makedirs("data/processed", exist_ok=True)
    cut = len(rows) * 4 // 5
    for name, part in (("train", rows[:cut]), ("test", rows[cut:])):
        with open(f"data/processed/{name}.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["tenure", "monthly", "churned"])
            writer.writeheader()
            writer.writerows(part)


if __name__ == "__main__":
    main()
"#;

const FEATURES: &str = r#"FEATURES = ["tenure", "monthly"]


def matrix(rows):
    return [[float(row[name]) for name in FEATURES] for row in rows]
"#;

const TRAIN: &str = r#"import csv
import json
import pickle
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features import matrix

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def read(path):
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return matrix(rows), [int(row["churned"]) for row in rows]


def main():
    x_train, y_train = read("data/processed/train.csv")
    x_test, y_test = read("data/processed/test.csv")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x_train, y_train)
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "churn.pkl", "wb") as file:
        pickle.dump(model, file)
    with open(ARTIFACTS / "metrics.json", "w") as file:
        json.dump({"accuracy": model.score(x_test, y_test)}, file)


if __name__ == "__main__":
    main()
"#;

const PREDICT: &str = r#"import os
import pickle

import numpy as np

from features import FEATURES


def load(model_dir):
    with open(os.path.join(model_dir, "churn.pkl"), "rb") as file:
        return pickle.load(file)


def predict(inputs, model):
    rows = np.column_stack([np.asarray(inputs[name], dtype=float).reshape(-1) for name in FEATURES])
    return {"churned": model.predict(rows)}
"#;

const TEST_PREPROCESS: &str = r#"from scripts.preprocess import clean


def test_rows_with_a_missing_value_are_dropped():
    rows = [{"tenure": "3", "monthly": "80", "churned": "1"}, {"tenure": "", "monthly": "20", "churned": "0"}]
    assert clean(rows) == [{"tenure": 3.0, "monthly": 80.0, "churned": 1}]
"#;

/// Customers whose churn follows from tenure and monthly charge, with a few missing values.
fn customers() -> String {
    let mut text = String::from("tenure,monthly,churned\n");
    let mut state: u64 = 7;
    for index in 0..240 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let tenure = (state >> 33) % 72;
        let monthly = 20 + (state >> 17) % 100;
        let churned = u8::from(tenure < 24 && monthly > 60);
        if index % 37 == 5 {
            text.push_str(&format!(",{monthly},{churned}\n"));
        } else {
            text.push_str(&format!("{tenure},{monthly},{churned}\n"));
        }
    }
    text
}

#[test]
fn init_on_the_design_layout_runs_green_and_serves() {
    let project = TestProject::empty();
    project.write("data/raw/customers.csv", &customers());
    project.write("scripts/preprocess.py", PREPROCESS);
    project.write("models/churn/src/features.py", FEATURES);
    project.write("models/churn/src/train.py", TRAIN);
    project.write("models/churn/src/predict.py", PREDICT);
    project.write(
        "models/churn/src/requirements.txt",
        "scikit-learn>=1.3\npytest\n",
    );
    project.write("tests/test_preprocess.py", TEST_PREPROCESS);

    let init = project.kiln(&["init"]);
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    let yaml = project.read("kiln.yaml");
    for expected in [
        "cmd: cd ../.. && python scripts/preprocess.py",
        "deps: [../../scripts/preprocess.py, ../../data/raw]",
        "outs: [../../data/processed]",
        "cmd: cd ../.. && python models/churn/src/train.py",
        "deps: [src/train.py, src/features.py, ../../data/processed]",
        "outs: [artifacts/churn.pkl]",
        "metrics: [artifacts/metrics.json]",
        "cmd: mkdir -p model && cp src/predict.py src/features.py artifacts/churn.pkl model/",
        "cmd: cd ../.. && python -B -m pytest -q -p no:cacheprovider tests",
        "artifact: model",
    ] {
        assert!(yaml.contains(expected), "missing `{expected}` in:\n{yaml}");
    }

    let run = project.kiln(&["run"]);
    assert_eq!(run.status.code(), Some(0), "{yaml}\n{}", stderr(&run));
    assert_eq!(
        outcomes(&run),
        ["package: ran", "preprocess: ran", "test: ran", "train: ran"]
    );
    for file in ["predict.py", "features.py", "churn.pkl"] {
        assert!(
            project.path("models/churn/model").join(file).is_file(),
            "{file}"
        );
    }
    // Nothing the stages leave behind (bytecode, caches) changes their deps.
    let again = project.kiln(&["run"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        outcomes(&again),
        [
            "package: cached",
            "preprocess: cached",
            "test: cached",
            "train: cached"
        ]
    );

    let port = free_port();
    let mut server = spawn_serve(project.root(), &["churn", "--port", &port.to_string()]);
    wait_listening(&mut server);
    let (status, body) = post(
        port,
        "/invocations",
        &json!({"dataframe_split": {"columns": ["tenure", "monthly"], "data": [[2.0, 110.0], [70.0, 25.0]]}}),
    );
    assert!(terminate(&mut server).success());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"], json!([1, 0]), "{body}");
}
