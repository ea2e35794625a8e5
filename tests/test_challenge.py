"""The challenge verdict, the risk-score scale and metadata in rules: the verdict precedence table of
docs/rules.md case by case, the rule-set format's new keys and their errors, and the risk scale's
anchors (engine.verdicts.RiskScale) as the service and the backtests apply it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from antifraud.engine.model import ModelRuntime
from antifraud.engine.rules import RuleSet, RuleSetError, load_ruleset, rule_names, ruleset_from_texts
from antifraud.engine.rules.nodes import FieldType
from antifraud.engine.settings import ROOT
from antifraud.engine.verdicts import IDENTITY, SEVERITY, VERDICTS, RiskScale, band
from antifraud.features.spec import load_spec

NAMES: dict[str, FieldType] = {
    "blk": "bool",
    "alw": "bool",
    "rev": "bool",
    "chl": "bool",
    "authenticated": "bool",
    "amount": "number",
}
RULES = """
score_bands: {challenge: 0.2, review: 0.35, block: 0.8}
rules:
  - {id: r_block, when: blk, action: block}
  - {id: r_allow, when: alw, action: allow}
  - {id: r_review, when: rev, action: review}
  - {id: r_challenge, when: chl, action: challenge, reason: STEP_UP}
"""
BANDS = "score_bands: {review: 0.3, block: 0.8}\n"
# a score in each band: allow, challenge, review, block; None: no score
BAND_SCORE: dict[str | None, float | None] = {
    "allow": 0.1,
    "challenge": 0.25,
    "review": 0.5,
    "block": 0.9,
    None: None,
}


def _rules(text: str = RULES, names: dict[str, FieldType] = NAMES) -> RuleSet:
    return ruleset_from_texts({"r.yaml": text}, names)


def _env(*on: str, authenticated: bool | None = False) -> dict[str, Any]:
    env: dict[str, Any] = {n: n in on for n in ("blk", "alw", "rev", "chl")}
    env["authenticated"] = authenticated
    return env


# The table of docs/rules.md ("Verdict precedence"), row for row: (rules firing, band, authenticated,
# fallback) -> verdict. "any" rows are spelled out over every value.
PRECEDENCE = [
    # 1. a block rule wins over everything
    *[
        (("blk", *more), b, a, "allow", "block")
        for more in ((), ("alw", "rev", "chl"))
        for b in BAND_SCORE
        for a in (False, True)
    ],
    # 2. else an allow rule, over the model, review and challenge rules
    *[
        (("alw", *more), b, a, "review", "allow")
        for more in ((), ("rev", "chl"))
        for b in BAND_SCORE
        for a in (False, True)
    ],
    # 3. else the most severe of the band, review rules and challenge rules
    *[
        (("rev", *more), b, a, "allow", "review")
        for more in ((), ("chl",))
        for b in ("allow", "challenge", "review", None)
        for a in (False, True)
    ],
    *[(("rev",), "block", a, "allow", "block") for a in (False, True)],
    (("chl",), "allow", False, "allow", "challenge"),
    (("chl",), "challenge", False, "allow", "challenge"),
    (("chl",), None, False, "allow", "challenge"),
    *[(("chl",), b, a, "allow", b) for b in ("review", "block") for a in (False, True)],
    ((), "challenge", False, "allow", "challenge"),
    *[((), b, a, "allow", b) for b in ("allow", "review", "block") for a in (False, True)],
    *[((), None, a, "allow", None) for a in (False, True)],
    # 4. an authenticated payment is never challenged: the rule set's fallback answers
    *[(("chl",), b, True, f, f) for b in ("allow", "challenge", None) for f in ("allow", "review")],
    *[((), "challenge", True, f, f) for f in ("allow", "review")],
]


@pytest.mark.parametrize(("on", "band_", "authenticated", "fallback", "verdict"), PRECEDENCE)
def test_precedence(
    on: tuple[str, ...], band_: str | None, authenticated: bool, fallback: str, verdict: str | None
) -> None:
    rules = _rules(RULES + f"authenticated_fallback: {fallback}\n")
    outcome = rules.decide(BAND_SCORE[band_], _env(*on, authenticated=authenticated), "m")
    assert outcome.verdict == verdict
    assert outcome.band_verdict == band_
    replaced = verdict != "challenge" and outcome.verdict in ("allow", "review") and authenticated
    if replaced and outcome.authenticated_fallback is not None:
        assert outcome.authenticated_fallback == fallback
    # the vectorized twin agrees on the same row
    columns = {k: np.array([v], dtype=object) for k, v in _env(*on, authenticated=authenticated).items()}
    score = BAND_SCORE[band_]
    verdicts, _, _ = rules.decide_frame([math.nan if score is None else score], columns, ["m"])
    assert verdicts[0] == verdict


def test_the_fallback_is_recorded_only_when_it_replaced_a_challenge() -> None:
    rules = _rules()
    assert rules.authenticated_fallback == "allow"  # the default (docs/rules.md argues it)
    replaced = rules.decide(0.25, _env(authenticated=True), "m")
    assert replaced.verdict == "allow" and replaced.authenticated_fallback == "allow"
    assert rules.decide(0.25, _env(), "m").authenticated_fallback is None
    assert rules.decide(0.5, _env(authenticated=True), "m").authenticated_fallback is None
    # a missing authenticated is not authenticated
    assert rules.decide(0.25, _env(authenticated=None), "m").verdict == "challenge"


def test_a_challenge_fail_policy_respects_authentication() -> None:
    rules = _rules()
    assert rules.decide(None, _env(), "m", no_score_verdict="challenge").verdict == "challenge"
    assert rules.decide(None, _env(authenticated=True), "m", no_score_verdict="challenge").verdict == "allow"
    assert rules.decide(None, _env("rev"), "m", no_score_verdict="challenge").verdict == "review"


def test_severity_order_and_bands() -> None:
    assert VERDICTS == ("allow", "challenge", "review", "block")
    assert [SEVERITY[v] for v in VERDICTS] == [0, 1, 2, 3]
    scores = np.array([0.0, 0.1, 0.2, 0.35, 0.79, 0.8, np.nan])
    assert band(scores, 0.35, 0.8).tolist() == [0, 0, 0, 2, 2, 3, 0]  # no challenge band: never 1
    assert band(scores, 0.35, 0.8, 0.2).tolist() == [0, 0, 1, 2, 2, 3, 0]


def test_without_a_challenge_band_a_rule_set_behaves_and_hashes_as_before() -> None:
    # Versions computed by the code before the challenge verdict existed (commit 7b66f57): an older
    # rule set keeps its version, recorded with every decision made under it.
    spec_names = rule_names(load_spec().feature_names)
    fixture = load_ruleset(Path(__file__).parent / "data" / "rules", spec_names | {"card_std_30d": "number"})
    assert fixture.version == "aa02860606a1"
    assert fixture.bands.challenge is None and fixture.scale == "score"
    plain = _rules("score_bands: {review: 0.35, block: 0.8}\n")
    assert [plain.decide(s, _env(), None).verdict for s in (0.1, 0.25, 0.5, 0.9)] == [
        "allow",
        "allow",
        "review",
        "block",
    ]


def test_new_keys_change_the_version() -> None:
    base = "score_bands: {review: 0.35, block: 0.8}\n"
    versions = {
        _rules(base).version,
        _rules("score_bands: {challenge: 0.2, review: 0.35, block: 0.8}\n").version,
        _rules("score_bands: {scale: risk_score, review: 0.35, block: 0.8}\n").version,
        _rules(base + "authenticated_fallback: review\n").version,
        _rules(base + "metadata: {tier: string}\n").version,
    }
    assert len(versions) == 5
    assert _rules(base + "authenticated_fallback: allow\n").version == _rules(base).version  # the default


def test_merchant_challenge_bands() -> None:
    text = """
