"""Purpose-made trouble for monitoring (issue 17): the simulator's drift options, the online/offline
consistency check against a real redis-server, and `antifraud monitor` flagging each trouble.

`antifraud monitor` runs on the committed model (models/default and its reference.json, profiled on
the sample's days 34-42) over the sample's world simulated again with drift from day 45: its
decisions are what the service logs for the period, made offline here (the same features: the
parity tests; the model's score and thresholds) and written as an export, with every label known."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feature_replay import replay_online
from typer.testing import CliRunner

from antifraud.engine import cli
from antifraud.engine.settings import ROOT
from antifraud.features.offline import OfflineFeatures
from antifraud.features.spec import load_spec
from antifraud.training.history import load_history, write_history
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.monitor.consistency import ConsistencyError, check
from antifraud.training.scoring import verdicts
from antifraud.training.simulator import Drift, simulate
from antifraud.training.simulator_drift import NEW_PATTERN

WORLD = {"days": 20, "cards": 400, "merchants": 40, "seed": 5}
AFTER = 12  # the drift day of these tests
DRIFT_MS = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=AFTER)


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return simulate(**WORLD)  # type: ignore[arg-type]


def drifted(*kinds: str, factor: float = 100.0, preset: str = "default") -> pd.DataFrame:
    return simulate(**WORLD, preset=preset, drift=Drift(AFTER, kinds, factor))  # type: ignore[arg-type]


def halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    later = frame["timestamp"] >= DRIFT_MS
    return frame[~later].reset_index(drop=True), frame[later].reset_index(drop=True)


# ------------------------------------------------------------------------------------ simulator


def test_without_drift_the_output_is_unchanged(clean: pd.DataFrame, tmp_path: Path) -> None:
    """The drift draws from a generator of its own: no option, no change (the committed sample,
    tests/test_simulator.py, relies on it too)."""
    write_history(clean, tmp_path / "a.parquet")
    write_history(simulate(**WORLD, drift=None), tmp_path / "b.parquet")  # type: ignore[arg-type]
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


@pytest.mark.parametrize(
    "kinds",
    [("new-fraud-pattern",), ("missing-device",), ("amount-scale",), ("missing-device", "amount-scale")],
)
def test_nothing_changes_before_the_drift_day(clean: pd.DataFrame, kinds: tuple[str, ...]) -> None:
    before, _ = halves(drifted(*kinds))
    pd.testing.assert_frame_equal(before, halves(clean)[0])
    pd.testing.assert_frame_equal(drifted(*kinds), drifted(*kinds))  # deterministic with the seed


def test_missing_device_drops_every_device_id_from_that_day(clean: pd.DataFrame) -> None:
    _, after = halves(drifted("missing-device"))
    assert after["device_id"].isna().all()
    assert halves(clean)[1]["device_id"].notna().mean() > 0.2
    pd.testing.assert_frame_equal(after.drop(columns="device_id"), halves(clean)[1].drop(columns="device_id"))


def test_amount_scale_multiplies_amounts_from_that_day(clean: pd.DataFrame) -> None:
    _, after = halves(drifted("amount-scale", factor=100))
    _, was = halves(clean)
    assert np.allclose(after["amount"], was["amount"] * 100)
    assert (after["currency"] == was["currency"]).all()
    _, tenfold = halves(drifted("amount-scale", factor=10))
    assert np.allclose(tenfold["amount"], was["amount"] * 10)


def test_new_fraud_pattern_is_fresh_cards_at_new_merchants_from_one_ip_range(clean: pd.DataFrame) -> None:
    frame = drifted("new-fraud-pattern")
    before, after = halves(frame)
    ring = after[after["fraud_pattern"] == NEW_PATTERN]
    assert not (before["fraud_pattern"] == NEW_PATTERN).any()
    share = len(ring) / len(halves(clean)[1])
    assert 0.008 < share < 0.025, share  # about NEW_PATTERN_SHARE of the later days
    assert (ring["label"] == 1).all() and (ring["label_time"] > ring["timestamp"]).all()
    assert not ring["card_id"].isin(before["card_id"]).any()  # cards never seen
    assert not ring["merchant_id"].isin(before["merchant_id"]).any()  # merchants opened that day
    assert ring["ip"].str.rsplit(".", n=2).str[0].nunique() == 1  # one /16
    assert ring["amount"].max() <= 40 * 11.2 and ring["amount"].median() < 30
    assert (ring["card_country"] == ring["ip_country"]).all() and (ring["channel"] == "ecom").all()
    # the other payments of the later days are the clean world's
    others = after[after["fraud_pattern"] != NEW_PATTERN].drop(columns=["transaction_id", "outcome_time"])
    expected = halves(clean)[1].drop(columns=["transaction_id", "outcome_time"])
    pd.testing.assert_frame_equal(others.reset_index(drop=True), expected)


def test_drift_works_on_presets() -> None:
    frame = drifted("new-fraud-pattern", "amount-scale", preset="slow-labels")
    assert (frame["fraud_pattern"] == NEW_PATTERN).any()
    clean = simulate(**WORLD, preset="slow-labels")  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(halves(frame)[0], halves(clean)[0])


def test_drift_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown drift kind"):
        Drift(3, ("currency",))
    with pytest.raises(ValueError, match="within the 20 simulated days"):
        simulate(**WORLD, drift=Drift(20, ("missing-device",)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        Drift(3, ("amount-scale",), 0.0)


def test_cli_simulate_with_drift(tmp_path: Path) -> None:
    out = tmp_path / "history.parquet"
    args = ["simulate", *(f"--{k}={v}" for k, v in WORLD.items()), f"--drift-after={AFTER}", f"--out={out}"]
    result = CliRunner().invoke(
        cli.app, [*args, "--drift", "missing-device,amount-scale", "--drift", "new-fraud-pattern"]
    )
    assert result.exit_code == 0, result.output
    expected = drifted("missing-device", "amount-scale", "new-fraud-pattern")
    assert load_history(out)["transaction_id"].tolist() == expected["transaction_id"].tolist()
    refused = CliRunner().invoke(cli.app, [*args[:-1], f"--out={tmp_path / 'x.parquet'}"])
    assert refused.exit_code == 1 and "go together" in refused.output


# ---------------------------------------------------------------------------------- consistency


@dataclass(frozen=True)
class Served:
    """Logged decisions as `check` reads them."""

    transaction_ids: np.ndarray
    degraded: np.ndarray
    features: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate(days=10, cards=300, merchants=30, seed=8)


@pytest.fixture
def served(small: pd.DataFrame, redis_client: redis.Redis) -> Served:
    """Every payment of `small` scored online on a real redis-server, as the decision log holds it."""
    names, values = replay_online(small, redis_client)
    return Served(
        small["transaction_id"].to_numpy(dtype=object),
        np.zeros(len(small), dtype=bool),
        {name: values[:, j] for j, name in enumerate(names)},
    )


def test_a_clean_run_has_no_mismatch(small: pd.DataFrame, served: Served) -> None:
    skews = check(served, small, sample=800, seed=1)
    assert [s.feature for s in skews] == load_spec().feature_names
    assert all(s.checked == 800 and s.mismatches == 0 and s.max_difference is None for s in skews)
    assert not any(s.alert(0.01) for s in skews)


def test_an_edited_feature_is_reported_with_its_share(small: pd.DataFrame, served: Served) -> None:
    """Some decisions' logged `card_count_24h` edited: that feature alone, at the edited share."""
    edited = served.features["card_count_24h"].copy()
    rows = np.arange(0, len(small), 20)  # 5 %
    edited[rows] += 1
    edited[rows[::10]] = np.nan  # some as a value that stopped arriving
    skewed = replace(served, features={**served.features, "card_count_24h": edited})
    everything = check(skewed, small, sample=len(small), seed=1)
    by_name = {s.feature: s for s in everything}
    skew = by_name["card_count_24h"]
    assert skew.checked == len(small) and skew.mismatches == rows.size
    assert skew.share == pytest.approx(rows.size / len(small)) and skew.alert(0.01)
    assert skew.max_difference == 1.0 and skew.served_missing == rows[::10].size
    assert skew.examples[0] == small["transaction_id"].iloc[rows[0]]  # a missing value first
    assert [s.feature for s in everything if s.mismatches] == ["card_count_24h"]
    sampled = {s.feature: s for s in check(skewed, small, sample=1000, seed=2)}["card_count_24h"]
    assert sampled.checked == 1000 and 0.02 < sampled.share < 0.08


