"""Scores model.onnx on data/processed/test.csv and writes metrics.json for Kiln's gates.

It runs the exported ONNX file rather than the scikit-learn object, so the numbers describe exactly
the artifact that will be served.
"""

import csv
import json
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from sklearn.metrics import accuracy_score, f1_score

MODEL_DIR = Path(__file__).resolve().parents[1]
TEST = MODEL_DIR / "data/processed/test.csv"
MODEL = MODEL_DIR / "model.onnx"
METRICS = MODEL_DIR / "metrics.json"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]  # the order train.py uses


def main() -> None:
    with TEST.open(newline="") as file:
        rows = list(csv.DictReader(file))
    features = np.array([[float(row[name]) for name in FEATURES] for row in rows], dtype=np.float32)
    truth = np.array([CLASSES.index(row["species"]) for row in rows], dtype=np.int64)

    model = onnx.load(MODEL)
    session = ReferenceEvaluator(model)
    predicted = session.run(["label"], {model.graph.input[0].name: features})[0]

    metrics = {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "f1": round(float(f1_score(truth, predicted, average="macro")), 4),
    }
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{len(rows)} test rows: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
