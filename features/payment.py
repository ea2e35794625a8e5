"""Features of the payment alone: no state, the same columns online (n=1) and offline (n rows)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

NAN = float("nan")
# Transaction fields the payment features read.
PAYMENT_FIELDS = (
    "amount",
    "channel",
    "mcc",
    "card_on_file",
    "authenticated",
    "ip_country",
    "card_country",
    "billing_country",
    "shipping_country",
)
CHANNEL_CODES = {"ecom": 0.0, "pos": 1.0, "moto": 2.0}
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


def _is_missing(v: object) -> bool:
    return v is None or v is pd.NA or v == "" or (isinstance(v, float) and v != v)


def _missing(values: np.ndarray) -> np.ndarray:
    return np.array([_is_missing(v) for v in values], dtype=bool)


def _as_float(values: np.ndarray) -> np.ndarray:
    """Booleans and numeric strings as floats, missing as NaN."""
    return np.array([NAN if _is_missing(v) else float(v) for v in values], dtype=float)


def _mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1.0 when two country fields differ, 0.0 when equal, NaN when either is missing."""
    either = _missing(a) | _missing(b)
    return np.where(either, NAN, (a != b).astype(float))


_FEATURES: dict[str, Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]] = {
    "amount": lambda p, t: np.asarray(p["amount"], dtype=float),
    "hour_of_day": lambda p, t: ((t // MS_PER_HOUR) % 24).astype(float),
    # 1970-01-01 was a Thursday: shift so that Monday is 0
    "day_of_week": lambda p, t: ((t // MS_PER_DAY + 3) % 7).astype(float),
    "channel": lambda p, t: np.array([CHANNEL_CODES.get(v, NAN) for v in p["channel"]], dtype=float),
    "mcc": lambda p, t: _as_float(p["mcc"]),
    "card_on_file": lambda p, t: _as_float(p["card_on_file"]),
    "authenticated": lambda p, t: _as_float(p["authenticated"]),
    "ip_card_country_mismatch": lambda p, t: _mismatch(p["ip_country"], p["card_country"]),
    "billing_shipping_mismatch": lambda p, t: _mismatch(p["billing_country"], p["shipping_country"]),
    "ip_billing_country_mismatch": lambda p, t: _mismatch(p["ip_country"], p["billing_country"]),
}


def payment_matrix(names: Sequence[str], payment: Mapping[str, np.ndarray], t_ms: np.ndarray) -> np.ndarray:
    """The named payment features as columns of an (n, len(names)) matrix."""
    t = np.asarray(t_ms, dtype=np.int64)
    return (
        np.column_stack([_FEATURES[name](payment, t) for name in names]) if names else np.empty((len(t), 0))
    )