score_bands:
  challenge: 0.2
  review: 0.35
  block: 0.8
  merchants:
    m_strict: {challenge: 0.05}
    m_plain: {review: 0.5}
"""
    rules = _rules(text)
    assert rules.bands_for("m_strict").challenge == 0.05 and rules.bands_for("m_strict").review == 0.35
    assert rules.decide(0.1, _env(), "m_strict").verdict == "challenge"
    assert rules.decide(0.1, _env(), "other").verdict == "allow"
    assert rules.decide(0.4, _env(), "m_plain").verdict == "challenge"  # inherits challenge 0.2
    verdicts, _, _ = rules.decide_frame(
        [0.1, 0.1, 0.4], {"authenticated": [False, False, True]}, ["m_strict", "other", "m_plain"]
    )
    assert verdicts.tolist() == ["challenge", "allow", "allow"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "score_bands: {challenge: 0.5, review: 0.35, block: 0.8}",
            "challenge (0.5) must not be above review",
        ),
        (
            "score_bands: {challenge: 1.5, review: 0.35, block: 0.8}",
            "challenge must be a number between 0 and 1",
        ),
        (
            "score_bands: {scale: risk_score, review: 50, block: 180}",
            "between 0 and 100 (the bands are on the risk_score scale)",
        ),
        (
            "score_bands: {scale: percent, review: 0.3, block: 0.8}",
            "bad score_bands.scale 'percent': use score | risk_score",
        ),
        ("score_bands: {review: 35, block: 80}", "review must be a number between 0 and 1"),
        (
            "score_bands:\n  review: 0.3\n  block: 0.8\n  merchants:\n    m1: {challenge: 0.4}",
            "merchant m1: challenge (0.4) must not be above review (0.3)",
        ),
        (
            "score_bands: {review: 0.3, block: 0.8}\nauthenticated_fallback: block",
            "bad authenticated_fallback 'block': use allow | review",
        ),
        ("score_bands: {review: 0.3, block: 0.8}\nmetadata: {Tier: string}", "bad metadata key 'Tier'"),
        (
            "score_bands: {review: 0.3, block: 0.8}\nmetadata: {tier: text}",
            "bad metadata.tier type 'text': use number | string | bool",
        ),
        (
            "score_bands: {review: 0.3, block: 0.8}\nmetadata: [tier]",
            "metadata maps the keys rules read to a type",
        ),
        (
            "score_bands: {review: 0.3, block: 0.8}\nmetadata: {tier: string}\nrules:\n"
            "  - {id: r, when: metadata.teir == 'gold', action: allow}",
            "unknown metadata key 'teir' (did you mean 'tier'?)",
        ),
        (
            BANDS + "rules:\n  - {id: r, when: metadata.tier == 'gold', action: allow}",
            "unknown metadata key 'tier': declare it with its type under metadata: in a rules file",
        ),
        (
            BANDS + "metadata: {tier: string}\nrules:\n  - {id: r, when: metadata == 'x', action: allow}",
            "'metadata' must be followed by a key: metadata.KEY",
        ),
        (
            BANDS + "metadata: {tier: string}\nrules:\n  - {id: r, when: metadata.tier > 3, action: allow}",
            "when:",  # a string compared with a number: the checker's usual type error
        ),
    ],
)
def test_rule_set_errors(text: str, message: str) -> None:
    with pytest.raises(RuleSetError) as raised:
        _rules(text)
    assert any(message in e.message for e in raised.value.errors), [e.message for e in raised.value.errors]


def test_keys_defined_twice_across_files() -> None:
    files = {
        "a.yaml": BANDS + "authenticated_fallback: review\nmetadata: {tier: string}\n",
        "b.yaml": "authenticated_fallback: allow\nmetadata: {tier: number}\n",
    }
    with pytest.raises(RuleSetError) as raised:
        ruleset_from_texts(files, NAMES)
    messages = [e.message for e in raised.value.errors]
    assert any("authenticated_fallback is already defined at a.yaml:2" in m for m in messages), messages
    assert any("metadata key 'tier' is already declared at a.yaml:3" in m for m in messages), messages


# -------------------------------------------------------------------------------- metadata in rules

METADATA = """
score_bands: {review: 0.35, block: 0.8}
metadata: {tier: string, orders: number, vip: bool}
rules:
  - {id: gold, when: "metadata.tier == 'gold'", action: allow}
  - {id: new_buyer, when: "metadata.orders < 2", action: challenge}
  - {id: vip_or_unknown, when: "coalesce(metadata.vip, false)", action: review}
