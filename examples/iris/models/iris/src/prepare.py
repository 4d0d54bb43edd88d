"""Splits the raw iris data into data/processed/train.csv and test.csv (stratified, seeded).

Kiln checks train.csv right after this stage (see `checks` in kiln.yaml), so a broken split never
reaches training.
"""

import csv
import os
from pathlib import Path

import yaml
from sklearn.model_selection import train_test_split

MODEL_DIR = Path(__file__).resolve().parents[1]
RAW = MODEL_DIR / "../../data/raw/iris.csv"
OUT_DIR = MODEL_DIR / "data/processed"


def load_params() -> dict:
    """Kiln passes the params, `--set` overrides included, in the file named by KILN_PARAMS;
    run by hand, the script reads params.yaml."""
    path = os.environ.get("KILN_PARAMS") or MODEL_DIR / "params.yaml"
    with open(path) as file:
        return yaml.safe_load(file) or {}


def write_csv(path: Path, header: list, rows: list) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def main() -> None:
    params = load_params()["prepare"]
    with RAW.open(newline="") as file:
        reader = csv.reader(file)
        header = next(reader)
        rows = list(reader)
    species = [row[header.index("species")] for row in rows]
    train, test = train_test_split(
        rows, test_size=params["test_size"], random_state=params["seed"], stratify=species
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_csv(OUT_DIR / "train.csv", header, train)
    write_csv(OUT_DIR / "test.csv", header, test)
    print(f"split {len(rows)} rows into {len(train)} for training and {len(test)} for testing")


if __name__ == "__main__":
    main()
