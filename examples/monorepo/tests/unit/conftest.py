"""Fixtures that load the code under test by its path: `scripts/` and the models' `src/` folders
are not packages, and both models have a `train.py`, so each module gets a name of its own."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(relative: str, name: str):
    path = ROOT / relative
    # The module's own folder first, for the imports it makes (price's train.py imports features).
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def prepare():
    return load("scripts/prepare.py", "prepare")


@pytest.fixture(scope="session")
def churn_train():
    return load("models/churn/src/train.py", "churn_train")


@pytest.fixture(scope="session")
def price_train():
    return load("models/price/src/train.py", "price_train")


@pytest.fixture(scope="session")
def price_features():
    return load("models/price/src/features.py", "price_features")
