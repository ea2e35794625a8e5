"""The payment simulator: determinism, schema, fraud patterns with their ground truth."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.schema import HISTORY_COLUMNS, TRANSACTION_COLUMNS, Transaction
from training.history import load_history, write_history
from training.simulator import FRAUD_PATTERNS, simulate

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample" / "history.parquet"


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return simulate(days=28, cards=600, merchants=80, seed=3)


def pattern(history: pd.DataFrame, name: str) -> pd.DataFrame:
    rows = history[history["fraud_pattern"] == name]
    assert len(rows) > 0, f"no {name} rows"
    return rows


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_same_frame_and_bytes(tmp_path: Path) -> None:
    first = simulate(days=10, cards=120, merchants=30, seed=11)
    second = simulate(days=10, cards=120, merchants=30, seed=11)
    pd.testing.assert_frame_equal(first, second)
    for name, frame in (("a.parquet", first), ("b.parquet", second), ("a.csv", first), ("b.csv", second)):
        write_history(frame, tmp_path / name)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_other_seed_other_frame() -> None:
    first = simulate(days=10, cards=120, merchants=30, seed=11)
    other = simulate(days=10, cards=120, merchants=30, seed=12)
    assert not first["card_id"].isin(other["card_id"]).any()
    assert len(first) != len(other) or not np.array_equal(first["amount"], other["amount"])


def test_progress_is_reported() -> None:
    calls: list[tuple[int, int]] = []
    simulate(days=8, cards=40, merchants=20, seed=1, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (9, 9)
    assert [done for done, _ in calls] == list(range(1, 10))


def test_refuses_tiny_worlds() -> None:
    with pytest.raises(ValueError, match="at least"):
        simulate(days=3, cards=100, merchants=50, seed=1)


# --------------------------------------------------------------------------------------- schema


def test_columns_dtypes_and_order(history: pd.DataFrame) -> None:
    assert list(history.columns) == [*TRANSACTION_COLUMNS, *HISTORY_COLUMNS, "fraud_pattern"]
    for name in ("timestamp", "label_time", "outcome_time", "refund_time", "cancel_time"):
        assert str(history[name].dtype) == "datetime64[ns, UTC]", name
    assert history["amount"].dtype == np.float64 and history["label"].dtype == np.int8
    assert str(history["card_on_file"].dtype) == "boolean"
    assert history["timestamp"].is_monotonic_increasing
    assert history["transaction_id"].is_unique and history["transaction_id"].is_monotonic_increasing
    assert history["transaction_id"].str.fullmatch(r"tx_\d{9}").all()
    assert isinstance(history.index, pd.RangeIndex)


def test_timestamps_have_random_milliseconds(history: pd.DataFrame) -> None:
    ns = history["timestamp"].astype("int64")
    assert (ns % 1_000_000 == 0).all()  # millisecond resolution
    assert (ns // 1_000_000 % 1000).nunique() > 900  # with random sub-second parts
    assert history["timestamp"].duplicated().mean() < 0.001


def test_rows_parse_as_transactions(history: pd.DataFrame) -> None:
    rows = history.sample(400, random_state=0)[list(TRANSACTION_COLUMNS)].astype(object)
    for record in rows.where(rows.notna(), None).to_dict("records"):
        record["timestamp"] = record["timestamp"].to_pydatetime()
        Transaction.model_validate(record)


def test_no_card_numbers_anywhere(history: pd.DataFrame) -> None:
    assert history["card_id"].str.fullmatch(r"card_[0-9a-f]{16}").all()
    text = history.astype(str).to_numpy().ravel()
    assert not pd.Series(text).str.contains(r"\d{12}").any()  # nothing a PAN scanner would flag


def test_optional_columns_are_realistically_filled(history: pd.DataFrame) -> None:
    pos, ecom = history[history["channel"] == "pos"], history[history["channel"] == "ecom"]
    assert pos["ip"].isna().all() and pos["email"].isna().all() and pos["device_id"].isna().all()
    assert pos["terminal_id"].notna().all() and ecom["terminal_id"].isna().all()
    assert 0.02 < ecom["device_id"].isna().mean() < 0.2
    assert ecom["authenticated"].mean() > 0.5
    assert ecom["card_on_file"].any()
    assert set(history["currency"]) >= {"EUR", "GBP", "USD"}
    assert history["mcc"].str.fullmatch(r"\d{4}").all() and {"5411", "5812", "7995"} <= set(history["mcc"])
    legit = history[history["label"] == 0]
    assert legit.groupby("card_id")["customer_id"].nunique().max() <= 1  # one account per card


def test_bank_outcomes_refunds_and_cancels(history: pd.DataFrame) -> None:
    declined = history["bank_outcome"] == "declined"
    assert set(history["bank_outcome"]) == {"approved", "declined"}
    assert (history["decline_code"].notna() == declined).all()
    answer = (history["outcome_time"] - history["timestamp"]).dt.total_seconds()
    assert answer.between(0.2, 3.0).all()
    legit = history[history["label"] == 0]
    assert 0.005 < (legit["bank_outcome"] == "declined").mean() < 0.05
    assert legit["decline_code"].value_counts().index[0] == "51"  # insufficient funds
    refund = (legit["refund_time"] - legit["timestamp"]).dropna()
    assert 0.01 <= len(refund) / len(legit) <= 0.03
    assert refund.between(pd.Timedelta(days=1), pd.Timedelta(days=20)).all()
    cancel = (legit["cancel_time"] - legit["timestamp"]).dropna()
    assert 0.002 < len(cancel) / len(legit) < 0.01 and (cancel < pd.Timedelta(hours=6)).all()
    assert history.loc[declined, ["refund_time", "cancel_time"]].isna().all().all()


# ---------------------------------------------------------------------------------------- fraud


def test_every_pattern_present_with_a_realistic_share(history: pd.DataFrame) -> None:
    assert set(history["fraud_pattern"]) == {"", *FRAUD_PATTERNS}
    assert ((history["fraud_pattern"] != "") == (history["label"] == 1)).all()
    assert 0.005 <= history["label"].mean() <= 0.02


def test_label_times(history: pd.DataFrame) -> None:
    fraud, legit = history[history["label"] == 1], history[history["label"] == 0]
    delay = fraud["label_time"] - fraud["timestamp"]
    assert delay.between(pd.Timedelta(days=3), pd.Timedelta(days=60)).all()
    assert legit["label_time"].isna().all()


def test_card_testing_is_tiny_fast_and_declined(history: pd.DataFrame) -> None:
    rows = pattern(history, "card_testing")
    tiny = rows[rows["amount"] <= 5]
    assert len(tiny) / len(rows) > 0.8
    assert (tiny["bank_outcome"] == "declined").mean() > 0.4
    assert set(tiny["decline_code"].dropna()) <= {"14", "05", "54"}
    assert (rows["channel"] == "ecom").all()
    for _, burst in tiny.groupby("card_id"):
        if len(burst) >= 5:  # one burst: within minutes, one device, several merchants
            span = burst["timestamp"].max() - burst["timestamp"].min()
            assert span < pd.Timedelta(hours=1) or burst["device_id"].nunique() > 1
    assert tiny.groupby("card_id")["merchant_id"].nunique().max() >= 2


def test_stolen_card_is_foreign_and_large(history: pd.DataFrame) -> None:
    rows = pattern(history, "stolen_card")
    online = rows[rows["channel"] == "ecom"]
    assert (online["ip_country"] != online["card_country"]).all()
    assert (rows["shipping_country"] != rows["billing_country"]).all()
    assert rows["authenticated"].mean() < 0.3
    assert rows["amount"].median() > 3 * history.loc[history["label"] == 0, "amount"].median()
    known = set(history.loc[history["label"] == 0, "device_id"].dropna())
    assert not online["device_id"].isin(known).any()


def test_account_takeover_uses_stored_card_from_new_device(history: pd.DataFrame) -> None:
    rows = pattern(history, "account_takeover")
    assert rows["card_on_file"].all() and (rows["channel"] == "ecom").all()
    legit = history[history["label"] == 0]
    for card, spree in rows.groupby("card_id"):
        before = legit[(legit["card_id"] == card) & (legit["timestamp"] < spree["timestamp"].min())]
        assert not spree["device_id"].isin(before["device_id"]).any()
        assert spree["customer_id"].isin(legit["customer_id"]).all()  # the victim's own account
    assert rows["amount"].median() > 2 * legit["amount"].median()


def test_compromised_terminal_cards_were_seen_at_one_till(history: pd.DataFrame) -> None:
    rows = pattern(history, "compromised_terminal")
    assert (rows["channel"] == "pos").all() and (rows["payment_method"] == "magstripe").mean() > 0.5
    legit_pos = history[(history["label"] == 0) & (history["channel"] == "pos")]
    first_clone = rows.groupby("card_id")["timestamp"].min()
    tills = []
    for card, when in first_clone.items():
        seen = legit_pos[
            (legit_pos["card_id"] == card) & (legit_pos["timestamp"] < when - pd.Timedelta(days=2))
        ]
        tills.append(set(seen["terminal_id"]))
    common = set.intersection(*tills) if len(tills) > 1 else tills[0]
    # Cloned cards share a till used days before (the skimmer); the clones are spent elsewhere.
    assert common or pd.Series([t for s in tills for t in s]).value_counts().iloc[0] >= 2
    assert not rows["terminal_id"].isin(set.union(*tills)).all()


def test_collusive_merchant_concentrates_fraud(history: pd.DataFrame) -> None:
    rows = pattern(history, "collusive_merchant")
    merchants = rows["merchant_id"].unique()
    assert len(merchants) <= 5
    at = history[history["merchant_id"].isin(merchants)]
    # A merchant-risk feature built from labels has something to find.
    assert at["label"].mean() > 10 * history["label"].mean()
    assert rows["card_id"].nunique() > 0.8 * len(rows)  # many different stolen cards


# ----------------------------------------------------------------------------------- the sample


def test_sample_scale_is_fast() -> None:
    started = time.perf_counter()
    frame = simulate(days=60, cards=3000, merchants=300, seed=7)
    assert time.perf_counter() - started < 30
    assert 150_000 <= len(frame) <= 250_000
    if SAMPLE.exists():  # the committed sample is exactly what its README says it is
        pd.testing.assert_frame_equal(load_history(SAMPLE), load_history_like(frame))


def load_history_like(frame: pd.DataFrame) -> pd.DataFrame:
    """What load_history makes of a simulated frame: legitimate rows get the default label time."""
    out = frame.copy()
    legit = out["label_time"].isna()
    out.loc[legit, "label_time"] = out.loc[legit, "timestamp"] + pd.Timedelta(days=30)
    return out