def test_a_feature_served_from_another_spec_is_reported(
    small: pd.DataFrame, redis_client: redis.Redis
) -> None:
    """The service ran a spec whose merchant fraud-rate prior differs from the offline one: the merchant
    fraud rates mismatch on (nearly) every payment, and nothing else does."""
    base = load_spec()
    rates = tuple(replace(r, prior=0.05) if r.entity == "merchant" else r for r in base.label_rate)
    names, values = replay_online(small, redis_client, replace(base, label_rate=rates))
    served = Served(
        small["transaction_id"].to_numpy(dtype=object),
        np.zeros(len(small), dtype=bool),
        {name: values[:, j] for j, name in enumerate(names)},
    )
    skews = check(served, small, sample=1500, seed=3)
    flagged = {s.feature: s.share for s in skews if s.mismatches}
    assert set(flagged) == {n for n in base.feature_names if n.startswith("merchant_fraud_rate_")}, flagged
    assert min(flagged.values()) > 0.9


def test_degraded_and_unknown_decisions_are_left_out(small: pd.DataFrame, served: Served) -> None:
    degraded = np.zeros(len(small), dtype=bool)
    degraded[::2] = True
    half = replace(served, degraded=degraded)
    assert {s.checked for s in check(half, small, sample=len(small), seed=1)} == {len(small) - degraded.sum()}
    with pytest.raises(ConsistencyError, match="none of the"):
        check(served, small.iloc[:0], sample=10, seed=1)


