"""Test fixtures for models that take tables: an MLflow model folder saved by the real `mlflow` package, and
`predict.py` models declaring `INPUT = "dataframe"` and `INPUT = "records"`. Written into argv[1]."""
import json
import os
import sys

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

import joblib  # noqa: E402
import mlflow.sklearn  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

out = sys.argv[1]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
X, y = load_iris(return_X_y=True, as_frame=True)
X.columns = COLUMNS
model = LogisticRegression(max_iter=500).fit(X, y)
mlflow.sklearn.save_model(model, os.path.join(out, "mlflow_lr"), signature=infer_signature(X, model.predict(X)))

frame = os.path.join(out, "py_dataframe")
os.makedirs(frame)
joblib.dump(model, os.path.join(frame, "model.joblib"))
with open(os.path.join(frame, "predict.py"), "w") as f:
    f.write('''import os

import joblib
import pandas as pd

INPUT = "dataframe"
SIGNATURE = {
    "inputs": [{"name": name, "datatype": "FP64", "shape": [-1]}
               for name in ["sepal_length", "sepal_width", "petal_length", "petal_width"]],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "confidence", "datatype": "FP64", "shape": [-1]}],
}


def load(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict(frame, model):
    assert isinstance(frame, pd.DataFrame), type(frame)
    if (frame["sepal_length"] == 13).any():
        raise ValueError("unlucky input")
    return pd.DataFrame({"label": model.predict(frame), "confidence": model.predict_proba(frame).max(axis=1)})
''')

records = os.path.join(out, "py_records")
os.makedirs(records)
with open(os.path.join(records, "predict.py"), "w") as f:
    f.write('''INPUT = "records"
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "outputs": [{"name": "total", "datatype": "FP64", "shape": [-1]}],
    "feature_names": ["a", "b"],
}


def predict(rows):
    assert isinstance(rows, list) and isinstance(rows[0], dict), rows
    return [row["a"] + 10 * row["b"] for row in rows]
''')

sample = X.iloc[[0, 60, 120]]
expected = {
    "columns": COLUMNS,
    "rows": sample.values.tolist(),
    "labels": model.predict(sample).tolist(),
    "confidence": model.predict_proba(sample).max(axis=1).tolist(),
}
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f)
