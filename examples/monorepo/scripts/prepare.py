"""Cleans one raw export of data/raw into the train/test split a model trains on.

    python scripts/prepare.py churn   # data/raw/customers.csv -> data/processed/churn/{train,test}.csv
    python scripts/prepare.py price   # data/raw/listings.csv  -> data/processed/price/{train,test}.csv

Run from the repository root (each model's `prepare` stage does `cd ../..` first). The steps are
shared: read, drop rows exported twice, turn each raw row into typed features (or drop it, saying
why), split with a seed. What differs per dataset is one function, `customer` or `listing`.
Kiln checks the files this writes (`checks:` in kiln.yaml) before either model trains on them.
"""

import csv
import json
import os
import random
import sys
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The day the customer export was taken: tenure is counted up to it.
CUSTOMERS_EXPORTED = date(2026, 6, 30)
PLAN_TIERS = {"basic": 0, "standard": 1, "premium": 2}
DISTRICTS = ("centre", "inner", "outer")


class Rejected(ValueError):
    """A raw row that cannot become a training row; the message says why."""


def customer(raw: dict) -> dict:
    """A row of customers.csv as the churn model's features and label."""
    if not raw["logins_30d"].strip():
        raise Rejected("logins_30d missing")
    plan = raw["plan"].strip().lower()
    if plan not in PLAN_TIERS:
        raise Rejected(f"unknown plan {raw['plan']!r}")
    signed_up = date.fromisoformat(raw["signup_date"])
    if signed_up > CUSTOMERS_EXPORTED:
        raise Rejected("signed up after the export")
    tenure_months = (CUSTOMERS_EXPORTED - signed_up).days // 30
    tickets = int(raw["support_tickets"])
    return {
        "tenure_months": tenure_months,
        "monthly_fee": float(raw["monthly_fee"]),
        # Plans are ordered by what they include, so one ordinal column carries them.
        "plan_tier": PLAN_TIERS[plan],
        "autopay": int(raw["autopay"] == "yes"),
        # A long-standing customer with ten tickets is not as unhappy as a new one with ten.
        "tickets_per_month": round(tickets / max(tenure_months, 1), 4),
        "logins_30d": int(raw["logins_30d"]),
        "churned": int(raw["churned"] == "yes"),
    }


def listing(raw: dict) -> dict:
    """A row of listings.csv as the price model's inputs and target."""
    if not raw["price_eur"].strip():
        raise Rejected("not sold yet (no price)")
    area = float(raw["area_m2"])
    if area < 10:
        raise Rejected(f"impossible area {area} m²")
    district = raw["district"].strip().lower()
    if district not in DISTRICTS:
        raise Rejected(f"unknown district {raw['district']!r}")
    return {
        "district": district,
        "area_m2": area,
        "rooms": int(raw["rooms"]),
        "floor": int(raw["floor"]),
        "age_years": date.fromisoformat(raw["listed_on"]).year - int(raw["year_built"]),
        "balcony": int(raw["balcony"] == "yes"),
        "price_eur": int(raw["price_eur"]),
    }


# Per model: the raw export, its key column, the function that makes a row, and the column to
# stratify the split by (so that train and test hold the same share of churners).
DATASETS = {
    "churn": {"raw": "customers.csv", "key": "customer_id", "row": customer, "stratify": "churned"},
    "price": {"raw": "listings.csv", "key": "listing_id", "row": listing, "stratify": None},
}


def unique(rows: list, key: str) -> list:
    """The rows without those exported twice (the first of each key is kept)."""
    seen = set()
    kept = []
    for row in rows:
        if row[key] not in seen:
            seen.add(row[key])
            kept.append(row)
    return kept


def clean(rows: list, make) -> tuple:
    """Each raw row through `make`: the rows kept, and a count of the reasons rows were dropped."""
    kept, dropped = [], Counter()
    for raw in rows:
        try:
            kept.append(make(raw))
        except Rejected as why:
            dropped[str(why)] += 1
    return kept, dropped


def split(rows: list, test_size: float, seed: int, stratify=None) -> tuple:
    """A seeded train/test split; with `stratify`, each value of that column is split alike."""
    rng = random.Random(seed)
    groups = {}
    for row in rows:
        groups.setdefault(row[stratify] if stratify else None, []).append(row)
    train, test = [], []
    for _, group in sorted(groups.items(), key=lambda item: str(item[0])):
        rng.shuffle(group)
        cut = round(len(group) * test_size)
        test.extend(group[:cut])
        train.extend(group[cut:])
    # Mixed again, so that neither file lists one class after the other.
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def load_params(model: str) -> dict:
    """Kiln passes the model's params (`--set` overrides included) as JSON in the file named by
    KILN_PARAMS; run by hand, the script reads the model's params.yaml."""
    if os.environ.get("KILN_PARAMS"):
        with open(os.environ["KILN_PARAMS"]) as file:
            return json.load(file)
    import yaml

    with open(ROOT / "models" / model / "params.yaml") as file:
        return yaml.safe_load(file)


def write_csv(path: Path, rows: list) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(model: str) -> None:
    dataset = DATASETS[model]
    params = load_params(model)["prepare"]
    with (ROOT / "data/raw" / dataset["raw"]).open(newline="") as file:
        raw = list(csv.DictReader(file))
    distinct = unique(raw, dataset["key"])
    rows, dropped = clean(distinct, dataset["row"])
    train, test = split(rows, params["test_size"], params["seed"], dataset["stratify"])
    out = ROOT / "data/processed" / model
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "train.csv", train)
    write_csv(out / "test.csv", test)
    print(f"{dataset['raw']}: {len(raw)} rows, {len(raw) - len(distinct)} exported twice")
    for why, count in sorted(dropped.items()):
        print(f"  dropped {count}: {why}")
    print(f"  {len(train)} rows for training, {len(test)} for testing in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in DATASETS:
        sys.exit(f"usage: python scripts/prepare.py {{{','.join(DATASETS)}}}")
    main(sys.argv[1])
