"""The API's answer schemas and the error answers every route documents."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from antifraud.engine.verdicts import Verdict


class Problem(BaseModel):
    """An error answer: what went wrong, and for 422 which field and why."""

    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not valid JSON"},
    401: {"model": Problem, "description": "Missing or unknown API key"},
    403: {"model": Problem, "description": "The key's role may not make this call"},
    413: {"model": Problem, "description": "The body is over the size limit"},
    422: {"model": Problem, "description": "A field is missing or invalid: detail names it"},
}


class FeedbackAccepted(BaseModel):
    transaction_id: str
    accepted: bool
    matched: bool = Field(description="the payment is known: its feature state was updated")


class ScoreResponse(BaseModel):
    """The answer to POST /v1/score."""

    transaction_id: str
    verdict: Verdict
    score: float | None = Field(description="probability of fraud, 0-1; null when the model was unavailable")
    risk_score: int | None = Field(description="score x 100, rounded")
    reasons: dict[str, Any]
    model_version: str | None
    rules_version: str
    degraded: list[str] = Field(description="what was missing; empty when every signal was there")
    timings: dict[str, float]
    test: bool = Field(description="a test payment: no counter moved, nothing stored")


ANSWER_FIELDS = tuple(ScoreResponse.model_fields)
