"""The decision record: what the engine decided about a payment, as it is logged and answered.

`antifraud.engine.pipeline.Scorer` builds it (a `DecisionEntry`, its features as an array),
`antifraud.engine.decisions.DecisionLog` logs it (JSON, engine/decision_entry.py), `antifraud.engine.metrics`
counts it, and the sink stores it with its features by name (a `Decision`), as every read gives it and
`antifraud.engine.export` writes it to Parquet: each reads the keys declared here. The JSON shape is
the TypedDicts' own (key for key); NaN features are stored as null.

Low in the import graph: it imports only the vocabularies (engine.verdicts, engine.vocabulary), so
every reader can import it.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypeAlias

# typing_extensions' TypedDict: pydantic builds the API's schemas from these (engine/api/models.py)
# and refuses typing's on Python 3.11
from typing_extensions import TypedDict

from antifraud.engine.verdicts import Verdict
from antifraud.engine.vocabulary import ChallengeResult, FeedbackKind, Label, Outcome


class FiredRuleRecord(TypedDict):
    """A rule whose condition held for the payment."""

    rule: str
    action: Verdict
    reason: str | None


class ContributionRecord(TypedDict):
    """One feature's share of the score (TreeSHAP, log-odds): among the top 5 by absolute value."""

    feature: str
    value: float | None  # the feature's value; null where it was missing
    contribution: float


#: the stable code of each score band's reason (SCORE_BAND_ + the band's verdict in capitals)
BandCode: TypeAlias = Literal["SCORE_BAND_CHALLENGE", "SCORE_BAND_REVIEW", "SCORE_BAND_BLOCK"]


class BandReason(TypedDict):
    """The score band as a reason: the payment's score fell in a challenge, review or block band."""

    band: Verdict  # the band's verdict: challenge, review or block (never allow)
    code: BandCode
    scale: Literal["score", "risk_score"]  # what the rule set's thresholds are written on
    threshold: float  # the band's lower bound, on `scale` (the merchant's own when it has one)
    score: float  # the model's score (0-1)
    risk_score: int  # the risk score (0-100)


class Reasons(TypedDict):
    """Why the verdict: the rules that fired (live and shadow), those skipped for missing inputs,
    the model's top contributions (only in challenge, review and block answers scored with every
    signal; empty otherwise), the score band when it flagged the payment, what replaced a challenge
    of an already authenticated payment and, when a signal was missing, the fail policy that stood
    in for the score bands."""

    rules: list[FiredRuleRecord]
    shadow_rules: list[FiredRuleRecord]
    skipped_rules: list[str]
    model: list[ContributionRecord]
    #: present when the verdict is not allow and the score's band is not allow
    band: NotRequired[BandReason]
    #: present when a challenge became this verdict because the payment was already authenticated
    authenticated_fallback: NotRequired[Literal["allow", "review"]]
    fail_policy: NotRequired[Verdict]
    #: only in a decision read back (GET /v1/decisions/{id}): why its contributions are missing
    model_note: NotRequired[str]


class ContributionsRecord(TypedDict):
    """A flagged decision's model contributions, logged as a second record of its transaction.

    They are computed right after the answer (TreeSHAP costs ~1.5 ms, too much for the hot path), so
    they cannot be in the decision's own log entry; the store keeps them beside the decision and its
    reads put them into `reasons.model`.
    """

    transaction_id: str
    timestamp: str  # the payment's time, ISO 8601: the store files them under the decision's day
    model_version: str  # the model that decided, and computed them
    contributions: list[ContributionRecord]


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


class Answer(TypedDict):
    """The answer to POST /v1/score, key for key (engine.api.models.ScoreResponse documents it)."""

    transaction_id: str
    verdict: Verdict
    score: float | None  # None: no model loaded
    risk_score: int | None  # 0-100: the model's RiskScale of the score (docs/rules.md); null with it
    reasons: Reasons
    model_version: str | None
    rules_version: str
    degraded: list[str]  # what was missing; empty when every signal was there
    timings: Timings
    test: bool  # a test payment: answered, never stored, counted in no live figure


class _Decided(Answer):
    """What every form of a decision holds besides its features: the answer, the payment, when."""

    timestamp: str  # the payment's time, ISO 8601
    decided_at: str  # ISO 8601, UTC
    payment: PaymentRecord
    amount: float
    currency: str
    shadow: NotRequired[ShadowScore]  # only for the payments in the shadow share


class Decision(_Decided):
    """One decision as it is read back and stored: the answer, the payment and its features by name
    (JSON keys in the order the pipeline builds them)."""

    features: dict[str, float | None]  # by feature name; null where missing


class DecisionEntry(_Decided):
    """A new decision as the scoring path builds it and the buffer holds it (engine/decision_entry.py):
    its features as an array in the order of a named feature list, which every reader maps back to
    names (a `Decision`). Its JSON keys are a `Decision`'s, `feature_list` just before `features`."""

    feature_list: str  # the id of the features' names (`feature_list_id`)
    features: list[float | None]  # in the list's order; NaN or null where missing


class IdempotencyRecord(TypedDict):
    """What Redis keeps of a decided payment for the feature spec's dedupe horizon (engine/decisions.py):
    enough to answer a retry, refuse a changed one, find the whole decision and apply feedback, in
    a few hundred bytes instead of the decision's kilobytes."""

    transaction_id: str
    verdict: Verdict
    score: float | None
    risk_score: int | None
    reasons: Reasons  # as answered: without the model's contributions
    model_version: str | None
    rules_version: str
    degraded: list[str]
    timestamp: str  # the payment's time: its day in the store
    payment_sha: str  # a digest of the validated payment: a retry with another body gets 409
    entities: dict[str, str]  # the payment's ENTITY_FIELDS: feedback updates the same entities
    stream_id: str | None  # the decision's entry in the buffer; null: the buffer was full


class FeedbackRecord(TypedDict):
    """A feedback event as logged (engine.feedback.RECORD_FIELDS, then when it was received)."""

    transaction_id: str
    kind: FeedbackKind
    label: Label | None
    outcome: Outcome | None
    decline_code: str | None
    result: NotRequired[ChallengeResult | None]  # a challenge's; absent from records logged before it
    reported_at: str
    received_at: str


class AuditRecord(TypedDict):
    """One action of a console user, as the audit stream holds it (engine/audit.py): who did what to
    what, when and from where. `actor` is the key's name ("" for a sign-in with an unknown key),
    `subject` what the action was about (a transaction id, a list, a rule file; "" for none) and
    `detail` the action's own facts (a note, a diff, the reason for a refusal)."""

    at: str  # ISO 8601, UTC
    actor: str
    role: str  # the key's role when the action was taken ("" when unknown)
    action: str  # e.g. signin, review.resolve, rules.promote (engine.audit.ACTIONS)
    subject: str
    detail: dict[str, Any]
    ip: str


#: a logged record read back as an open JSON object: the API adds keys to a decision (its feedback,
#: the contributions computed on read) before it answers it, so it is no longer a `Decision`
JSONObject: TypeAlias = dict[str, Any]
