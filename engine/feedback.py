"""Feedback events: what the payment flow learns about a payment after it was scored.

One model per `kind`, joined as a union tagged by `kind` (`Feedback`): the OpenAPI then says by
itself (`oneOf` + `discriminator`) which fields each kind takes, so clients, generated code and
fuzzers read the same rule the service enforces.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_serializer,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from antifraud.engine.schema import Identifier, _utc
from antifraud.engine.vocabulary import (
    CHALLENGE_RESULTS,
    HISTORY_EVENT_OF_FEEDBACK,
    LABELS,
    OUTCOMES,
    ChallengeResult,
    FeedbackKind,
    FeedbackValue,
    HistoryEvent,
    Label,
    Outcome,
)

# RFC 3339 `date-time`, what the OpenAPI's `format: date-time` means (and what fuzzers check): pydantic
# alone would also take a number or a digit string as Unix time, a blank for the `T`, no seconds.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.fullmatch(value)):
        return value
    raise ValueError("must be an RFC 3339 date-time string with a UTC offset, e.g. 2026-01-31T12:00:00Z")


ReportedAt = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]

# The fields of a stored feedback record, in order: every kind has them all (null where they do
# not apply), so the feedback stream and its export keep one shape.
RECORD_FIELDS = ("transaction_id", "kind", "label", "outcome", "decline_code", "result", "reported_at")


class FeedbackEvent(BaseModel):
    """What every kind of feedback carries: the payment and when the news became known."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: Identifier
    kind: FeedbackKind  # each kind's model narrows it to its one value: the union's tag
    reported_at: ReportedAt

    @property
    def value(self) -> FeedbackValue:
        """What the kind says (the label, the bank's outcome or the challenge's result); None for a
        refund or a cancellation."""
        return None

    @property
    def feature_event(self) -> HistoryEvent | None:
        """The feature-state event this feedback feeds (`HISTORY_EVENT_OF_FEEDBACK`), if any."""
        return HISTORY_EVENT_OF_FEEDBACK.get((self.kind, self.value))

    @model_serializer(mode="wrap")
    def _record(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields = handler(self)
        return {name: fields.get(name) for name in RECORD_FIELDS}


class LabelFeedback(FeedbackEvent):
    """The truth about a payment: fraud, chargeback (fraud, from the bank) or legitimate."""

    kind: Literal["label"]
    label: Label

    @property
    def value(self) -> FeedbackValue:
        return self.label


class OutcomeFeedback(FeedbackEvent):
    """The bank's answer to the authorization request, with its decline code if any."""

    kind: Literal["outcome"]
    outcome: Outcome
    decline_code: Annotated[str, Field(max_length=8)] | None = None

    @property
    def value(self) -> FeedbackValue:
        return self.outcome


class RefundFeedback(FeedbackEvent):
    """The payment was refunded."""

    kind: Literal["refund"]


class CancelFeedback(FeedbackEvent):
    """The payment was cancelled."""

    kind: Literal["cancel"]


class ChallengeFeedback(FeedbackEvent):
    """How the payer did on the second factor a `challenge` verdict asked for. Taken only about a
    payment answered `challenge` (engine/feedback_intake.py); a failed one puts the payment in the
    review queue, and neither feeds a feature (engine/vocabulary.py says why)."""

    kind: Literal["challenge"]
    result: ChallengeResult

    @property
    def value(self) -> FeedbackValue:
        return self.result


KINDS: dict[FeedbackKind, type[FeedbackEvent]] = {
    "label": LabelFeedback,
    "outcome": OutcomeFeedback,
    "refund": RefundFeedback,
    "cancel": CancelFeedback,
    "challenge": ChallengeFeedback,
}
# the fields only some kinds take: field -> (its kind, its values)
_OWN_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "label": ("label", LABELS),
    "outcome": ("outcome", OUTCOMES),
    "decline_code": ("outcome", ()),
    "result": ("challenge", CHALLENGE_RESULTS),
}


def _choices(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _named(error: ErrorDetails) -> InitErrorDetails:
    """A validation error located at the field the client sent (pydantic puts the union's tag first,
    and reports a missing or unknown `kind` at the body), with a message that says what to send."""
    kind_choices = _choices(tuple(KINDS))
    type_, loc, message = error["type"], error["loc"], error["msg"]
    if type_ == "union_tag_not_found":
        type_, loc, message = "missing", ("kind",), f"kind is required: {kind_choices}"
    elif type_ == "union_tag_invalid":
        type_, loc, message = "literal_error", ("kind",), f"Input should be {kind_choices}"
    elif loc and loc[0] in KINDS:
        loc = loc[1:]
        field = loc[0] if len(loc) == 1 else None
        if isinstance(field, str) and field in _OWN_FIELDS:
            owner, values = _OWN_FIELDS[field]
            if type_ == "missing":
                message = f"{field} is required when kind is '{owner}': {_choices(values)}"
            elif type_ == "extra_forbidden":
                message = f"{field} is sent only when kind is '{owner}'"
    return {"type": PydanticCustomError(type_, message), "loc": loc, "input": error["input"]}


def _name_the_fields(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        raise ValidationError.from_exception_data("Feedback", [_named(e) for e in exc.errors()]) from None


# Something learned about an earlier payment; the body of POST /v1/feedback.
Feedback = Annotated[
    LabelFeedback | OutcomeFeedback | RefundFeedback | CancelFeedback | ChallengeFeedback,
    Discriminator("kind"),
    WrapValidator(_name_the_fields),
]
