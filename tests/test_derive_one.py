"""`Deriver.transform_one` (one payment, plain Python) must equal `Deriver.transform` (numpy).

The online executor scores with `transform_one`; training and backtests read `transform`. Any
difference between the two would be training/serving skew, so the values are compared bit for bit
(NaN in the same places, and the same sign on zeros): on random raw rows built to hit every edge
(missing entities, zeros, NaN, infinities, negative spreads, huge and tiny amounts, payments
before and after the card's previous one, times before 1970), and on the sample history through
the offline executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antifraud.features.derive import Deriver
from antifraud.features.offline import OfflineFeatures, timestamps_ms
from antifraud.features.payment import PAYMENT_FIELDS
from antifraud.features.plan import compile_plan
from antifraud.features.spec import load_spec
from antifraud.features.stream import payment_record
from antifraud.training.history import load_history

NAN = float("nan")
INF = float("inf")
SAMPLE = "data/sample/history.parquet"

PLAN = compile_plan(load_spec())
DERIVER = Deriver(PLAN)
PRESENT = [PLAN.raw_index[f"{p.entity}:present"] for p in PLAN.entities]
TIMES = [i for i, name in enumerate(PLAN.raw_names) if name.endswith(("first_ts", "last_ts"))]
T_NOW = 1_772_000_000_000  # 2026-02-25


def _columns(payment: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One payment as the one-row object columns the online executor has passed to `transform`."""
    return {name: np.array([payment.get(name)], dtype=object) for name in PAYMENT_FIELDS}


def _assert_same(expected: np.ndarray, got: np.ndarray, context: object = "") -> None:
    """Same NaN placement, and every other value identical including the sign of zero."""
    assert got.dtype == np.float64 and got.shape == expected.shape
    nan = np.isnan(expected)
    diff = (nan != np.isnan(got)) | (~nan & (expected.view(np.int64) != got.view(np.int64)))
    bad = [
        (index[:-1], DERIVER.names[index[-1]], expected[index], got[index])
        for index in zip(*np.nonzero(diff), strict=True)
    ]
    assert not bad, f"transform_one differs from transform {context}: {bad[:10]}"


def _check(raw: np.ndarray, payment: Mapping[str, Any], t_ms: int) -> None:
    with np.errstate(over="ignore"):  # 1e300 / 1e-300 overflows to inf on both paths
        expected = DERIVER.transform(raw[None, :], _columns(payment), np.array([t_ms]))[0]
    _assert_same(expected, DERIVER.transform_one(raw, payment, t_ms), (payment, t_ms))
    # a plain list of floats is accepted too
    _assert_same(expected, DERIVER.transform_one(raw.tolist(), payment, t_ms), (payment, t_ms))


# --- random rows -----------------------------------------------------------------------------
# -50: payments + strength (50) is zero, where the smoothed rate divides by zero
EDGE = [0.0, -0.0, 1.0, 2.0, -1.0, -50.0, 1e-300, 5e-324, 1e15, 1e300, -1e300, NAN, INF, -INF]
values = st.one_of(
    st.sampled_from(EDGE),
    st.integers(0, 60).map(float),  # counts, distinct counts, feedback counts
    st.integers(0, 10**12).map(float),  # sums and maxima in milli-units, squared deviations
    st.floats(allow_nan=True, allow_infinity=True),
)
times = st.one_of(
    st.just(-1.0),  # no profile yet
    st.integers(-(10**11), 200 * 86_400_000).map(lambda d: float(T_NOW - d)),  # before or after t
    st.sampled_from([NAN, INF, float(T_NOW), 0.0]),
)
missing = st.sampled_from([None, "", NAN])
# pd.NA only where `transform` accepts it: its country comparison asks bool(pd.NA) and raises
missing_or_na = st.one_of(missing, st.just(pd.NA))
payments = st.fixed_dictionaries(
    {
        "amount": st.one_of(
            st.floats(0, 1e9),
            st.sampled_from([0.0, 0.001, 1e-9, 1e-300, 1e15, 1e300, None, NAN, INF]),
            st.integers(0, 10**6),
            st.sampled_from(["12.5", True]),
        ),
        "channel": st.one_of(st.sampled_from(["ecom", "pos", "moto", "atm"]), missing),
        "mcc": st.one_of(st.sampled_from(["5411", "7995", 4829, 5999.0]), missing_or_na),
        "card_on_file": st.one_of(st.booleans(), missing_or_na, st.sampled_from([0, 1, "1"])),
        "authenticated": st.one_of(st.booleans(), missing_or_na),
        **{
            field: st.one_of(st.sampled_from(["FR", "DE", "US"]), missing)
            for field in ("ip_country", "card_country", "billing_country", "shipping_country")
        },
    }
)


@st.composite
def raw_rows(draw: st.DrawFn) -> np.ndarray:
    raw = np.array(draw(st.lists(values, min_size=len(PLAN.raw_names), max_size=len(PLAN.raw_names))))
    for i in PRESENT:  # mostly present, sometimes missing, rarely nonsense
        raw[i] = draw(st.sampled_from([1.0, 1.0, 1.0, 0.0, NAN, 2.0]))
    for i in TIMES:
        raw[i] = draw(times)
    return raw


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=raw_rows(),
    payment=payments,
    t_ms=st.one_of(st.just(T_NOW), st.integers(-(10**13), 10**13)),
)
def test_transform_one_equals_transform_on_random_rows(raw: np.ndarray, payment: dict, t_ms: int) -> None:
    _check(raw, payment, t_ms)


