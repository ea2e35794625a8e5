"""POST /v1/feedback: what happened to a payment, stored and applied to the feature state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from fastapi import APIRouter, HTTPException

from antifraud.engine.api.deps import FeaturesDep, MetricsDep, StoreDep
from antifraud.engine.api.models import ERRORS, FeedbackAccepted, Problem
from antifraud.engine.feedback import Feedback

router = APIRouter()


@router.post(
    "/v1/feedback",
    response_model=FeedbackAccepted,
    status_code=202,
    responses={**ERRORS, 503: {"model": Problem, "description": "Redis unavailable: retry later"}},
)
async def feedback(
    event: Feedback, store: StoreDep, features: FeaturesDep, metrics: MetricsDep
) -> dict[str, Any]:
    """Tell the engine what happened to a payment (label, bank outcome, refund, cancellation)."""
    record = {**event.model_dump(mode="json"), "received_at": datetime.now(UTC).isoformat()}
    try:
        store.add_feedback(record)  # stored first: an accepted event is never lost
        decision = store.get(event.transaction_id)
        matched = decision is not None
        if matched and event.feature_event is not None:
            assert decision is not None
            # the payment's own time: a fraud label counts among the payments of its time
            payment = {
                **decision["payment"],
                "transaction_id": event.transaction_id,
                "timestamp": datetime.fromisoformat(decision["timestamp"]),
            }
            features.feedback(event.feature_event, event.transaction_id, event.reported_at, payment)
    except (redis.RedisError, OSError) as exc:
        metrics.redis_errors.inc()
        raise HTTPException(
            503, "feedback store unavailable: retry later", headers={"Retry-After": "1"}
        ) from exc
    metrics.feedback.labels(event.kind).inc()
    return {"transaction_id": event.transaction_id, "accepted": True, "matched": matched}
