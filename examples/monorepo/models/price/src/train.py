"""Fits the price model on data/processed/price/train.csv and saves the artifact Kiln serves: the
folder `model/` with the pickled regressor (model.pkl) and the code that serves it (predict.py,
features.py). Then scores that folder on test.csv, through predict.py as a server calls it, into
metrics.json for Kiln's gates.
"""

import importlib
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, r2_score

from features import FIELDS, features

SRC = Path(__file__).resolve().parent
MODEL_DIR = SRC.parent
DATA = MODEL_DIR / "../../data/processed/price"
ARTIFACT = MODEL_DIR / "model"
METRICS = MODEL_DIR / "metrics.json"
TARGET = "price_eur"


def load_params() -> dict:
    """Kiln passes the params, `--set` overrides included, in the file named by KILN_PARAMS;
    run by hand, the script reads params.yaml."""
    path = os.environ.get("KILN_PARAMS") or MODEL_DIR / "params.yaml"
    with open(path) as file:
        return yaml.safe_load(file)


def fit(listings: pd.DataFrame, params: dict) -> GradientBoostingRegressor:
    model = GradientBoostingRegressor(
        n_estimators=int(params["n_estimators"]),
        learning_rate=float(params["learning_rate"]),
        max_depth=int(params["max_depth"]),
        random_state=0,
    )
    return model.fit(features(listings), np.log(listings[TARGET]))


def save(model: GradientBoostingRegressor, folder: Path) -> None:
    """The artifact: everything predict.py needs, in one folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with (folder / "model.pkl").open("wb") as file:
        pickle.dump(model, file)
    for source in ("predict.py", "features.py"):
        shutil.copy(SRC / source, folder / source)


def score(folder: Path, listings: pd.DataFrame) -> dict:
    """The saved folder's predict.py on held-out listings, as `kiln serve` would call it."""
    # Importing from the artifact folder must not leave __pycache__ in it.
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(folder))
    predict = importlib.import_module("predict")
    predicted = predict.predict(listings[FIELDS], predict.load(str(folder)))["price_eur"]
    truth = listings[TARGET]
    return {
        "mae_eur": round(float(mean_absolute_error(truth, predicted))),
        # Errors as a share of the price: 0.08 means the estimate is typically 8% off.
        "mape": round(float(mean_absolute_percentage_error(truth, predicted)), 4),
        "r2": round(float(r2_score(truth, predicted)), 4),
    }


def main() -> None:
    params = load_params()["train"]
    train = pd.read_csv(DATA / "train.csv")
    save(fit(train, params), ARTIFACT)
    metrics = score(ARTIFACT, pd.read_csv(DATA / "test.csv"))
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n")
    scores = ", ".join(f"{name} {value}" for name, value in metrics.items())
    print(f"trained on {len(train)} listings: {scores}")


if __name__ == "__main__":
    main()
