"""POST /v1/feedback: what happened to a payment, stored and applied to the feature state.

What it does is `engine/feedback_intake.py`'s, which the console's review resolution shares: a key
scoped to merchants sends feedback only about its merchants' stored decisions (403 otherwise,
nothing stored), a challenge's result about a payment not answered `challenge` is a 409 naming
`kind`, and a full feedback buffer refuses the event with 503 and Retry-After. The route is
a plain `def`, run in FastAPI's thread pool, so a store read never blocks the event loop where
payments are scored.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from antifraud.engine.api.deps import CallerDep, FeaturesDep, LogDep, MetricsDep, ReaderDep
from antifraud.engine.api.errors import ahead_of_clock, conflict
from antifraud.engine.api.models import ERRORS, UNAVAILABLE, Conflict, FeedbackAccepted, Problem
from antifraud.engine.decision_reads import StoreUnavailable
from antifraud.engine.decisions import BufferFull
from antifraud.engine.feedback import Feedback
from antifraud.engine.feedback_intake import FeedbackIntake, NotChallenged, NotYours

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
        409: {
            "model": Conflict,
            "description": "A challenge's result about a payment not answered `challenge`, or with no "
            "known decision: nothing is stored; `fields` names `kind`",
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
    """Tell the engine what happened to a payment (label, bank outcome, refund, cancellation, or the
    result of the challenge it was answered)."""
    if (refused := ahead_of_clock(request, "reported_at", event.reported_at)) is not None:
        return refused
    intake = FeedbackIntake(log, reader, features, metrics)
    try:
        matched = intake.accept(event, caller.merchants if caller else None, caller.name if caller else "")
    except NotYours as exc:
        raise HTTPException(403, str(exc)) from exc
    except NotChallenged as exc:
        # the body is valid; what it says conflicts with the stored decision, as a changed retry's does
        return conflict(str(exc), ["kind"])
    except BufferFull as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
    except (redis.RedisError, OSError, StoreUnavailable) as exc:
        raise HTTPException(
            503, f"feedback store unavailable: retry later ({exc})", headers={"Retry-After": "1"}
        ) from exc
    return {"transaction_id": event.transaction_id, "accepted": True, "matched": matched}
