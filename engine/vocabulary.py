"""The words the service, the feature executors and the training tools share, each said once.

- the feedback the API takes (`FeedbackKind`, its `Label`, `Outcome` and `ChallengeResult` values), the
  events a history's feedback columns record (`HistoryEvent`, at `EVENT_TIME_COLUMNS`), and the event each
  feeds in the feature state (`FeatureEvent`, by `FEATURE_EVENT`);
- the payment fields that key an entity (`ENTITY_FIELDS`): what a decision keeps of its payment so
  that later feedback reaches the same entities.

Like engine/verdicts.py it sits at the bottom of the import graph: it imports nothing from engine/ or
features/, so features/, engine/ and training/ can all import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, TypeAlias, get_args

# --- feedback, as the API takes it (engine/feedback.py) -------------------------------------------
FeedbackKind: TypeAlias = Literal["label", "outcome", "refund", "cancel", "challenge"]
Label: TypeAlias = Literal["fraud", "chargeback", "legitimate"]
Outcome: TypeAlias = Literal["approved", "declined"]
#: how the payer did on the second factor a `challenge` verdict asked for (3-D Secure or the like)
ChallengeResult: TypeAlias = Literal["passed", "failed"]
FEEDBACK_KINDS: Final[tuple[FeedbackKind, ...]] = get_args(FeedbackKind)
LABELS: Final[tuple[Label, ...]] = get_args(Label)
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
CHALLENGE_RESULTS: Final[tuple[ChallengeResult, ...]] = get_args(ChallengeResult)
#: the labels that say the payment was fraud (a chargeback is the bank's word for it)
FRAUD_LABELS: Final[frozenset[Label]] = frozenset({"fraud", "chargeback"})

# --- feedback, as a history records it and the feature state counts it -----------------------------
#: a feedback event of the stream (features/stream.py) and of OnlineFeatures.feedback
HistoryEvent: TypeAlias = Literal["decline", "refund", "cancel", "fraud"]
#: what the feature state counts (features/spec.yaml `feedback.event`): refunds and cancellations
#: are one `reversal`, counted once per payment
FeatureEvent: TypeAlias = Literal["decline", "reversal", "fraud"]
HISTORY_EVENTS: Final[tuple[HistoryEvent, ...]] = get_args(HistoryEvent)
FEATURE_EVENTS: Final[tuple[FeatureEvent, ...]] = get_args(FeatureEvent)
#: the history column holding the time each event became known; a row without that time has no
#: such event (training.history fills the defaults: outcome at the payment, label after a delay)
EVENT_TIME_COLUMNS: Final[Mapping[HistoryEvent, str]] = {
    "decline": "outcome_time",
    "refund": "refund_time",
    "cancel": "cancel_time",
    "fraud": "label_time",
}
#: the feature-state event each history event feeds
FEATURE_EVENT: Final[Mapping[HistoryEvent, FeatureEvent]] = {
    "decline": "decline",
    "refund": "reversal",
    "cancel": "reversal",
    "fraud": "fraud",
}
#: what a feedback event says: its label, the bank's outcome or the challenge's result (None for a
#: refund or a cancellation)
FeedbackValue: TypeAlias = Label | Outcome | ChallengeResult | None
#: API feedback (kind, its label or outcome) -> the history event it is; feedback not listed (a
#: legitimate label, an approval, a challenge's result) feeds no feature. A failed challenge is not a
#: decline: the bank never saw the payment, and the payer may simply have lost their phone; it sends
#: the payment to the review queue instead (engine/review/feed.py, docs/console.md)
HISTORY_EVENT_OF_FEEDBACK: Final[Mapping[tuple[FeedbackKind, FeedbackValue], HistoryEvent]] = {
    ("label", "fraud"): "fraud",
    ("label", "chargeback"): "fraud",
    ("outcome", "declined"): "decline",
    ("refund", None): "refund",
    ("cancel", None): "cancel",
}
#: the other way, for replaying a history over the API (engine/demo.py): the first feedback listed
FEEDBACK_OF_HISTORY_EVENT: Final[Mapping[HistoryEvent, tuple[FeedbackKind, FeedbackValue]]] = {
    event: feedback for feedback, event in reversed(list(HISTORY_EVENT_OF_FEEDBACK.items()))
}

# --- entities ------------------------------------------------------------------------------------
#: the payment fields an entity of features/spec.yaml may be keyed by: a decision keeps them
#: (engine/pipeline.py) so that feedback about the payment reaches its entities, and the export
#: writes one column each; the Scorer refuses a spec that keys an entity on any other field
ENTITY_FIELDS: Final[tuple[str, ...]] = (
    "card_id",
    "customer_id",
    "device_id",
    "ip",
    "email",
    "merchant_id",
    "terminal_id",
)
