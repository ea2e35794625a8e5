"""The decision record: what the engine decided about a payment, as it is logged and answered.

`antifraud.engine.pipeline.Scorer` builds it, `antifraud.engine.decisions.DecisionStore` logs it (JSON),
`antifraud.engine.metrics`
counts it and `antifraud.engine.export` writes it to Parquet: each reads the keys declared here. The JSON
shape is the TypedDicts' own (key for key); NaN features are stored as null.

Low in the import graph: it imports only the vocabularies (engine.verdicts, engine.vocabulary), so
every reader can import it.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypeAlias, TypedDict

from antifraud.engine.verdicts import Verdict
from antifraud.engine.vocabulary import FeedbackKind, Label, Outcome


class FiredRuleRecord(TypedDict):
    """A rule whose condition held for the payment."""

    rule: str
    action: Verdict
    reason: str | None


class ContributionRecord(TypedDict):
    """One feature's share of the score (log-odds), computed when a decision is read (`explain`)."""

    feature: str
    value: float
    contribution: float


class Reasons(TypedDict):
    """Why the verdict: the rules that fired (live and shadow), those skipped for missing inputs,
    the model's contributions (empty in the log: they are computed on read) and, when a signal
    was missing, the fail policy that stood in for the score bands."""

    rules: list[FiredRuleRecord]
    shadow_rules: list[FiredRuleRecord]
    skipped_rules: list[str]
    model: list[ContributionRecord]
    fail_policy: NotRequired[Verdict]


class ShadowScore(TypedDict):
    """The shadow model's score of the payment (logged only, never answered)."""

    model_version: str
    score: float


#: the payment as validated, without the decision's top-level keys (transaction_id, timestamp, amount,
#: currency): its entity fields (engine.vocabulary.ENTITY_FIELDS), the other fields it was sent with, and
#: its `metadata`; the card as a token, never a raw card number
PaymentRecord: TypeAlias = dict[str, str | bool | dict[str, str | bool | int | float]]

#: milliseconds per stage: features_ms, model_ms, rules_ms, total_ms, then log_ms
Timings: TypeAlias = dict[str, float]


class Decision(TypedDict):
    """One decision, key for key as logged (keys in this order)."""

    transaction_id: str
    verdict: Verdict
    score: float | None  # None: no model loaded
    risk_score: int | None  # the score x 100, rounded
    reasons: Reasons
    model_version: str | None
    rules_version: str
    degraded: list[str]  # what was missing; empty when every signal was there
    timestamp: str  # the payment's time, ISO 8601
    decided_at: str  # ISO 8601, UTC
    payment: PaymentRecord
    amount: float
    currency: str
    features: dict[str, float | None]  # by feature name; null where missing
    shadow: NotRequired[ShadowScore]  # only for the payments in the shadow share
    timings: Timings
    test: bool  # a test payment: answered, never stored, counted in no live figure


class FeedbackRecord(TypedDict):
    """A feedback event as logged (engine.feedback.RECORD_FIELDS, then when it was received)."""

    transaction_id: str
    kind: FeedbackKind
    label: Label | None
    outcome: Outcome | None
    decline_code: str | None
    reported_at: str
    received_at: str


#: a logged record read back as an open JSON object: the API adds keys to a decision (its feedback,
#: the contributions computed on read) before it answers it, so it is no longer a `Decision`
JSONObject: TypeAlias = dict[str, Any]