"""


@pytest.mark.parametrize(
    ("metadata", "verdict", "skipped"),
    [
        ({"tier": "gold", "orders": 0}, "allow", []),
        ({"tier": "silver", "orders": 1}, "challenge", []),
        ({"tier": "silver", "orders": 7, "vip": True}, "review", []),
        ({}, "allow", ["gold", "new_buyer"]),  # absent: missing, the rule is skipped (never false)
        (None, "allow", ["gold", "new_buyer"]),
        ({"tier": 3, "orders": "1", "vip": 1}, "allow", ["gold", "new_buyer"]),  # wrong types: missing
        ({"tier": "silver", "orders": 1.5, "extra": "x"}, "challenge", []),
    ],
)
def test_metadata_rules_online_and_offline(
    metadata: dict[str, Any] | None, verdict: str, skipped: list[str]
) -> None:
    names = dict(NAMES)
    rules = _rules(METADATA, names)
    outcome = rules.decide(0.1, rules.metadata_env(metadata), None)
    assert outcome.verdict == verdict and outcome.skipped == skipped
    # a backtest reads the same from a `metadata` column of dicts (rule_environment), or from
    # metadata.KEY columns, wrong types made missing as online
    from antifraud.engine.rules import rule_environment

    rows = pd.DataFrame({"metadata": [metadata], "amount": [1.0]})
    columns = rule_environment(rows, pd.DataFrame(index=rows.index))
    verdicts, _, skipped_matrix = rules.decide_frame([0.1], columns, [None])
    assert verdicts[0] == verdict
    assert [r.id for j, r in enumerate(rules.rules) if skipped_matrix[0, j]] == skipped


def test_metadata_columns_of_a_history() -> None:
    rules = _rules(METADATA)
    columns = {
        "metadata.tier": pd.Series(["gold", None, "silver", "silver"]),
        "metadata.orders": pd.Series([5, 1, 1, 9], dtype="int64"),  # a plain numeric column
    }
    verdicts, _, _ = rules.decide_frame([0.1] * 4, columns, [None] * 4)
    assert verdicts.tolist() == ["allow", "challenge", "challenge", "allow"]


# --------------------------------------------------------------------------------------- risk scale


def test_the_risk_scale_is_anchored_and_monotone() -> None:
    scale = RiskScale(0.0013, 0.106)
    assert [scale.of(s) for s in (0.0, 0.0013, 0.106, 1.0)] == [0, 50, 80, 100]
    assert scale.of(math.nextafter(0.0013, 0)) == 49 and scale.of(math.nextafter(0.106, 0)) == 79
    assert scale.of(None) is None and scale.of(math.nan) is None
    grid = np.concatenate([np.linspace(0, 1, 200_001), np.random.default_rng(1).random(50_000) ** 6])
    grid.sort()
    risks = scale.of_array(grid)
    assert (np.diff(risks) >= 0).all() and risks.min() == 0 and risks.max() == 100
    assert risks.tolist() == [scale.of(float(s)) for s in grid]  # online and offline agree exactly
    # risk >= 50 exactly when score >= the review threshold; risk >= 80 exactly at block
    assert ((risks >= 50) == (grid >= 0.0013)).all() and ((risks >= 80) == (grid >= 0.106)).all()
    assert np.isnan(scale.of_array(np.array([np.nan]))[0])
    for risk in (0, 25, 50, 58, 80, 95, 100):
        assert scale.of(scale.score_at(risk)) in (risk, risk - 1)  # float rounding may floor below


@pytest.mark.parametrize(
    "thresholds",
    [
        None,
        {},
        {"review": 0.3},
        {"review": 0.5, "block": 0.2},
        {"review": 0.0, "block": 0.5},
        {"review": "x", "block": 1},
    ],
)
def test_a_model_without_usable_thresholds_gets_the_identity_scale(thresholds: Any) -> None:
    assert RiskScale.from_thresholds(thresholds) == IDENTITY
    assert [IDENTITY.of(s) for s in (0.0, 0.5, 0.8, 0.999, 1.0)] == [0, 50, 80, 99, 100]
    with pytest.raises(ValueError):
        RiskScale(0.5, 0.2)


def test_the_service_model_uses_its_recorded_thresholds() -> None:
    model = ModelRuntime(ROOT / "models" / "default")
    t = model.metadata["thresholds"]
    assert model.risk_scale == RiskScale(t["review"], t["block"])
    assert model.risk_score(t["review"]) == 50 and model.risk_score(t["block"]) == 80


def test_bands_on_the_risk_scale_read_the_risk_score() -> None:
    rules = _rules("score_bands: {scale: risk_score, challenge: 50, review: 58, block: 80}\n")
    scale = RiskScale(0.0013, 0.106)
    for score, verdict in ((0.001, "allow"), (0.0013, "challenge"), (0.03, "review"), (0.106, "block")):
        outcome = rules.decide(score, _env(), None, risk_score=scale.of(score))
        assert outcome.verdict == verdict, score
    # the risk score missing: no band, as for a missing score
    assert rules.decide(0.5, _env(), None).verdict is None
    with pytest.raises(ValueError, match="risk_scores"):
        rules.decide_frame([0.5], {}, [None])
    verdicts, _, _ = rules.decide_frame(
        [0.001, 0.03], {}, [None, None], risk_scores=scale.of_array(np.array([0.001, 0.03]))
    )
    assert verdicts.tolist() == ["allow", "review"]


def test_the_default_rule_set_is_on_the_risk_scale() -> None:
    rules = load_ruleset(ROOT / "rules", rule_names(load_spec().feature_names))
    assert rules.scale == "risk_score" and rules.bands.challenge is not None
    assert rules.authenticated_fallback == "allow"