def test_transform_one_equals_transform_on_edge_values() -> None:
    """Every raw column set to every edge value in turn, and each smoothed rate's two columns together
    (random draws rarely land on both, e.g. a zero denominator)."""
    base = np.arange(len(PLAN.raw_names), dtype=float) * 1000.0 + 3.0
    base[PRESENT] = 1.0
    base[TIMES] = T_NOW - 86_400_000.0
    payment = {"amount": 25.0, "channel": "pos", "ip_country": "FR", "card_country": "DE"}
    cells = [[j] for j in range(len(base))]
    cells += [
        [PLAN.raw_index[name], PLAN.raw_index[name.replace("rate_count", "rate_frauds")]]
        for name in PLAN.raw_names
        if ":rate_count:" in name
    ]
    for columns in cells:
        for first in EDGE:
            for second in EDGE if len(columns) == 2 else [first]:
                raw = base.copy()
                raw[columns] = [first, second][: len(columns)]
                _check(raw, payment, T_NOW)


def test_transform_one_equals_transform_on_a_large_random_sample() -> None:
    """Thousands of realistic rows at once: integer aggregates, some entities missing."""
    rng = np.random.default_rng(7)
    n = 4000
    raw = rng.integers(0, 4, (n, len(PLAN.raw_names))).astype(float) * rng.choice(
        [1.0, 1000.0, 123_457.0, 1e9], (n, len(PLAN.raw_names))
    )
    raw[:, PRESENT] = rng.choice([0.0, 1.0], (n, len(PRESENT)), p=[0.2, 0.8])
    t = T_NOW + rng.integers(-(10**9), 10**9, n)
    for i in TIMES:
        raw[:, i] = np.where(rng.random(n) < 0.2, -1.0, t - rng.integers(-(10**6), 10**10, n))
    novel = [i for i, name in enumerate(PLAN.raw_names) if ":novel:" in name]
    raw[:, novel] = rng.choice([-1.0, 0.0, 1.0], (n, len(novel)))
    channels = np.array(["ecom", "pos", "moto", None], dtype=object)
    countries = np.array(["FR", "DE", None, ""], dtype=object)
    payments = [
        {
            "amount": float(rng.choice([0.0, 0.01, 1.0, 19.99, 1e6])) * float(rng.random()),
            "channel": rng.choice(channels),
            "mcc": rng.choice(np.array(["5411", None, 7995], dtype=object)),
            "card_on_file": rng.choice(np.array([True, False, None], dtype=object)),
            "authenticated": rng.choice(np.array([True, False, None], dtype=object)),
            **{
                field: rng.choice(countries)
                for field in ("ip_country", "card_country", "billing_country", "shipping_country")
            },
        }
        for _ in range(n)
    ]
    columns = {name: np.array([p[name] for p in payments], dtype=object) for name in PAYMENT_FIELDS}
    expected = DERIVER.transform(raw, columns, t)
    got = np.array([DERIVER.transform_one(raw[i], payments[i], int(t[i])) for i in range(n)])
    _assert_same(expected, got, "(row, feature, transform, transform_one)")
    # the rows are not degenerate: most features take a value somewhere
    assert (~np.isnan(expected)).any(axis=0).sum() >= len(DERIVER.names) - 2


# --- the sample history through the offline executor ---------------------------------------------
@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    history = load_history(SAMPLE)
    # 32 days: every window (up to 30 days) is full for the last days, at half the cost of 60
    end = history["timestamp"].iloc[0] + pd.Timedelta(days=32)
    return history[history["timestamp"] < end].reset_index(drop=True)


def test_transform_one_equals_offline_features_on_the_sample(sample: pd.DataFrame) -> None:
    offline = OfflineFeatures()
    raw = offline.raw(sample)
    expected = offline.transform(sample)[offline.feature_names].to_numpy()
    t = timestamps_ms(sample["timestamp"])
    # every row, its fields as plain values (missing ones as pandas gives them: None, NaN, pd.NA)
    records = sample[list(PAYMENT_FIELDS)].to_dict("records")
    got = np.array([DERIVER.transform_one(raw[i], r, int(t[i])) for i, r in enumerate(records)])
    _assert_same(expected, got, "(row, feature, offline, transform_one)")
    # and some rows exactly as the online executor receives them from a history (missing as None)
    rows = range(0, len(sample), 97)
    got = np.array([DERIVER.transform_one(raw[i], payment_record(sample, i), int(t[i])) for i in rows])
    _assert_same(expected[rows], got, "(row / 97, feature, offline, transform_one)")
    assert len(sample) > 50_000
    for name in ("card_amount_zscore_30d", "merchant_fraud_rate_30d", "card_seconds_since_prev"):
        assert np.nanstd(expected[:, DERIVER.names.index(name)]) > 0, name
