"""Writes the raw iris data set to data/raw/iris.csv at the project root.

The data is the copy that ships inside scikit-learn, so this needs no network. In a real project this
stage would pull from a warehouse or an object store instead.
"""

import csv
from pathlib import Path

from sklearn.datasets import load_iris

MODEL_DIR = Path(__file__).resolve().parents[1]
OUT = MODEL_DIR / "../../data/raw/iris.csv"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main() -> None:
    iris = load_iris()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*FEATURES, "species"])
        for features, target in zip(iris.data, iris.target):
            writer.writerow([*(round(float(value), 2) for value in features), iris.target_names[target]])
    print(f"wrote {len(iris.data)} rows to {OUT.resolve()}")


if __name__ == "__main__":
    main()
