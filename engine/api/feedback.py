"""POST /v1/feedback: what happened to a payment, stored and applied to the feature state.

A key scoped to merchants sends feedback only about payments it can see: a stored decision of one
of its merchants. Anything else (another merchant's payment, or a transaction id with no stored
decision) gets 403 and nothing is stored. The two get the same answer, so a scoped key cannot learn
that another merchant's transaction id exists; and an unknown id is refused because nothing proves
it is the key's merchant's: kept unmatched, it would be joined (by transaction id) to whichever
merchant's payment later carries that id. Unscoped keys keep feedback about unknown ids (`matched`
false), for chargebacks about payments the store no longer holds.

The payment's entities come from its idempotency record within the dedupe horizon, and from the
store after it (engine/decision_reads.py). The route is a plain `def`, run in FastAPI's thread pool,
so a store read never blocks the event loop where payments are scored. When the feedback buffer is
full (the decision sink down or far behind), the event is refused with 503 and Retry-After: it is
never accepted and then dropped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from antifraud.engine.api.deps import CallerDep, FeaturesDep, LogDep, MetricsDep, ReaderDep
from antifraud.engine.api.errors import ahead_of_clock
from antifraud.engine.api.models import ERRORS, UNAVAILABLE, FeedbackAccepted, Problem
from antifraud.engine.decision_reads import StoreUnavailable
from antifraud.engine.decisions import BufferFull
from antifraud.engine.feedback import Feedback

router = APIRouter()


@router.post(
    "/v1/feedback",
    response_model=FeedbackAccepted,
    status_code=202,
    responses={
        **ERRORS,
        403: {
            "model": Problem,
            "description": "The key's role may not send feedback, or the key is scoped to merchants "
            "and no decision of theirs is stored for this transaction",
        },
        **UNAVAILABLE,
    },
)
def feedback(
    request: Request,
    event: Feedback,
    log: LogDep,
    reader: ReaderDep,
    features: FeaturesDep,
    metrics: MetricsDep,
    caller: CallerDep,
) -> dict[str, Any] | JSONResponse:
    """Tell the engine what happened to a payment (label, bank outcome, refund, cancellation)."""
    if (refused := ahead_of_clock(request, "reported_at", event.reported_at)) is not None:
        return refused
    record = {**event.model_dump(mode="json"), "received_at": datetime.now(UTC).isoformat()}
    try:
        subject = reader.subject(event.transaction_id)
        if (
            caller is not None
            and caller.merchants is not None
            and (
                subject is None or subject.merchant_id is None or not caller.may_act_for(subject.merchant_id)
            )
        ):
            raise HTTPException(
                403,
                f"key {caller.name!r} may send feedback only about payments of its merchants; "
                f"none is stored for transaction {event.transaction_id!r}",
            )
        log.add_feedback(record)  # logged before the feature update: an accepted event is never lost
        if subject is not None and event.feature_event is not None:
            # the payment's own time: a fraud label counts among the payments of its time
            payment = {
                **subject.entities,
                "transaction_id": event.transaction_id,
                "timestamp": subject.timestamp,
            }
            features.feedback(event.feature_event, event.transaction_id, event.reported_at, payment)
    except BufferFull as exc:
        metrics.buffer_full.labels("feedback").inc()
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
    except (redis.RedisError, OSError, StoreUnavailable) as exc:
        metrics.redis_errors.inc()
        raise HTTPException(
            503, f"feedback store unavailable: retry later ({exc})", headers={"Retry-After": "1"}
        ) from exc
    metrics.feedback.labels(event.kind).inc()
    return {"transaction_id": event.transaction_id, "accepted": True, "matched": subject is not None}
