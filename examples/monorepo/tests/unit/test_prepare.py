"""scripts/prepare.py, which both models' data goes through."""

import pytest

CUSTOMER = {
    "customer_id": "C0001",
    "signup_date": "2025-06-30",
    "plan": " Premium",
    "monthly_fee": "20.69",
    "autopay": "yes",
    "support_tickets": "6",
    "logins_30d": "14",
    "churned": "yes",
}
LISTING = {
    "listing_id": "L0001",
    "listed_on": "2025-09-14",
    "district": "CENTRE",
    "area_m2": "54.5",
    "rooms": "2",
    "floor": "3",
    "year_built": "1931",
    "balcony": "no",
    "price_eur": "301000",
}


def test_a_customer_becomes_typed_features(prepare):
    assert prepare.customer(CUSTOMER) == {
        "tenure_months": 12,
        "monthly_fee": 20.69,
        "plan_tier": 2,  # " Premium" as exported, read as `premium`
        "autopay": 1,
        "tickets_per_month": 0.5,
        "logins_30d": 14,
        "churned": 1,
    }


def test_a_customer_of_this_month_counts_tickets_per_month_without_dividing_by_zero(prepare):
    row = prepare.customer({**CUSTOMER, "signup_date": "2026-06-20"})
    assert row["tenure_months"] == 0
    assert row["tickets_per_month"] == 6


@pytest.mark.parametrize(
    "change, why",
    [
        ({"logins_30d": ""}, "logins_30d missing"),
        ({"plan": "gold"}, "unknown plan"),
        ({"signup_date": "2026-07-01"}, "after the export"),
    ],
)
def test_customers_that_cannot_be_used_are_rejected_with_a_reason(prepare, change, why):
    with pytest.raises(prepare.Rejected, match=why):
        prepare.customer({**CUSTOMER, **change})


def test_a_listing_becomes_typed_fields(prepare):
    assert prepare.listing(LISTING) == {
        "district": "centre",
        "area_m2": 54.5,
        "rooms": 2,
        "floor": 3,
        "age_years": 94,
        "balcony": 0,
        "price_eur": 301000,
    }


@pytest.mark.parametrize(
    "change, why",
    [
        ({"price_eur": ""}, "not sold yet"),
        ({"area_m2": "0.0"}, "impossible area"),
        ({"district": "harbour"}, "unknown district"),
    ],
)
def test_listings_that_cannot_be_used_are_rejected_with_a_reason(prepare, change, why):
    with pytest.raises(prepare.Rejected, match=why):
        prepare.listing({**LISTING, **change})


def test_rows_exported_twice_are_kept_once_and_reasons_are_counted(prepare):
    rows = [
        CUSTOMER,
        {**CUSTOMER, "logins_30d": "99"},
        {**CUSTOMER, "customer_id": "C0002", "logins_30d": ""},
    ]
    distinct = prepare.unique(rows, "customer_id")
    assert [row["logins_30d"] for row in distinct] == ["14", ""]
    kept, dropped = prepare.clean(distinct, prepare.customer)
    assert len(kept) == 1
    assert dropped == {"logins_30d missing": 1}


def test_the_split_is_seeded_complete_and_stratified(prepare):
    rows = [{"id": i, "churned": int(i % 5 == 0)} for i in range(200)]
    train, test = prepare.split(rows, 0.25, seed=7, stratify="churned")
    assert (train, test) == prepare.split(rows, 0.25, seed=7, stratify="churned")
    assert train != prepare.split(rows, 0.25, seed=8, stratify="churned")[0]
    assert sorted(row["id"] for row in train + test) == list(range(200))
    assert len(test) == 50
    # A fifth of the rows churned, and a fifth of each part.
    assert sum(row["churned"] for row in test) == 10
    assert sum(row["churned"] for row in train) == 30