# ------------------------------------------------------------------------------------ monitor

MODEL = ROOT / "models" / "default"
SAMPLE_WORLD = {"days": 60, "cards": 3000, "merchants": 300, "seed": 7}  # data/sample's
PERIOD = ("2026-02-16", "2026-02-23")  # Monday to Sunday: one ISO week, after the drift (day 45)


@pytest.fixture(scope="module")
def thresholds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The defaults, card_age_days ignored too: a simulated world starts with every card new, so the
    cards' age grows with the file (docs/monitoring.md, "Thresholds")."""
    path = tmp_path_factory.mktemp("thresholds") / "thresholds.yaml"
    path.write_text("ignore: [hour_of_day, day_of_week, card_age_days]\n")
    return path


def logged(history: pd.DataFrame, directory: Path) -> tuple[Path, Path]:
    """The period's decisions as the service logs them (an export's decisions_with_feedback.parquet,
    every label reported), and the history up to the period's end as a file."""
    model = ModelArtifact.load(MODEL, check_spec=False)
    before = history[history["timestamp"] < pd.Timestamp(PERIOD[1], tz="UTC")].reset_index(drop=True)
    period = (before["timestamp"] >= pd.Timestamp(PERIOD[0], tz="UTC")).to_numpy()
    features = OfflineFeatures().transform(before)[period]
    rows = before[period]
    scores = model.predict(features[model.features].to_numpy(dtype=float))
    fraud = rows["label"].to_numpy() == 1
    columns: dict[str, object] = {
        "transaction_id": rows["transaction_id"].to_numpy(dtype=str),
        "timestamp": pa.array(rows["timestamp"]),
        "verdict": verdicts(scores, model.thresholds).astype(str),
        "score": scores,
        "model_version": np.full(len(rows), model.version),
        "degraded": pa.nulls(len(rows), pa.string()),
        "shadow_model_version": pa.nulls(len(rows), pa.string()),
        "shadow_score": pa.nulls(len(rows), pa.float64()),
        "is_fraud": pa.array(np.where(fraud, True, None), pa.bool_()),
        "label_reported_at": pa.array(rows["label_time"].where(fraud)),
    }
    for name in model.features:  # named as the export names them (a decision's own `amount` is the payment's)
        columns[f"feature_{name}" if name == "amount" else name] = features[name].to_numpy(dtype=float)
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), directory / "decisions_with_feedback.parquet")
    write_history(before, directory / "history.parquet")
    return directory / "decisions_with_feedback.parquet", directory / "history.parquet"


