"""models/churn/src/train.py: the exported ONNX graph is the scikit-learn model."""

import numpy as np
import onnx
import onnxruntime


def customers(count: int, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    features = np.column_stack(
        [
            rng.integers(0, 66, count),  # tenure_months
            rng.uniform(7, 23, count),  # monthly_fee
            rng.integers(0, 3, count),  # plan_tier
            rng.integers(0, 2, count),  # autopay
            rng.uniform(0, 1, count),  # tickets_per_month
            rng.integers(0, 60, count),  # logins_30d
        ]
    ).astype(np.float32)
    labels = (features[:, 4] * 40 - features[:, 0] - features[:, 5] * 0.5 > -20).astype(np.int64)
    return features, labels


def test_the_onnx_graph_predicts_what_scikit_learn_predicts(churn_train):
    features, labels = customers(300)
    model = churn_train.fit(features, labels, c=1.0)
    session = onnxruntime.InferenceSession(churn_train.export(model, features))
    unseen, _ = customers(50, seed=1)
    predicted, probabilities = session.run(["label", "probabilities"], {"X": unseen})
    assert (predicted == model.predict(unseen)).all()
    assert np.allclose(probabilities, model.predict_proba(unseen), atol=1e-5)


def test_the_graph_names_its_input_columns_for_kiln(churn_train):
    features, labels = customers(100)
    model = churn_train.fit(features, labels, c=1.0)
    graph = onnx.load_from_string(churn_train.export(model, features))
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    assert metadata["kiln.feature_names"].split(",") == churn_train.FEATURES
    assert [tensor.name for tensor in graph.graph.input] == ["X"]


def test_processed_csv_columns_are_read_in_feature_order(churn_train, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        "churned,logins_30d,tickets_per_month,autopay,plan_tier,monthly_fee,tenure_months\n"
        "1,3,0.5,0,2,22.99,4\n"
    )
    features, labels = churn_train.load(path)
    assert np.allclose(features, [[4, 22.99, 2, 0, 0.5, 3]])
    assert labels.tolist() == [1]
