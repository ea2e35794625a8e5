"""A reason for every verdict that is not allow: the score band with its code, the model's top
contributions (only for challenge, review and block decisions, logged right after the answer),
what replaced a challenge of an authenticated payment, and rules that read the payment's metadata.
Through `Scorer.score` and `Scorer.explain_stored` as the API calls them, with the real
models/default booster and a real redis-server; the decision is read back as the API reads it, through
the real sink and store (`DecisionReader`)."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import pytest
import redis
from payloads import score_request

from antifraud.engine.decision_reads import DecisionReader
from antifraud.engine.decision_record import Decision
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.model import ModelRuntime
from antifraud.engine.pipeline import Loaded, Scorer
from antifraud.engine.rules import RuleSet, rule_names, ruleset_from_texts
from antifraud.engine.schema import Transaction
from antifraud.engine.settings import ROOT
from antifraud.engine.sink import Sink
from antifraud.engine.store.parquet import ParquetStore
from antifraud.features.online import OnlineFeatures


@pytest.fixture(scope="module")
def model() -> ModelRuntime:
    return ModelRuntime(ROOT / "models" / "default")


def _rules(model: ModelRuntime, text: str) -> RuleSet:
    return ruleset_from_texts({"r.yaml": text}, rule_names(model.feature_names))


def _score(
    model: ModelRuntime, client: redis.Redis, rules_text: str, txid: str = "tx-1", **overrides: Any
) -> Decision:
    """The decision as the API reads it once the background step has run after the answer and the
    sink has written the buffer to the store."""
    scorer = Scorer(OnlineFeatures(client), DecisionLog(client), Loaded(model, _rules(model, rules_text)))
    answered = scorer.score(Transaction.model_validate(score_request(txid, **overrides)))
    assert answered["reasons"]["model"] == []  # never computed on the payment's path
    if scorer.needs_explaining(answered):
        scorer.explain_stored(answered)
    return _read_back(scorer.log, txid)


def _read_back(log: DecisionLog, txid: str) -> Decision:
    with tempfile.TemporaryDirectory() as directory:
        store = ParquetStore(directory)
        sink = Sink(log.client, store, block_ms=0, linger_ms=0)
        while sink.run_once():
            pass
        stored = DecisionReader(log, store).decision(txid)
        store.close()
    assert stored is not None
    return stored


def _top5(model: ModelRuntime, decision: Decision) -> list[tuple[str, float]]:
    """The five largest contributions by Booster.predict(pred_contrib=True) itself."""
    features = decision["features"]
    row = np.array([np.nan if features[n] is None else features[n] for n in model.feature_names])
    contrib = model.booster.predict(row.reshape(1, -1), pred_contrib=True)[0][:-1]
    order = np.argsort(-np.abs(contrib), kind="stable")[:5]
    return [(model.feature_names[i], float(contrib[i])) for i in order if contrib[i] != 0.0]


BLOCK_ALL = "score_bands: {scale: risk_score, review: 0, block: 0}\n"
ALLOW_ALL = "score_bands: {scale: risk_score, review: 100, block: 100}\n"
CHALLENGE_ALL = "score_bands: {scale: risk_score, challenge: 0, review: 100, block: 100}\n"


def test_a_band_block_carries_the_band_and_the_top_contributions(
    model: ModelRuntime, redis_client: redis.Redis
) -> None:
    decision = _score(model, redis_client, BLOCK_ALL)
    score = decision["score"]
    assert score is not None and decision["verdict"] == "block"
    assert decision["risk_score"] == model.risk_score(score)
    assert decision["reasons"]["band"] == {
        "band": "block",
        "code": "SCORE_BAND_BLOCK",
        "scale": "risk_score",
        "threshold": 0.0,
        "score": score,
        "risk_score": model.risk_score(score),
    }
    contributions = decision["reasons"]["model"]
    assert 0 < len(contributions) <= 5
    assert [(c["feature"], c["contribution"]) for c in contributions] == _top5(model, decision)
    for c in contributions:  # the value is the feature's, null where it was missing
        assert c["value"] == decision["features"][c["feature"]]


def test_an_allow_stays_cheap(model: ModelRuntime, redis_client: redis.Redis) -> None:
    decision = _score(model, redis_client, ALLOW_ALL)
    assert decision["verdict"] == "allow"
    assert decision["reasons"]["model"] == []
    assert "band" not in decision["reasons"]


def test_a_rule_block_in_the_allow_band_has_contributions_but_no_band(
    model: ModelRuntime, redis_client: redis.Redis
) -> None:
    text = ALLOW_ALL + "rules:\n  - {id: big, when: amount > 10, action: block, reason: BIG}\n"
    decision = _score(model, redis_client, text)
    assert decision["verdict"] == "block" and "band" not in decision["reasons"]
    assert decision["reasons"]["rules"] == [{"rule": "big", "action": "block", "reason": "BIG"}]
    assert [(c["feature"], c["contribution"]) for c in decision["reasons"]["model"]] == _top5(model, decision)


def test_the_band_on_the_score_scale_names_its_threshold(
    model: ModelRuntime, redis_client: redis.Redis
) -> None:
    decision = _score(model, redis_client, "score_bands: {review: 0, block: 1}\n")
    assert decision["verdict"] == "review"
    band = decision["reasons"]["band"]
    assert band["code"] == "SCORE_BAND_REVIEW" and band["scale"] == "score" and band["threshold"] == 0.0


def test_a_challenge_band_and_an_authenticated_payment(
    model: ModelRuntime, redis_client: redis.Redis
) -> None:
    challenged = _score(model, redis_client, CHALLENGE_ALL, "tx-1")
    assert challenged["verdict"] == "challenge"
    assert challenged["reasons"]["band"]["code"] == "SCORE_BAND_CHALLENGE"
    assert challenged["reasons"]["model"]  # a challenge is explained too
    # already authenticated: never challenged again; the default fallback allows (cheaply)
    allowed = _score(model, redis_client, CHALLENGE_ALL, "tx-2", minute=1, authenticated=True)
    assert allowed["verdict"] == "allow" and allowed["reasons"]["authenticated_fallback"] == "allow"
    assert "band" not in allowed["reasons"] and allowed["reasons"]["model"] == []
    # a stricter rule set reviews it instead, and says why
    strict = CHALLENGE_ALL + "authenticated_fallback: review\n"
    reviewed = _score(model, redis_client, strict, "tx-3", minute=2, authenticated=True)
    assert reviewed["verdict"] == "review" and reviewed["reasons"]["authenticated_fallback"] == "review"
    assert reviewed["reasons"]["band"]["band"] == "challenge"  # the band that asked for the challenge


METADATA_RULES = (
    ALLOW_ALL
    + """metadata: {loyalty_tier: string, order_count: number}
