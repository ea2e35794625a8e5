"""The backtest pieces moved down to engine/costs.py and engine/rules/backtest.py: training's backtest
uses the same objects (so its figures are theirs), and the console's additions (frauds only one rule
caught, reviews per day, the bands alone) count what they say on a small frame worked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from antifraud.engine import costs
from antifraud.engine.rules import backtest as core
from antifraud.engine.rules import ruleset_from_texts
from antifraud.training import backtest as training_backtest
from antifraud.training import config, metrics

RULES = """
score_bands: {review: 0.5, block: 0.9}
lists:
  deny_cards: [card_bad]
rules:
  - id: deny_card
    when: card_id in lists.deny_cards
    action: block
  - id: big
    when: amount > 1000
    action: review
  - id: vip
    when: amount < 5
    action: allow
  - id: watch
    when: amount > 500
    action: block
    mode: shadow
"""
NAMES = {"card_id": "string", "amount": "number"}


def test_training_uses_the_moved_objects() -> None:
    assert metrics.expected_cost is costs.expected_cost and metrics.verdict_mix is costs.verdict_mix
    assert config.CostParameters is costs.CostParameters
    for name in ("RuleStats", "VerdictChange", "Comparison", "EXAMPLES"):
        assert getattr(training_backtest, name) is getattr(core, name)


def _frame() -> tuple[np.ndarray, dict[str, pd.Series], np.ndarray, np.ndarray]:
    # payment: 0 denied card (fraud), 1 big (fraud), 2 denied and big (fraud), 3 high score (fraud),
    # 4 small (legitimate), 5 big (legitimate)
    scores = np.array([0.1, 0.1, 0.1, 0.95, 0.1, 0.1])
    columns = {
        "card_id": pd.Series(["card_bad", "c1", "card_bad", "c3", "c4", "c5"]),
        "amount": pd.Series([50.0, 2000.0, 3000.0, 60.0, 2.0, 1500.0]),
    }
    fraud = np.array([True, True, True, True, False, False])
    return scores, columns, np.array(["m"] * 6, dtype=object), fraud


def test_frauds_only_this_rule_and_the_bands_alone() -> None:
    ruleset = ruleset_from_texts({"r.yaml": RULES}, NAMES)
    scores, columns, merchants, fraud = _frame()
    verdicts, fired, skipped = core.decide(
        ruleset, scores, columns, merchants, no_score_verdict=None, risk_scores=None
    )
    assert list(verdicts) == ["block", "review", "block", "block", "allow", "review"]
    band, _, _ = core.decide(
        core.band_alone(ruleset), scores, columns, merchants, no_score_verdict=None, risk_scores=None
    )
    assert list(band) == ["allow"] * 3 + ["block"] + ["allow"] * 2
    assert core.band_alone(ruleset).rules == () and core.band_alone(ruleset).lists == ruleset.lists
    # 0 only deny_card; 1 only big; 2 both (neither alone); 3 the band blocks anyway; vip allows
    assert core.frauds_only_this_rule(ruleset, fired, band, fraud) == {"deny_card": 1, "big": 1}
    stats = {
        s.rule_id: s for s in core.rule_stats(ruleset, fired, skipped, fraud, columns["amount"].to_numpy())
    }
    assert (stats["big"].hits, stats["big"].frauds, stats["big"].good_hits) == (3, 2, 1)
    assert stats["watch"].shadow and stats["watch"].hits == 3


def test_reviews_per_day_and_the_cost_against_a_baseline() -> None:
    verdicts = np.array(["review", "allow", "review", "review", "block"], dtype=object)
    days = np.array(["2026-12-04", "2026-12-04", "2026-12-05", "2026-12-05", "2026-12-06"], dtype=object)
    assert core.reviews_per_day(verdicts, days) == {"2026-12-04": 1, "2026-12-05": 2, "2026-12-06": 0}
    live = ruleset_from_texts({"r.yaml": RULES}, NAMES)
    tested = ruleset_from_texts({"r.yaml": RULES.replace("amount > 1000", "amount > 100")}, NAMES)
    scores, columns, merchants, fraud = _frame()
    amounts = columns["amount"].to_numpy()
    parameters: costs.CostParameters = {"review_cost": 5.0, "block_cost_factor": 0.1, "challenge_cost": 1.0}
    after, _, _ = core.decide(tested, scores, columns, merchants, no_score_verdict=None, risk_scores=None)
    before, _, _ = core.decide(live, scores, columns, merchants, no_score_verdict=None, risk_scores=None)
    cost = costs.expected_cost(fraud.astype(np.int8), after, amounts, **parameters)
    ids = np.array([f"tx-{i}" for i in range(6)], dtype=object)
    comparison = core.compare(ids, tested, after, live, before, "live", fraud, amounts, cost, parameters)
    assert comparison.changed == 0 and comparison.rules_changed == ["big"] and not comparison.bands_changed
    assert comparison.cost_difference == {
        k: 0.0 for k in ("total", "fraud_allowed", "reviews", "challenges", "legit_blocked")
    }
    mix = core.mix(after, None, amounts)
    assert mix["review"]["payments"] == 2 and mix["review"]["frauds"] is None
