"""The API's answer schemas and the error answers every route documents.

The decision's parts are typed once, as the TypedDicts of engine/decision_record.py that the
pipeline builds and the log stores; the answers here are made of them, so the OpenAPI document,
a generated client and the stored record cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from antifraud.engine.decision_record import Decision, FeedbackRecord, Reasons, Timings
from antifraud.engine.verdicts import Verdict


class FieldError(BaseModel):
    """One refused field: where it is in the request, and why (never the value sent)."""

    loc: list[str | int] = Field(description='the field\'s path, e.g. ["body", "amount"]')
    msg: str
    type: str


class Problem(BaseModel):
    """An error answer: what went wrong; for 422, each refused field and why."""

    detail: str | list[FieldError]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not valid JSON"},
    401: {"model": Problem, "description": "Missing or unknown API key"},
    403: {"model": Problem, "description": "The key's role or merchant scope does not allow this call"},
    413: {"model": Problem, "description": "The body is over the size limit"},
    422: {"model": Problem, "description": "A field is missing or invalid: detail names it"},
}
#: the answer of a call that needs Redis when Redis cannot answer (scoring answers degraded instead)
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "Redis unavailable: retry later (see Retry-After)"},
}


class Conflict(BaseModel):
    """409: the request conflicts with what is stored about the transaction: a payment already decided
    with another body, or a challenge's result about a payment not answered `challenge`."""

    detail: str
    fields: list[str] = Field(
        description="the fields in conflict: those whose values differ from the decided payment's, "
        "or `kind` for a challenge's result"
    )


class FeedbackAccepted(BaseModel):
    """The answer to POST /v1/feedback: the event is stored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"transaction_id": "tx-20260301-0001", "accepted": True, "matched": True}]
        }
    )

    transaction_id: str
    accepted: bool
    matched: bool = Field(description="the payment is known: its feature state was updated")


class ScoreResponse(BaseModel):
    """The answer to POST /v1/score."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "transaction_id": "tx-20260301-0001",
                    "verdict": "review",
                    "score": 0.062,
                    "risk_score": 61,
                    "reasons": {
                        "rules": [
                            {"rule": "device_many_cards", "action": "review", "reason": "DEVICE_VELOCITY"}
                        ],
                        "shadow_rules": [],
                        "skipped_rules": [],
                        "model": [
                            {"feature": "device_distinct_cards_24h", "value": 4.0, "contribution": 1.7},
                            {"feature": "card_new_device", "value": 1.0, "contribution": 0.6},
                        ],
                    },
                    "model_version": "default-382b771cac1a",
                    "rules_version": "0e172ce2366b",
                    "degraded": [],
                    "timings": {"features_ms": 0.4, "model_ms": 0.02, "rules_ms": 0.01, "total_ms": 0.6},
                    "test": False,
                }
            ]
        }
    )

    transaction_id: str
    verdict: Verdict
    score: float | None = Field(description="probability of fraud, 0-1; null when the model was unavailable")
    risk_score: int | None = Field(
        description="0-100 on the calibrated scale of docs/api.md (the same meaning in every model version)"
    )
    reasons: Reasons
    model_version: str | None
    rules_version: str
    degraded: list[str] = Field(description="what was missing; empty when every signal was there")
    timings: Timings = Field(description="milliseconds per stage: features, model, rules, total, log")
    test: bool = Field(description="a test payment: no counter moved, nothing stored")


ANSWER_FIELDS = tuple(ScoreResponse.model_fields)


class StoredDecision(Decision):
    """The answer to GET /v1/decisions/{transaction_id}: the logged decision with its feedback."""

    feedback: list[FeedbackRecord]