rules:
  - id: gold_first_orders
    when: metadata.loyalty_tier == 'gold' and metadata.order_count < 3
    action: review
  - {id: no_orders_known, when: "is_missing(metadata.order_count)", action: challenge}
"""
)


@pytest.mark.parametrize(
    ("metadata", "verdict", "fired", "skipped"),
    [
        ({"loyalty_tier": "gold", "order_count": 1}, "review", ["gold_first_orders"], []),
        ({"loyalty_tier": "gold", "order_count": 5}, "allow", [], []),
        # an absent key is missing: the rule reading it is skipped, is_missing sees it
        ({"loyalty_tier": "gold"}, "challenge", ["no_orders_known"], ["gold_first_orders"]),
        (None, "challenge", ["no_orders_known"], ["gold_first_orders"]),
        # a value of another type than declared is missing too ("1" is a string, not a number)
        (
            {"loyalty_tier": "gold", "order_count": "1"},
            "challenge",
            ["no_orders_known"],
            ["gold_first_orders"],
        ),
        # a boolean is not a number, and undeclared keys are ignored
        (
            {"loyalty_tier": "gold", "order_count": True, "other": 1},
            "challenge",
            ["no_orders_known"],
            ["gold_first_orders"],
        ),
    ],
)
def test_rules_read_the_payments_metadata(
    model: ModelRuntime,
    redis_client: redis.Redis,
    metadata: dict[str, Any] | None,
    verdict: str,
    fired: list[str],
    skipped: list[str],
) -> None:
    decision = _score(model, redis_client, METADATA_RULES, metadata=metadata)
    assert decision["verdict"] == verdict
    assert [f["rule"] for f in decision["reasons"]["rules"]] == fired
    assert decision["reasons"]["skipped_rules"] == skipped


def test_the_contributions_are_logged_beside_the_decision_and_merged_on_read(
    model: ModelRuntime, redis_client: redis.Redis
) -> None:
    log = DecisionLog(redis_client, record_ttl_ms=2 * 86_400_000)
    scorer = Scorer(OnlineFeatures(redis_client), log, Loaded(model, _rules(model, BLOCK_ALL)))
    decision = scorer.score(Transaction.model_validate(score_request("tx-9")))
    assert scorer.needs_explaining(decision)
    scorer.explain_stored(decision)
    # a second entry of the transaction in the decisions buffer, after the decision's own
    entries = redis_client.xrange("af:decisions")
    assert [sorted(fields) for _, fields in entries] == [[b"d"], [b"c"]]
    stored = _read_back(log, "tx-9")
    assert stored["reasons"]["model"] == scorer.explain(decision) != []
    # everything else as logged (the answer's timings also have log_ms), the features by name (the
    # scorer holds them as an array of its feature list, NaN where missing; read back, null)
    same = {k: v for k, v in decision.items() if k not in ("reasons", "timings", "feature_list")}
    names = scorer.features.feature_names
    same["features"] = {n: None if v != v else v for n, v in zip(names, decision["features"], strict=True)}
    assert {k: v for k, v in stored.items() if k not in ("reasons", "timings")} == same
    # the idempotency record is kept for the dedupe horizon, and answers a retry without explaining again
    assert 0 < redis_client.pttl("af:{tx:tx-9}:d") <= 2 * 86_400_000
    retry = scorer.score(Transaction.model_validate(score_request("tx-9")))
    assert retry["verdict"] == decision["verdict"] and not scorer.needs_explaining(retry)
