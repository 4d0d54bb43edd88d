"""Fits a logistic regression on data/processed/train.csv and exports it as model.onnx.

The ONNX file is the artifact Kiln versions and serves: the input is `X`, a float32 matrix with the
four measurements (sepal_length, sepal_width, petal_length, petal_width) as columns, named in the
model's metadata (`kiln.feature_names`) so that clients may send named columns; the outputs are
`label` (the class index into CLASSES) and `probabilities` (one column per class).
"""

import csv
import os
from pathlib import Path

import numpy as np
import yaml
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

MODEL_DIR = Path(__file__).resolve().parents[1]


def load_params() -> dict:
    """Kiln passes the params, `--set` overrides included, in the file named by KILN_PARAMS;
    run by hand, the script reads params.yaml."""
    path = os.environ.get("KILN_PARAMS") or MODEL_DIR / "params.yaml"
    with open(path) as file:
        return yaml.safe_load(file) or {}


TRAIN = MODEL_DIR / "data/processed/train.csv"
MODEL = MODEL_DIR / "model.onnx"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# Class indices of the model's `label` output; evaluate.py uses the same order.
CLASSES = ["setosa", "versicolor", "virginica"]


def load(path: Path) -> tuple:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    features = np.array([[float(row[name]) for name in FEATURES] for row in rows], dtype=np.float32)
    labels = np.array([CLASSES.index(row["species"]) for row in rows], dtype=np.int64)
    return features, labels


def main() -> None:
    params = load_params()["train"]
    features, labels = load(TRAIN)
    model = LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]))
    model.fit(features, labels)
    onnx_model = to_onnx(
        model,
        features[:1],
        target_opset={"": 17, "ai.onnx.ml": 3},
        # Plain tensors out (no ZipMap), which every ONNX runtime reads directly.
        options={id(model): {"zipmap": False}},
    )
    names = onnx_model.metadata_props.add()
    names.key, names.value = "kiln.feature_names", ",".join(FEATURES)
    MODEL.write_bytes(onnx_model.SerializeToString())
    print(f"trained on {len(labels)} rows (C={params['C']}), wrote {MODEL.name}")


if __name__ == "__main__":
    main()