def monitor(decisions: Path, thresholds: Path, *extra: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    out = decisions.parent / "report.json"
    args = ["monitor", "--model", str(MODEL), "--decisions", str(decisions), "--from", PERIOD[0]]
    args += ["--to", PERIOD[1], "--thresholds", str(thresholds), "--as-of", "2026-12-01", "--json", str(out)]
    result = CliRunner().invoke(cli.app, [*args, *extra])
    return result.exit_code, json.loads(out.read_text()) if out.exists() else {}, result.output


def alerts(report: dict, kind: str) -> set[str]:  # type: ignore[type-arg]
    return {f["subject"] for f in report["flags"] if f["kind"] == kind and f["level"] == "alert"}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return logged(simulate(**SAMPLE_WORLD), tmp_path_factory.mktemp("clean"))  # type: ignore[arg-type]


def test_monitor_is_quiet_on_a_clean_period(clean_run: tuple[Path, Path], thresholds: Path) -> None:
    code, report, output = monitor(clean_run[0], thresholds)
    assert code == 0, output
    assert not [f for f in report["flags"] if f["level"] == "alert"] and report["rows"] > 20_000
    [week] = report["weeks"]
    assert week["figures"]["recall_review"] > 0.8


def test_monitor_flags_a_skewed_online_feature(clean_run: tuple[Path, Path], thresholds: Path) -> None:
    """--history: the clean period's decisions match the history; with `card_count_24h` logged one too
    high on a tenth of them, that feature alone is an alert."""
    decisions, history = clean_run
    code, report, output = monitor(decisions, thresholds, "--history", str(history))
    assert code == 0, output
    assert (
        report["sections"]["consistency"]["sampled"] > 5000
        and f"all {len(load_spec().feature_names)} features match" in output
    )
    table = pq.read_table(decisions)
    count = table["card_count_24h"].to_numpy().copy()
    count[::10] += 1
    skewed = decisions.parent / "skewed" / decisions.name
    skewed.parent.mkdir()
    pq.write_table(
        table.set_column(table.schema.get_field_index("card_count_24h"), "card_count_24h", pa.array(count)),
        skewed,
    )
    code, report, output = monitor(skewed, thresholds, "--history", str(history))
    assert code == 3, output
    assert alerts(report, "skew_share") == {"card_count_24h"}
    [flag] = [f for f in report["flags"] if f["kind"] == "skew_share"]
    assert flag["value"] == pytest.approx(0.1, abs=0.01)  # a tenth edited, 10,000 drawn
    assert "card_count_24h: served and recomputed differ on" in output


def test_monitor_flags_missing_device_ids_and_scaled_amounts(thresholds: Path, tmp_path: Path) -> None:
    history = simulate(**SAMPLE_WORLD, drift=Drift(45, ("missing-device", "amount-scale")))  # type: ignore[arg-type]
    code, report, output = monitor(logged(history, tmp_path)[0], thresholds)
    assert code == 3, output
    device = {n for n in load_spec().feature_names if n.startswith("device_") or n == "card_new_device"}
    assert device <= alerts(report, "feature_missing"), output  # the device's features went missing
    amounts = {"amount", "card_amount_to_mean_30d", "card_sum_24h", "merchant_mean_1h"}
    assert amounts <= alerts(report, "feature_psi"), output  # the amounts' scale moved


def test_monitor_flags_a_new_fraud_pattern_in_live_performance(
    clean_run: tuple[Path, Path], thresholds: Path, tmp_path: Path
) -> None:
    """Fresh cards at new merchants: the inputs and the score barely move (no drift flag), but the
    model lets most of the scheme through, so the week's recall and AP fall far below the model's
    validation figures: live-performance alerts, exit 3. The clean week is judged too, and quiet."""
    history = simulate(**SAMPLE_WORLD, drift=Drift(45, ("new-fraud-pattern",)))  # type: ignore[arg-type]
    code, report, output = monitor(logged(history, tmp_path)[0], thresholds)
    _, clean, _ = monitor(clean_run[0], thresholds)
    [week], [was] = report["weeks"], clean["weeks"]
    assert week["frauds"] > was["frauds"] * 1.5, output
    assert week["figures"]["recall_review"] < was["figures"]["recall_review"] - 0.2, output
    assert week["figures"]["average_precision"] < was["figures"]["average_precision"] - 0.2, output
    assert code == 3, output
    assert {f["kind"] for f in report["flags"] if f["level"] == "alert"} == {"recall_drop", "ap_drop"}, output
    assert alerts(report, "recall_drop") == alerts(report, "ap_drop") == {"2026-W08"}
    assert report["score_psi"] < 0.1 and "alert: 2026-W08: recall at the review" in output
    baseline = report["baseline"]["figures"]  # models/default's validation, out of sample
    assert baseline["recall_review"] - week["figures"]["recall_review"] > 0.3
    assert not [n for n in clean["notes"] if "not judged" in n]  # the clean week was judged
    assert not [f for f in clean["flags"] if f["kind"] in ("recall_drop", "ap_drop", "fpr_rise")]
