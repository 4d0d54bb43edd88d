"""Test fixtures: trains small scikit-learn models and exports them with skl2onnx into argv[1]."""
import json
import os
import sys

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def save(model, name, n_features, options=None, feature_names=None, target_opset=None):
    onx = convert_sklearn(model, initial_types=[("float_input", FloatTensorType([None, n_features]))],
                          options=options, target_opset=target_opset)
    if feature_names:
        meta = onx.metadata_props.add()
        meta.key = "kiln.feature_names"
        meta.value = json.dumps(feature_names)
    onnx.save(onx, os.path.join(out, name + ".onnx"))


X, y = load_iris(return_X_y=True)
X = X.astype(np.float32)
lr = LogisticRegression(max_iter=500).fit(X, y)
save(lr, "iris_lr", 4, feature_names=FEATURES)
save(lr, "iris_lr_nozipmap", 4, options={id(lr): {"zipmap": False}})
rf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(X, y)
save(rf, "iris_rf", 4, feature_names=FEATURES, target_opset={"": 17, "ai.onnx.ml": 3})
Xd, yd = load_diabetes(return_X_y=True)
Xd = Xd.astype(np.float32)
reg = RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0).fit(Xd, yd)
save(reg, "diabetes_rf", Xd.shape[1])

# Expected outputs, computed by scikit-learn, for the tests to compare against.
sample = X[[0, 60, 120]]
expected = {
    "iris_sample": sample.tolist(),
    "iris_lr_labels": lr.predict(sample).tolist(),
    "iris_lr_proba": lr.predict_proba(sample).tolist(),
    "iris_rf_labels": rf.predict(sample).tolist(),
    "diabetes_sample": Xd[:3].tolist(),
    "diabetes_rf": reg.predict(Xd[:3]).tolist(),
}
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f)
