"""GET /v1/decisions/{transaction_id}: a stored decision, explained.

A key scoped to merchants reads only its merchants' decisions; another merchant's decision gets the
same 404 as one never stored, so a scoped key cannot learn that a transaction id exists elsewhere.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, HTTPException

from antifraud.engine.api.deps import CallerDep, ScorerDep, StoreDep
from antifraud.engine.api.models import ERRORS, UNAVAILABLE, Problem, StoredDecision

router = APIRouter()


@router.get(
    "/v1/decisions/{transaction_id}",
    response_model=None,  # documented by `responses` (StoredDecision); answered as stored, unvalidated
    responses={
        200: {"model": StoredDecision, "description": "The decision, its features and its feedback"},
        **ERRORS,
        404: {
            "model": Problem,
            "description": "No decision stored for this transaction (or it is another merchant's)",
        },
        **UNAVAILABLE,
    },
)
async def decision(
    transaction_id: str, store: StoreDep, scorer: ScorerDep, caller: CallerDep
) -> dict[str, Any]:
    """A stored decision with its features, reasons and any feedback."""
    try:
        found = store.get(transaction_id)
        if found is None or (caller is not None and not caller.may_act_for(found["payment"]["merchant_id"])):
            raise HTTPException(404, f"no decision stored for transaction {transaction_id!r}")
        found["feedback"] = store.feedback_for(transaction_id)
        # flagged answers carry their contributions already; the others get them on read, from
        # the model that decided (a note says so when that model is no longer loaded)
        if not found["reasons"].get("model"):
            try:
                found["reasons"]["model"] = scorer.explain(found)
            except LookupError as exc:
                found["reasons"]["model_note"] = f"contributions unavailable: {exc}"
    except (redis.RedisError, OSError) as exc:
        raise HTTPException(503, "decision store unavailable: retry later") from exc
    return found
