"""The price model's features, computed from a listing's fields the same way in training
(train.py) and in serving (predict.py, which Kiln runs with this file beside it)."""

import numpy as np
import pandas as pd

# The fields a client sends for a listing: the columns of data/processed/price/*.csv but the price.
FIELDS = ["district", "area_m2", "rooms", "floor", "age_years", "balcony"]
DISTRICTS = ["centre", "inner", "outer"]


def features(listings: pd.DataFrame) -> pd.DataFrame:
    """The model's input matrix: the numeric fields, the area per room (small rooms are worth
    less per square metre), and the district one-hot encoded (`outer` is the baseline)."""
    unknown = set(listings["district"]) - set(DISTRICTS)
    if unknown:
        first = sorted(unknown)[0]
        raise ValueError(f"unknown district {first!r}; expected one of {', '.join(DISTRICTS)}")
    area = listings["area_m2"].astype(float)
    return pd.DataFrame(
        {
            "area_m2": area,
            "rooms": listings["rooms"].astype(float),
            "area_per_room": area / listings["rooms"].clip(lower=1).astype(float),
            "floor": listings["floor"].astype(float),
            "age_years": listings["age_years"].astype(float),
            "balcony": listings["balcony"].astype(float),
            "district_centre": (listings["district"] == "centre").astype(float),
            "district_inner": (listings["district"] == "inner").astype(float),
        }
    )


def to_price(log_prices: np.ndarray) -> np.ndarray:
    """The model learns the logarithm of the price (errors in proportion to the price, as buyers
    see them); this turns its output back into euros, rounded to the hundred."""
    return np.round(np.exp(log_prices), -2)
