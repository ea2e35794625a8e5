"""Backtests of rule sets on a small simulated history, with a tiny real LightGBM model (no mocks).

Every figure the backtest reports is checked against a direct pandas computation over the same
point-in-time features, and its verdicts against RuleSet.decide fed the way the service feeds it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from datetime import date
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from antifraud.engine.pipeline import _rule_env
from antifraud.engine.schema import TRANSACTION_COLUMNS, Transaction
from antifraud.engine.verdicts import IDENTITY, VERDICTS, RiskScale
from antifraud.features.offline import OfflineFeatures
from antifraud.features.spec import load_spec
from antifraud.training.backtest import (
    EXAMPLES,
    BacktestError,
    BacktestResult,
    Replay,
    backtest_rules,
    load_rules,
    replay_period,
    run_backtest,
)
from antifraud.training.backtest_report import print_report
from antifraud.training.history import write_history
from antifraud.training.metrics import expected_cost
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.simulator import simulate

START, END = date(2026, 1, 13), date(2026, 1, 21)  # the simulated history covers 2026-01-01..20


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulate(days=20, cards=400, merchants=40, seed=3)


@pytest.fixture(scope="module")
def model_dir(sim: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model on the spec's features, trained on the days before the backtest."""
    spec = load_spec()
    history = sim.sort_values("timestamp", kind="stable").reset_index(drop=True)
    before = (history["timestamp"] < pd.Timestamp(START, tz="UTC")).to_numpy()
    features = OfflineFeatures(spec).transform(history)[spec.feature_names]
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1, "seed": 1},
        lgb.Dataset(features[before], history["label"].to_numpy()[before]),
        num_boost_round=20,
    )
    metadata = {
        "features": spec.feature_names,
        "spec_digest": spec.digest,
        "data": {"train_start": "2026-01-01", "train_end": START.isoformat()},
    }
    return ModelArtifact(booster, metadata).save(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def top_merchant(sim: pd.DataFrame) -> str:
    return str(sim["merchant_id"].value_counts().index[0])


@pytest.fixture(scope="module")
def trusted_cards(sim: pd.DataFrame) -> list[str]:
    return sorted(sim["card_id"].unique())[:25]


def _rules_yaml(top_merchant: str, trusted: list[str], extra: str = "", velocity: int = 2) -> str:
    return f"""
score_bands:
  review: 0.3
  block: 0.8
  merchants:
    {top_merchant}: {{block: 0.5}}
lists:
  trusted_cards: [{", ".join(trusted)}]
rules:
  - id: velocity_small
    when: card_count_10m >= {velocity} and amount < 20
    action: block
    reason: CARD_TESTING
  - id: far_above_habit
    when: card_amount_to_mean_30d > 3
    action: review
  - id: unauthenticated_ecom
    description: reads payment fields that are also features (channel, authenticated)
    when: channel == 'ecom' and not authenticated and amount > 100
    action: review
  - id: trusted
    when: card_id in lists.trusted_cards
    action: allow
  - id: top_merchant_large
    when: amount > 50
    action: review
    merchants: [{top_merchant}]
  - id: watch_large
    when: amount > 200
    action: block
    mode: shadow
{extra}"""


def _write_rules(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yaml").write_text(text)
    return directory


@pytest.fixture(scope="module")
def rules_dirs(
    tmp_path_factory: pytest.TempPathFactory, top_merchant: str, trusted_cards: list[str]
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rules")
    new_rule = """
  - id: many_merchants
    when: card_distinct_merchants_1h >= 2
    action: block
"""
    shadows = """
  - id: shadow_block_everything
    when: amount >= 0
    action: block
    mode: shadow
  - id: shadow_allow_everything
    when: amount >= 0
    action: allow
    mode: shadow
"""
    return {
        "base": _write_rules(root / "base", _rules_yaml(top_merchant, trusted_cards)),
        "plus_one": _write_rules(root / "plus_one", _rules_yaml(top_merchant, trusted_cards, new_rule)),
        "looser": _write_rules(root / "looser", _rules_yaml(top_merchant, trusted_cards, velocity=3)),
        "shadows": _write_rules(root / "shadows", _rules_yaml(top_merchant, trusted_cards, shadows)),
        "live": _write_rules(
            root / "live",
            _rules_yaml(top_merchant, trusted_cards, shadows.replace("mode: shadow", "mode: live")),
        ),
        # bands on the risk-score scale with a challenge band, a challenge rule, a stricter
        # authenticated fallback and a metadata rule the history has no value for (skipped)
        "stepup": _write_rules(
            root / "stepup",
            _rules_yaml(top_merchant, trusted_cards, STEPUP_RULES)
            .replace(
                "  review: 0.3\n  block: 0.8\n",
                "  scale: risk_score\n  challenge: 10\n  review: 30\n  block: 80\n",
            )
            .replace("{block: 0.5}", "{block: 50}")
            .replace("lists:", "authenticated_fallback: review\nmetadata: {loyalty_tier: string}\nlists:", 1),
        ),
    }


STEPUP_RULES = """
  - id: mid_amount_challenge
    when: amount > 80 and amount < 150
    action: challenge
  - id: gold_members
    when: metadata.loyalty_tier == 'gold'
    action: allow
"""


@pytest.fixture(scope="module")
def replay(history_file: Path, model_dir: Path) -> Replay:
    return replay_period(history_file, START, END, model_dir)


@pytest.fixture(scope="module")
def base_result(replay: Replay, rules_dirs: dict[str, Path]) -> BacktestResult:
    return backtest_rules(replay, rules_dirs["base"])


def _direct_masks(
    replay: Replay, top_merchant: str, trusted: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(fired, skipped) of each base rule, computed with pandas from the replay's rows and features."""
    rows, f = replay.rows, replay.features
    amount = rows["amount"].to_numpy(dtype=float)
    count = f["card_count_10m"].to_numpy(dtype=float)
    ratio = f["card_amount_to_mean_30d"].to_numpy(dtype=float)
    channel = rows["channel"]
    authenticated = rows["authenticated"].astype("boolean")
    nothing = np.zeros(len(rows), dtype=bool)
    # rules read the payment's own channel and authenticated, never the features of the same name
    payment_missing = (channel.isna() | authenticated.isna()).to_numpy()
    unauthenticated = (~authenticated.fillna(True)).to_numpy(dtype=bool)
    scope = (rows["merchant_id"] == top_merchant).to_numpy()
    return {
        "velocity_small": ((count >= 2) & (amount < 20), np.isnan(count)),
        "far_above_habit": (np.isfinite(ratio) & (np.nan_to_num(ratio) > 3), ~np.isfinite(ratio)),
        "unauthenticated_ecom": (
            ~payment_missing & (channel == "ecom").to_numpy() & unauthenticated & (amount > 100),
            payment_missing,
        ),
        "trusted": (rows["card_id"].isin(trusted).to_numpy(), nothing),
        "top_merchant_large": (scope & (amount > 50), nothing),
        "watch_large": (amount > 200, nothing),
    }


# ------------------------------------------------------------------------------------- per rule


def test_rule_figures_match_a_direct_computation(
    replay: Replay, base_result: BacktestResult, top_merchant: str, trusted_cards: list[str]
) -> None:
    fraud = replay.rows["label"].to_numpy() == 1
    amount = replay.rows["amount"].to_numpy(dtype=float)
    masks = _direct_masks(replay, top_merchant, trusted_cards)
    stats = {r.rule_id: r for r in base_result.rules}
    assert list(stats) == list(masks)  # every rule, shadow included, in rule set order
    for rule_id, (fired, skipped) in masks.items():
        r = stats[rule_id]
        assert r.hits == fired.sum(), rule_id
        assert r.skipped == skipped.sum(), rule_id
        assert r.frauds == (fired & fraud).sum(), rule_id
        assert r.good_hits == (fired & ~fraud).sum(), rule_id
        assert r.fraud_amount == pytest.approx(amount[fired & fraud].sum()), rule_id
        assert r.hit_rate == pytest.approx(fired.sum() / len(replay)), rule_id
        assert r.precision == (pytest.approx((fired & fraud).sum() / fired.sum()) if fired.any() else None)
    # the fixture exercises what it means to: hits, misses, skips and frauds all occur
    assert stats["far_above_habit"].skipped > 0 and stats["unauthenticated_ecom"].skipped > 0
    assert stats["velocity_small"].frauds and stats["unauthenticated_ecom"].hits
    assert stats["watch_large"].shadow and stats["watch_large"].mode == "shadow"
    assert stats["top_merchant_large"].merchants == [top_merchant]


@pytest.mark.parametrize("which", ["base", "stepup"])
def test_verdicts_are_those_the_service_would_give(
    replay: Replay, rules_dirs: dict[str, Path], which: str
) -> None:
    """RuleSet.decide on the environment the service builds (engine.pipeline), row by row."""
    rules = load_rules(rules_dirs[which], replay.feature_names)
    result = backtest_rules(replay, rules, risk_scale=IDENTITY)  # the tiny model records no thresholds
    decisions = result.decisions
    assert decisions is not None
    if which == "stepup":
        mix = decisions["verdict"].value_counts()
        assert mix.get("challenge", 0) > 0 and mix.get("review", 0) > 0, mix  # both are exercised
        assert result.rules[-1].rule_id == "gold_members" and result.rules[-1].skipped == len(replay)
        assert (decisions["risk_score"] == IDENTITY.of_array(replay.scores)).all()
    picks = np.random.default_rng(3).choice(len(replay), size=400, replace=False)
    for i in picks:
        row = replay.rows.iloc[i]
        payment: dict[str, Any] = {name: row[name] for name in TRANSACTION_COLUMNS}
        payment = {k: (None if v is None or v is pd.NA or v != v else v) for k, v in payment.items()}
        payment["timestamp"] = row["timestamp"].to_pydatetime()
        payment = {k: bool(v) if isinstance(v, np.bool_) else v for k, v in payment.items()}
        txn = Transaction(**payment)
        values = replay.features.iloc[i].to_numpy(dtype=float)
        env = _rule_env(txn.model_dump(), replay.feature_names, values, rules)
        score = float(replay.scores[i])
        outcome = rules.decide(score, env, txn.merchant_id, risk_score=IDENTITY.of(score))
        assert outcome.verdict == decisions["verdict"].iloc[i], row["transaction_id"]


def test_risk_scale_bands_need_the_models_scale(replay: Replay, rules_dirs: dict[str, Path]) -> None:
    # the replay carries its model's scale (the tiny model records no thresholds: the identity)
    assert replay.risk_scale == IDENTITY
    with pytest.raises(BacktestError, match="risk_score scale"):
        backtest_rules(dataclasses.replace(replay, risk_scale=None), rules_dirs["stepup"])
    # a scale anchored elsewhere moves the bands with it: the same rule set, other verdicts
    low = backtest_rules(replay, rules_dirs["stepup"], risk_scale=RiskScale(0.01, 0.05))
    high = backtest_rules(replay, rules_dirs["stepup"])
    assert low.decisions is not None and high.decisions is not None
    assert (low.decisions["risk_score"] >= high.decisions["risk_score"]).all()
    assert low.verdicts["block"]["payments"] >= high.verdicts["block"]["payments"]


def test_verdict_mix_and_cost_reuse_the_evaluation_formula(
    replay: Replay, base_result: BacktestResult
) -> None:
    decisions = base_result.decisions
    assert decisions is not None
    verdicts = decisions["verdict"].to_numpy()
    assert sum(base_result.verdicts[v]["payments"] for v in VERDICTS) == len(replay) == base_result.payments
    for v in VERDICTS:
        assert base_result.verdicts[v]["payments"] == (verdicts == v).sum()
    labels = replay.rows["label"].to_numpy()
    amounts = replay.rows["amount"].to_numpy(dtype=float)
    assert base_result.cost == expected_cost(labels, verdicts, amounts, 2.0, 0.1, 0.5)
    assert base_result.cost_parameters == {
        "review_cost": 2.0,
        "block_cost_factor": 0.1,
        "challenge_cost": 0.5,
    }
    assert base_result.frauds == labels.sum() > 0
    assert base_result.model_version is not None and base_result.no_score_verdict is None


# ------------------------------------------------------------------------------- vs a baseline


def test_one_more_block_rule_changes_exactly_the_payments_it_hits(
    replay: Replay, rules_dirs: dict[str, Path], base_result: BacktestResult
) -> None:
    result = backtest_rules(replay, rules_dirs["plus_one"], rules_dirs["base"])
    c = result.comparison
    assert c is not None and result.decisions is not None and base_result.decisions is not None
    before = base_result.decisions["verdict"].to_numpy()
    after = result.decisions["verdict"].to_numpy()
    assert (result.decisions["baseline_verdict"].to_numpy() == before).all()
    hit = replay.features["card_distinct_merchants_1h"].to_numpy(dtype=float) >= 2
    moved = hit & (before != "block")
    assert moved.any()
    assert c.changed == moved.sum() == (before != after).sum()
    assert (after[moved] == "block").all() and (after[~moved] == before[~moved]).all()
    ids = replay.rows["transaction_id"].to_numpy()
    for a in VERDICTS:
        for b in VERDICTS:
            expected = ((before == a) & (after == b)).sum()
            assert c.matrix[a][b] == expected, (a, b)
    assert {(ch.before, ch.after) for ch in c.changes} == {
        (a, "block") for a in ("allow", "review") if c.matrix[a]["block"]
    }
    for ch in c.changes:
        direction = moved & (before == ch.before)
        assert ch.payments == direction.sum()
        assert ch.examples == list(ids[direction][:EXAMPLES])  # earliest first, at most EXAMPLES
        assert ch.frauds == (direction & (replay.rows["label"].to_numpy() == 1)).sum()
    assert c.rules_added == ["many_merchants"] and not c.rules_removed and not c.rules_changed
    assert not c.lists_changed and not c.bands_changed
    assert c.baseline_version == base_result.rules_version != result.rules_version
    assert c.baseline_cost == base_result.cost
    assert result.cost is not None and base_result.cost is not None and c.cost_difference is not None
    for part in ("total", "fraud_allowed", "reviews", "challenges", "legit_blocked"):
        assert c.cost_difference[part] == pytest.approx(result.cost[part] - base_result.cost[part])


def test_a_looser_threshold_only_releases_payments(
    replay: Replay, rules_dirs: dict[str, Path], base_result: BacktestResult
) -> None:
    result = backtest_rules(replay, rules_dirs["looser"], rules_dirs["base"])
    c = result.comparison
    assert c is not None
    assert c.rules_changed == ["velocity_small"] and not c.rules_added and not c.rules_removed
    assert c.changed > 0 and all(ch.before == "block" and ch.after != "block" for ch in c.changes)
    assert sum(ch.payments for ch in c.changes) == c.changed
    # the per-rule figures are the tested rule set's own
    assert result.rules[0].hits < base_result.rules[0].hits


def test_shadow_rules_never_change_a_verdict(replay: Replay, rules_dirs: dict[str, Path]) -> None:
    shadow = backtest_rules(replay, rules_dirs["shadows"], rules_dirs["base"])
    assert shadow.comparison is not None
    assert shadow.comparison.changed == 0 and not shadow.comparison.changes
    assert all(shadow.comparison.matrix[a][b] == 0 for a in VERDICTS for b in VERDICTS if a != b)
    assert shadow.cost == shadow.comparison.baseline_cost
    hits = {r.rule_id: r.hits for r in shadow.rules if r.shadow}
    assert hits == {
        "watch_large": hits["watch_large"],
        "shadow_block_everything": len(replay),
        "shadow_allow_everything": len(replay),
    }
    # the same rules live do change verdicts: the shadow mode, not the rules, kept them inert
    live = backtest_rules(replay, rules_dirs["live"], rules_dirs["base"])
    assert live.comparison is not None and live.comparison.changed > 0
    assert live.verdicts["block"]["payments"] == len(replay)


# ------------------------------------------------------------------ no model, no labels, errors


def test_without_a_model_rules_alone_decide_and_the_rest_is_allowed(
    history_file: Path, rules_dirs: dict[str, Path], top_merchant: str, trusted_cards: list[str]
) -> None:
    replay = replay_period(history_file, START, END)
    result = backtest_rules(replay, rules_dirs["base"])
    assert np.isnan(replay.scores).all() and result.model_version is None
    assert result.no_score_verdict == "allow" and result.to_json()["no_score_verdict"] == "allow"
    assert any("no_score_verdict='allow'" in w for w in result.warnings)
    m = {k: fired for k, (fired, _) in _direct_masks(replay, top_merchant, trusted_cards).items()}
    block = m["velocity_small"]
    allow = m["trusted"] & ~block
    review = (m["far_above_habit"] | m["unauthenticated_ecom"] | m["top_merchant_large"]) & ~block & ~allow
    assert result.verdicts["block"]["payments"] == block.sum()
    assert result.verdicts["review"]["payments"] == review.sum()
    assert result.verdicts["allow"]["payments"] == len(replay) - block.sum() - review.sum()


def test_a_history_without_labels_reports_hits_but_no_fraud_figures(
    sim: pd.DataFrame, rules_dirs: dict[str, Path], model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "unlabelled.csv"
    write_history(sim.drop(columns=["label", "label_time", "fraud_pattern"]), path)
    result = run_backtest(path, rules_dirs["plus_one"], START, END, model_dir, rules_dirs["base"])
    assert result.frauds is None and result.cost is None and result.fraud_amount is None
    assert all(r.precision is None and r.frauds is None and r.hits >= 0 for r in result.rules)
    assert result.comparison is not None and result.comparison.cost_difference is None
    assert result.comparison.changed > 0 and all(ch.frauds is None for ch in result.comparison.changes)
    assert any("no 'label' column" in w for w in result.warnings)
    json.dumps(result.to_json())
    print_report(result, Console(file=io.StringIO(), width=150))


def test_bad_inputs_raise_one_clear_backtest_error(
    history_file: Path, rules_dirs: dict[str, Path], tmp_path: Path
) -> None:
    base = rules_dirs["base"]
    with pytest.raises(BacktestError, match="must be before end"):
        run_backtest(history_file, base, START, START)
    with pytest.raises(BacktestError, match="not an ISO date"):
        run_backtest(history_file, base, "2026-02-30", END)  # type: ignore[arg-type]
    with pytest.raises(
        BacktestError, match=r"no payments in \[2025-01-01, 2025-02-01\); the file covers 2026-01-01"
    ):
        run_backtest(history_file, base, date(2025, 1, 1), date(2025, 2, 1))
    with pytest.raises(BacktestError, match="model directory not found"):
        run_backtest(history_file, base, START, END, model_dir=tmp_path / "nope")
    with pytest.raises(BacktestError, match=r"(?s)--baseline-rules .*not a directory"):
        run_backtest(history_file, base, START, END, baseline_rules_dir=tmp_path / "nope")
    bad = _write_rules(
        tmp_path / "bad",
        "score_bands: {review: 0.3, block: 0.8}\nrules:\n  - id: r1\n    when: amout > 5\n    action: deny\n"
        "  - id: r2\n    when: card_count_10m >= 'x'\n    action: block\n",
    )
    # rule sets are checked before the history is read: a typo fails fast, whatever the file
    with pytest.raises(BacktestError) as caught:
        run_backtest(tmp_path / "missing.parquet", bad, START, END)
    error = caught.value
    assert isinstance(error, ValueError)
    assert len(error.errors) == 3 and str(error).startswith(f"--rules {bad}: 3 error(s) in the rule set")
    assert "rules.yaml:4: [r1] when: unknown name 'amout' (did you mean 'amount'?)" in str(error)
    assert "rules.yaml:5: [r1] bad action 'deny'" in str(error) and "[r2]" in str(error)
    with pytest.raises(BacktestError, match="no such file"):
        run_backtest(tmp_path / "missing.parquet", base, START, END)


# ------------------------------------------------------------------------------ JSON and report


def test_run_backtest_equals_the_two_steps_and_its_json_is_plain(
    history_file: Path, model_dir: Path, rules_dirs: dict[str, Path], replay: Replay
) -> None:
    result = run_backtest(history_file, rules_dirs["plus_one"], START, END, model_dir, rules_dirs["base"])
    stepwise = backtest_rules(replay, rules_dirs["plus_one"], rules_dirs["base"])
    data = result.to_json()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert {k: v for k, v in data.items() if k != "timings"} == {
        k: v for k, v in stepwise.to_json().items() if k != "timings"
    }
    assert set(data) == {
        "history", "period", "payments", "frauds", "fraud_amount", "model_version", "no_score_verdict",
        "rules_dir", "rules_version", "cost_parameters", "rules", "verdicts", "cost", "comparison",
        "warnings", "timings",
    }  # fmt: skip
    assert data["period"] == {"start": "2026-01-13", "end": "2026-01-21"}
    assert data["rules_dir"] == str(rules_dirs["plus_one"])
    assert set(data["rules"][0]) == {
        "rule_id", "action", "mode", "reason", "merchants", "hits", "hit_rate", "frauds", "precision",
        "fraud_amount", "good_hits", "skipped", "shadow",
    }  # fmt: skip
    assert [r["rule_id"] for r in data["rules"] if r["shadow"]] == ["watch_large"]
    assert set(data["verdicts"]) == set(VERDICTS)
    assert set(data["cost"]) == {
        "total",
        "fraud_allowed",
        "reviews",
        "challenges",
        "legit_blocked",
        "allow_everything",
    }
    c = data["comparison"]
    assert c["baseline_rules_dir"] == str(rules_dirs["base"]) and c["rules_added"] == ["many_merchants"]
    assert {a: set(row) for a, row in c["matrix"].items()} == {a: set(VERDICTS) for a in VERDICTS}
    assert sum(sum(row.values()) for row in c["matrix"].values()) == data["payments"]
    for change in c["changes"]:
        assert set(change) == {"before", "after", "payments", "frauds", "amount", "fraud_amount", "examples"}
        assert 0 < len(change["examples"]) <= EXAMPLES and all(isinstance(i, str) for i in change["examples"])
    assert math.isclose(c["changed_share"], c["changed"] / data["payments"])
    assert not any("overlaps" in w for w in data["warnings"])  # the period starts at the training end


def test_print_report_shows_rules_verdicts_cost_and_changes(
    replay: Replay, rules_dirs: dict[str, Path]
) -> None:
    result = backtest_rules(replay, rules_dirs["plus_one"], rules_dirs["base"])
    console = Console(file=io.StringIO(), width=160, record=True)
    print_report(result, console)
    text = console.export_text()
    for expected in (
        "velocity_small",
        "watch_large (shadow)",
        "top_merchant_large (1 merchant(s) only)",
        "Verdicts",
        "Expected cost",
        "rules added: many_merchants",
        "Verdict changes",
        f"{result.comparison.changed:,} payments" if result.comparison else "",
        "-> block",
    ):
        assert expected in text, expected


def test_a_period_overlapping_training_is_flagged(history_file: Path, model_dir: Path) -> None:
    replay = replay_period(history_file, date(2026, 1, 10), date(2026, 1, 14), model_dir)
    assert any("overlaps the model's training period" in w for w in replay.warnings)
    assert any("less than 30 days" in w for w in replay.warnings)
