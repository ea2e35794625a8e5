"""Features of the payment alone: no state, the same columns online (n=1) and offline (n rows)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


def _float_or_nan(v: Any) -> float:
    """A boolean, number or numeric string as a float, missing as NaN."""
    return NAN if _is_missing(v) else float(v)


def _as_float(values: np.ndarray) -> np.ndarray:
    """Booleans and numeric strings as floats, missing as NaN."""
    return np.array([_float_or_nan(v) for v in values], dtype=float)


def _amount_one(v: Any) -> float:
    """One amount as `np.asarray(column, dtype=float)` converts an object column: None is NaN."""
    return NAN if v is None else float(v)


def _mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1.0 when two country fields differ, 0.0 when equal, NaN when either is missing."""
    known = ~(_missing(a) | _missing(b))
    out = np.full(len(a), NAN)
    # compare only known values: comparing pd.NA raises ("boolean value of NA is ambiguous")
    out[known] = (a[known] != b[known]).astype(float)
    return out


def _mismatch_one(a: Any, b: Any) -> float:
    """`_mismatch` for one payment (a missing value is never compared, so pd.NA cannot raise here)."""
    return NAN if _is_missing(a) or _is_missing(b) else float(a != b)


# Calendar fields as integer arithmetic that works on an int64 array and on one int alike, so the
# vectorised and the one-payment paths share the formula (floor division: right before 1970 too).
def _hour(t: Any) -> Any:
    return t // MS_PER_HOUR % 24


def _weekday(t: Any) -> Any:
    # 1970-01-01 was a Thursday: shift so that Monday is 0
    return (t // MS_PER_DAY + 3) % 7


_FEATURES: dict[str, Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]] = {
    "amount": lambda p, t: np.asarray(p["amount"], dtype=float),
    "hour_of_day": lambda p, t: _hour(t).astype(float),
    "day_of_week": lambda p, t: _weekday(t).astype(float),
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


# The same features for one payment (a mapping of canonical fields, missing fields read as None,
# like the object columns the online executor builds) at one integer time: plain Python, no numpy,
# for the scoring hot path. tests/test_derive_one.py checks they equal `_FEATURES` value for value.
_FEATURES_ONE: dict[str, Callable[[Mapping[str, Any], int], float]] = {
    "amount": lambda p, t: _amount_one(p.get("amount")),
    "hour_of_day": lambda p, t: float(_hour(t)),
    "day_of_week": lambda p, t: float(_weekday(t)),
    "channel": lambda p, t: CHANNEL_CODES.get(p.get("channel"), NAN),  # type: ignore[arg-type]
    "mcc": lambda p, t: _float_or_nan(p.get("mcc")),
    "card_on_file": lambda p, t: _float_or_nan(p.get("card_on_file")),
    "authenticated": lambda p, t: _float_or_nan(p.get("authenticated")),
    "ip_card_country_mismatch": lambda p, t: _mismatch_one(p.get("ip_country"), p.get("card_country")),
    "billing_shipping_mismatch": lambda p, t: _mismatch_one(
        p.get("billing_country"), p.get("shipping_country")
    ),
    "ip_billing_country_mismatch": lambda p, t: _mismatch_one(p.get("ip_country"), p.get("billing_country")),
}
assert _FEATURES_ONE.keys() == _FEATURES.keys()


def payment_feature_one(name: str) -> Callable[[Mapping[str, Any], int], float]:
    """The function computing payment feature `name` for one payment: f(payment, t_ms) -> float."""
    return _FEATURES_ONE[name]


def amount_one(payment: Mapping[str, Any]) -> float:
    """The payment's amount as a float, exactly as the `amount` feature reads it (None -> NaN)."""
    return _amount_one(payment.get("amount"))
