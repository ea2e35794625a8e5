"""The payment simulator: determinism, schema, fraud patterns with their ground truth."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from antifraud.engine import cli
from antifraud.engine.schema import HISTORY_COLUMNS, TRANSACTION_COLUMNS, Transaction
from antifraud.training.history import load_history, write_history
from antifraud.training.simulator import FRAUD_PATTERNS, PRESET_NAMES, simulate
from antifraud.training.simulator_presets import LARGE_AMOUNT, MINIMAL_COLUMNS, PRESETS

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
    assert history["card_id"].str.fullmatch(r"card_[0-9a-f]{16}r?").all()  # r: a replacement card
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


# -------------------------------------------------------------------------------------- presets

PRESET_WORLDS = [name for name in PRESET_NAMES if name != "default"]
FULL_COLUMNS = [*TRANSACTION_COLUMNS, *HISTORY_COLUMNS, "fraud_pattern"]


@functools.cache
def world(name: str) -> pd.DataFrame:
    """Five weeks of a preset, simulated once per test session (tests must not modify it)."""
    return simulate(days=35, cards=800, merchants=80, seed=5, preset=name)


@pytest.fixture(params=PRESET_WORLDS)
def preset(request: pytest.FixtureRequest) -> tuple[str, pd.DataFrame]:
    return request.param, world(request.param)


def delays(frame: pd.DataFrame) -> pd.Series:
    fraud = frame[frame["label"] == 1]
    return (fraud["label_time"] - fraud["timestamp"]).dt.total_seconds() / 86_400


def test_default_preset_is_the_simulator_and_unknown_presets_are_refused() -> None:
    pd.testing.assert_frame_equal(
        simulate(days=10, cards=120, merchants=30, seed=11, preset="default"),
        simulate(days=10, cards=120, merchants=30, seed=11),
    )
    with pytest.raises(ValueError, match=r"unknown simulator preset 'nope'.*minimal"):
        simulate(days=10, cards=120, merchants=30, seed=11, preset="nope")
    assert set(PRESET_NAMES) == {"default", *PRESETS}


@pytest.mark.parametrize("name", PRESET_WORLDS)
def test_preset_is_deterministic(name: str) -> None:
    first = simulate(days=14, cards=300, merchants=40, seed=2, preset=name)
    pd.testing.assert_frame_equal(first, simulate(days=14, cards=300, merchants=40, seed=2, preset=name))
    other = simulate(days=14, cards=300, merchants=40, seed=3, preset=name)
    assert not first["card_id"].isin(other["card_id"]).any()


def test_preset_columns(preset: tuple[str, pd.DataFrame]) -> None:
    name, frame = preset
    if name == "minimal":
        assert list(frame.columns) == [*MINIMAL_COLUMNS, "fraud_pattern"]
        # A handbook world: every payment at a terminal, by a known customer, in one currency.
        assert frame["terminal_id"].notna().all() and frame["customer_id"].notna().all()
        assert set(frame["currency"]) == {"EUR"}
        assert frame.groupby("card_id")["customer_id"].nunique().max() == 1
    else:
        assert list(frame.columns) == FULL_COLUMNS
    assert frame["timestamp"].is_monotonic_increasing and frame["transaction_id"].is_unique
    assert (frame["amount"] > 0).all()


def test_preset_fraud_share_and_patterns(preset: tuple[str, pd.DataFrame]) -> None:
    name, frame = preset
    assert 0.005 <= frame["label"].mean() <= 0.015
    assert ((frame["fraud_pattern"] != "") == (frame["label"] == 1)).all()
    expected = {pattern for pattern, _ in PRESETS[name].patterns} | (
        {"large_amount"} if name == "minimal" else set()
    )
    assert set(frame["fraud_pattern"]) - {""} == expected
    # No single pattern is the whole story.
    assert frame.loc[frame["label"] == 1, "fraud_pattern"].value_counts(normalize=True).max() < 0.85


def test_preset_label_times(preset: tuple[str, pd.DataFrame]) -> None:
    name, frame = preset
    delay = delays(frame)
    assert (delay > 0).all()
    assert frame.loc[frame["label"] == 0, "label_time"].isna().all()
    if name == "minimal":
        assert (delay == 7).all()  # a fixed delay, to the millisecond
    elif name == "slow-labels":
        assert delay.between(2, 45).all() and 10 < delay.median() < 20 and delay.max() > 30
    elif name == "small-merchants":
        assert delay.between(2, 30).all()
    else:
        assert delay.between(3, 60).all()


def test_preset_round_trips_through_history_files(preset: tuple[str, pd.DataFrame], tmp_path: Path) -> None:
    name, frame = preset
    for file in ("h.parquet", "h.csv"):
        write_history(frame, tmp_path / file)
        loaded = load_history(tmp_path / file)
        assert list(loaded.columns) == FULL_COLUMNS
        pd.testing.assert_frame_equal(loaded[list(frame.columns)], load_history_like(frame))
        if name == "minimal":  # the other canonical columns are there, and empty
            absent = [c for c in FULL_COLUMNS if c not in frame.columns]
            assert loaded[absent].isna().all().all()


def test_minimal_fraud_carriers() -> None:
    frame = world("minimal")
    legit = frame[frame["label"] == 0]
    # Every payment above the threshold is fraud; those of the rule are nothing else.
    assert (frame.loc[frame["amount"] > LARGE_AMOUNT, "label"] == 1).all()
    assert (frame.loc[frame["fraud_pattern"] == "large_amount", "amount"] > LARGE_AMOUNT).all()
    # Compromised cards: five times their usual amount, at merchants they use.
    cards = frame[frame["fraud_pattern"] == "compromised_card"]
    usual = legit.groupby("card_id")["amount"].median()
    assert (cards["amount"] / cards["card_id"].map(usual)).median() > 3
    visited = set(zip(legit["card_id"], legit["merchant_id"], strict=True))
    assert (
        np.mean([pair in visited for pair in zip(cards["card_id"], cards["merchant_id"], strict=True)]) > 0.7
    )
    # Compromised terminals: most of their payments during the incident are fraud.
    terminal = frame[frame["fraud_pattern"] == "terminal_fraud"]
    for till, rows in terminal.groupby("terminal_id"):
        during = frame[
            (frame["terminal_id"] == till)
            & frame["timestamp"].between(rows["timestamp"].min(), rows["timestamp"].max())
        ]
        assert (during["fraud_pattern"] == "terminal_fraud").mean() > 0.3


def test_small_merchant_fraud_hides_at_quiet_tills() -> None:
    frame = world("small-merchants")
    rows = frame[frame["fraud_pattern"] == "small_terminal"]
    legit = frame[frame["label"] == 0]
    per_day = legit["terminal_id"].value_counts() / 35
    assert per_day.reindex(rows["terminal_id"].unique()).max() <= 7  # a few payments a day
    # Ordinary amounts and cards that paid at the till before: only the till's labels tell.
    for till, fraud in rows.groupby("terminal_id"):
        usual = legit.loc[legit["terminal_id"] == till, "amount"]
        assert 0.4 < fraud["amount"].median() / usual.median() < 2.5
    earlier = legit.groupby("card_id")["terminal_id"].agg(set)
    known = [
        till in earlier.get(card, set())
        for card, till in zip(rows["card_id"], rows["terminal_id"], strict=True)
    ]
    assert np.mean(known) > 0.5
    assert (rows["channel"] == "pos").all() and rows["ip"].isna().all()


def test_in_range_fraud_stays_in_the_cards_habits() -> None:
    frame = world("in-range")
    rows = frame[frame["label"] == 1]
    legit = frame[frame["label"] == 0]
    high = legit.groupby("card_id")["amount"].quantile(0.95)
    assert (rows["amount"] <= 2 * rows["card_id"].map(high)).mean() > 0.8  # no big-amount tell
    online = rows[rows["ip_country"].notna()]
    assert (online["ip_country"] == online["card_country"]).all()
    assert (
        rows["shipping_country"].dropna() == rows.loc[rows["shipping_country"].notna(), "card_country"]
    ).mean() > 0.7
    spree = rows[rows["fraud_pattern"] == "in_range_spree"]
    span = spree.groupby("card_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert (span <= pd.Timedelta(days=1)).all()


def test_presets_are_fast() -> None:
    for name in PRESET_WORLDS:
        started = time.perf_counter()
        simulate(days=60, cards=5000, merchants=500, seed=7, preset=name)
        assert time.perf_counter() - started < 20, name


@pytest.mark.parametrize("name", PRESET_WORLDS)
def test_cli_simulate_preset(name: str, tmp_path: Path) -> None:
    out = tmp_path / "history.csv"
    args = [
        "simulate",
        "--preset",
        name,
        "--days",
        "10",
        "--cards",
        "150",
        "--merchants",
        "30",
        "--seed",
        "4",
    ]
    result = CliRunner().invoke(cli.app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    loaded = load_history(out)
    assert loaded["label"].sum() > 0
    expected = simulate(days=10, cards=150, merchants=30, seed=4, preset=name)
    assert loaded["transaction_id"].tolist() == expected["transaction_id"].tolist()
    assert set(pd.read_csv(out, nrows=1).columns) == set(expected.columns)


def test_cli_refuses_an_unknown_preset(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["simulate", "--preset", "hard", "--out", str(tmp_path / "h.csv")])
    assert result.exit_code == 1
    assert "unknown --preset 'hard'" in result.output and "in-range" in result.output
    assert not (tmp_path / "h.csv").exists()


def test_a_card_with_reported_fraud_is_replaced_for_its_holder(history: pd.DataFrame) -> None:
    """After a card's first fraud is reported its holder pays with a new card; only fraud may follow
    on the old one."""
    fraud = history[history["label"] == 1]
    reported = fraud.groupby("card_id")["label_time"].min()
    closed_at = history["card_id"].map(reported)
    after = history[history["timestamp"] > closed_at]
    assert len(after) and (after["label"] == 1).all()
    replaced = history[history["card_id"].str.endswith("r")]
    assert len(replaced) and (replaced["label"] == 0).all()
    old = replaced["card_id"].str[:-1]
    assert (replaced["timestamp"].to_numpy() > old.map(reported).to_numpy()).all()
