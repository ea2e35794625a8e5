"""Feedback events: what the payment flow learns about a payment after it was scored."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from engine.schema import Identifier, _utc

# feedback (kind, value) -> the feature-state event it feeds, if any
FEATURE_EVENTS = {
    ("label", "fraud"): "fraud",
    ("label", "chargeback"): "fraud",
    ("outcome", "declined"): "decline",
    ("refund", None): "refund",
    ("cancel", None): "cancel",
}


class Feedback(BaseModel):
    """Something learned about an earlier payment."""

    # the schema says what the validator below enforces, so generated clients and fuzzers agree
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                    "then": {"properties": {kind: {"type": "string"}}, "required": [kind]},
                }
                for kind in ("label", "outcome")
            ]
        },
    )

    transaction_id: Identifier
    kind: Literal["label", "outcome", "refund", "cancel"]
    label: Literal["fraud", "chargeback", "legitimate"] | None = None
    outcome: Literal["approved", "declined"] | None = None
    decline_code: Annotated[str, Field(max_length=8)] | None = None
    reported_at: Annotated[datetime, AfterValidator(_utc)]

    @model_validator(mode="after")
    def _consistent(self) -> Feedback:
        if self.kind == "label" and self.label is None:
            raise ValueError("label is required when kind is 'label' (fraud, chargeback or legitimate)")
        if self.kind == "outcome" and self.outcome is None:
            raise ValueError("outcome is required when kind is 'outcome' (approved or declined)")
        return self

    @property
    def feature_event(self) -> str | None:
        value = self.label if self.kind == "label" else self.outcome if self.kind == "outcome" else None
        return FEATURE_EVENTS.get((self.kind, value))
