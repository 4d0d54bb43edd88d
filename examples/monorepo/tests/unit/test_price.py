"""models/price/src: the features, and the artifact folder served through predict.py."""

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest

LISTINGS = pd.DataFrame(
    {
        "district": ["centre", "inner", "outer", "inner"],
        "area_m2": [50.0, 80.0, 120.0, 45.0],
        "rooms": [2, 4, 4, 1],
        "floor": [3, 0, 7, 2],
        "age_years": [95, 12, 30, 50],
        "balcony": [0, 1, 1, 0],
    }
)


def test_features_derive_area_per_room_and_one_hot_districts(price_features):
    table = price_features.features(LISTINGS)
    assert table["area_per_room"].tolist() == [25.0, 20.0, 30.0, 45.0]
    assert table["district_centre"].tolist() == [1, 0, 0, 0]
    assert table["district_inner"].tolist() == [0, 1, 0, 1]
    assert "district" not in table


def test_an_unknown_district_is_refused_with_the_known_ones(price_features):
    listings = LISTINGS.assign(district=["centre", "harbour", "outer", "inner"])
    with pytest.raises(ValueError, match="unknown district 'harbour'; expected one of centre, inner"):
        price_features.features(listings)


def test_the_saved_folder_serves_prices_in_euros(price_train, tmp_path):
    rng = np.random.default_rng(0)
    listings = LISTINGS.sample(200, replace=True, random_state=0).reset_index(drop=True)
    listings["price_eur"] = listings["area_m2"] * 4000 * rng.uniform(0.9, 1.1, len(listings))
    model = price_train.fit(listings, {"n_estimators": 20, "learning_rate": 0.3, "max_depth": 2})
    price_train.save(model, tmp_path / "model")
    saved = sorted(path.name for path in (tmp_path / "model").iterdir())
    assert saved == ["features.py", "model.pkl", "predict.py"]

    # Loaded from the folder alone, as Kiln's Python worker loads it.
    sys.path.insert(0, str(tmp_path / "model"))
    spec = importlib.util.spec_from_file_location("served_predict", tmp_path / "model/predict.py")
    served = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(served)
    prices = served.predict(LISTINGS, served.load(str(tmp_path / "model")))["price_eur"]
    assert (prices % 100 == 0).all()
    assert np.allclose(prices, LISTINGS["area_m2"] * 4000, rtol=0.15)


def test_the_signature_takes_exactly_the_fields_features_reads(price_train):
    spec = importlib.util.spec_from_file_location("price_predict", price_train.SRC / "predict.py")
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    assert [column["name"] for column in predict.SIGNATURE["inputs"]] == price_train.FIELDS
