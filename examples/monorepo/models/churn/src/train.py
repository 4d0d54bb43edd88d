"""Fits the churn classifier on data/processed/churn/train.csv, exports it as model.onnx, and scores
the exported file on test.csv into metrics.json for Kiln's gates.

The ONNX file is what Kiln versions and serves: input `X`, a float32 matrix whose columns are
FEATURES (named in the model's metadata, `kiln.feature_names`, so that clients may send named
columns); outputs `label` (1: the customer is likely to leave) and `probabilities` (stay, leave).
The scores come from ONNX Runtime running that file, the engine `kiln serve` uses, so they
describe exactly what will be served.
"""

import csv
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime
import yaml
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODEL_DIR = Path(__file__).resolve().parents[1]
DATA = MODEL_DIR / "../../data/processed/churn"
MODEL = MODEL_DIR / "model.onnx"
METRICS = MODEL_DIR / "metrics.json"
FEATURES = ["tenure_months", "monthly_fee", "plan_tier", "autopay", "tickets_per_month", "logins_30d"]
LABEL = "churned"


def load_params() -> dict:
    """Kiln passes the params, `--set` overrides included, in the file named by KILN_PARAMS;
    run by hand, the script reads params.yaml."""
    path = os.environ.get("KILN_PARAMS") or MODEL_DIR / "params.yaml"
    with open(path) as file:
        return yaml.safe_load(file)


def load(path: Path) -> tuple:
    """The feature matrix (float32, columns in FEATURES order) and the labels of a processed CSV."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    features = np.array([[float(row[name]) for name in FEATURES] for row in rows], dtype=np.float32)
    labels = np.array([int(row[LABEL]) for row in rows], dtype=np.int64)
    return features, labels


def fit(features: np.ndarray, labels: np.ndarray, c: float) -> Pipeline:
    # Scaled, since the columns range from 0-1 (autopay) to tens of months; churners are a
    # quarter of the customers, so both classes weigh alike.
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(C=c, class_weight="balanced", max_iter=1000)),
        ]
    )
    return model.fit(features, labels)


def export(model: Pipeline, sample: np.ndarray) -> bytes:
    """The fitted pipeline as an ONNX graph, with plain tensor outputs and the feature names."""
    graph = to_onnx(
        model,
        sample[:1],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(model.named_steps["classify"]): {"zipmap": False}},
    )
    names = graph.metadata_props.add()
    names.key, names.value = "kiln.feature_names", ",".join(FEATURES)
    return graph.SerializeToString()


def score(onnx_model: bytes, features: np.ndarray, labels: np.ndarray) -> dict:
    session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    predicted, probabilities = session.run(["label", "probabilities"], {"X": features})
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 4),
        "roc_auc": round(float(roc_auc_score(labels, probabilities[:, 1])), 4),
        # Of the customers who left, the share the model flagged: the ones a retention offer reaches.
        "recall": round(float(recall_score(labels, predicted)), 4),
        "precision": round(float(precision_score(labels, predicted)), 4),
    }


def main() -> None:
    params = load_params()["train"]
    features, labels = load(DATA / "train.csv")
    model = fit(features, labels, float(params["C"]))
    onnx_model = export(model, features)
    MODEL.write_bytes(onnx_model)
    metrics = score(onnx_model, *load(DATA / "test.csv"))
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    scores = ", ".join(f"{name} {value}" for name, value in metrics.items())
    print(f"trained on {len(labels)} customers (C={params['C']}): {scores}")


if __name__ == "__main__":
    main()
