"""Writes the two raw exports in data/raw: customers.csv (for the churn model) and listings.csv
(for the price model). Synthetic, seeded: running it again writes the same bytes.

The files are committed, as a real project's raw exports would be; this script only documents
how they were made. Each holds the defects real exports have, which scripts/prepare.py cleans:
rows exported twice, missing values, categories spelt inconsistently, impossible values.
"""

import csv
import math
import random
from datetime import date, timedelta
from pathlib import Path

RAW = Path(__file__).resolve().parents[1] / "data/raw"
SEED = 20261130

# The customer export was taken on this day (scripts/prepare.py measures tenure up to it).
CUSTOMERS_EXPORTED = date(2026, 6, 30)
LIST_PRICES = {"basic": 9.99, "standard": 15.99, "premium": 22.99}
# Price per square metre of a new flat, by district.
PRICE_PER_M2 = {"centre": 6900, "inner": 5100, "outer": 3600}


def customers(rng: random.Random, count: int) -> list:
    rows = []
    for number in range(1, count + 1):
        signed_up = date(2021, 1, 1) + timedelta(days=rng.randrange(0, 1976))
        tenure = (CUSTOMERS_EXPORTED - signed_up).days / 30.44
        plan = rng.choices(list(LIST_PRICES), weights=[45, 35, 20])[0]
        discount = rng.choice([0.0, 0.0, 0.1, 0.2])
        fee = round(LIST_PRICES[plan] * (1 - discount), 2)
        autopay = rng.random() < 0.6
        ticket_rate = rng.uniform(0.02, 0.45)
        tickets = sum(rng.random() < ticket_rate for _ in range(max(1, round(tenure))))
        logins = max(0, round(rng.gauss(22, 11)))
        # Churn rises with support trouble, a fee above the plan's list price, and inactivity;
        # long tenure and autopay hold customers.
        pressure = (
            1.6
            - 0.08 * tenure
            + 8 * tickets / max(tenure, 1)
            + 0.12 * (fee - 15)
            - 0.1 * logins
            - 1.5 * autopay
            + rng.gauss(0, 0.5)
        )
        churned = rng.random() < 1 / (1 + math.exp(-pressure))
        row = {
            "customer_id": f"C{number:04d}",
            "signup_date": signed_up.isoformat(),
            "plan": plan,
            "monthly_fee": f"{fee:.2f}",
            "autopay": "yes" if autopay else "no",
            "support_tickets": tickets,
            "logins_30d": logins,
            "churned": "yes" if churned else "no",
        }
        # Defects of the export.
        if rng.random() < 0.03:
            row["logins_30d"] = ""
        if rng.random() < 0.05:
            row["plan"] = f" {plan.capitalize()}"
        rows.append(row)
        if rng.random() < 0.02:
            rows.append(dict(row))
    return rows


def listings(rng: random.Random, count: int) -> list:
    rows = []
    for number in range(1, count + 1):
        district = rng.choices(list(PRICE_PER_M2), weights=[20, 40, 40])[0]
        area = round(min(180, max(22, rng.lognormvariate(math.log(68), 0.35))), 1)
        rooms = min(6, max(1, round(area / 26 + rng.gauss(0, 0.6))))
        floor = rng.randrange(0, 13)
        oldest = 1890 if district == "centre" else 1950
        built = rng.randrange(oldest, 2026)
        listed = date(2025, 1, 1) + timedelta(days=rng.randrange(0, 540))
        age = listed.year - built
        balcony = rng.random() < 0.55
        # Flats lose value with age until about 60 years, when old buildings become sought after;
        # small rooms (many rooms for the area) are worth less per square metre.
        wear = 1 - 0.006 * min(age, 60) + 0.003 * max(age - 60, 0)
        cramped = 1 - 0.05 * max(0, rooms - area / 25)
        price = (
            PRICE_PER_M2[district]
            * area**0.95
            * wear
            * cramped
            * (1.05 if balcony else 1.0)
            * (1 + 0.012 * min(floor, 6))
            * rng.lognormvariate(0, 0.07)
        )
        row = {
            "listing_id": f"L{number:04d}",
            "listed_on": listed.isoformat(),
            "district": district,
            "area_m2": f"{area:.1f}",
            "rooms": rooms,
            "floor": floor,
            "year_built": built,
            "balcony": "yes" if balcony else "no",
            "price_eur": round(price / 1000) * 1000,
        }
        # Defects of the export: listings not sold yet, areas typed in the wrong field.
        if rng.random() < 0.04:
            row["price_eur"] = ""
        if rng.random() < 0.01:
            row["area_m2"] = "0.0"
        if rng.random() < 0.03:
            row["district"] = district.upper()
        rows.append(row)
        if rng.random() < 0.02:
            rows.append(dict(row))
    return rows


def write(path: Path, rows: list) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    rng = random.Random(SEED)
    RAW.mkdir(parents=True, exist_ok=True)
    write(RAW / "customers.csv", customers(rng, 900))
    write(RAW / "listings.csv", listings(rng, 800))


if __name__ == "__main__":
    main()
