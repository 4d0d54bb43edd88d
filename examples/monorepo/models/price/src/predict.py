"""Serves the price model: Kiln loads this file from the artifact folder (`model/`, which train.py
fills with model.pkl, this file and features.py) and calls `predict` with each batch of requests.

A client sends listing fields, as named columns; the model answers `price_eur`:

    curl -s localhost:8080/invocations -H 'content-type: application/json' -d '{"dataframe_records": [
      {"district": "inner", "area_m2": 72.5, "rooms": 3, "floor": 2, "age_years": 31, "balcony": 1}]}'
"""

import os
import pickle

from features import features, to_price

# `predict` takes a pandas DataFrame with one column per input below.
INPUT = "dataframe"
# Requests are checked against this before they reach `predict`.
SIGNATURE = {
    "inputs": [
        {"name": "district", "datatype": "BYTES", "shape": [-1]},
        {"name": "area_m2", "datatype": "FP64", "shape": [-1]},
        {"name": "rooms", "datatype": "INT64", "shape": [-1]},
        {"name": "floor", "datatype": "INT64", "shape": [-1]},
        {"name": "age_years", "datatype": "INT64", "shape": [-1]},
        {"name": "balcony", "datatype": "INT64", "shape": [-1]},
    ],
    "outputs": [{"name": "price_eur", "datatype": "FP64", "shape": [-1]}],
}


def load(model_dir):
    """Called once per worker; its result is `predict`'s second argument."""
    with open(os.path.join(model_dir, "model.pkl"), "rb") as file:
        return pickle.load(file)


def predict(listings, model):
    return {"price_eur": to_price(model.predict(features(listings)))}
