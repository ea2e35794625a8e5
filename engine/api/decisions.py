"""GET /v1/decisions/{transaction_id}: a stored decision, explained.

A key scoped to merchants reads only its merchants' decisions; another merchant's decision gets the
same 404 as one never stored, so a scoped key cannot learn that a transaction id exists elsewhere.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, HTTPException

from antifraud.engine.api.deps import CallerDep, ScorerDep, StoreDep
from antifraud.engine.api.models import ERRORS, Problem

router = APIRouter()


@router.get(
    "/v1/decisions/{transaction_id}",
    responses={
        **ERRORS,
        404: {
            "model": Problem,
            "description": "No decision stored for this transaction (or it is another merchant's)",
        },
        503: {"model": Problem, "description": "Redis unavailable: retry later"},
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
        try:
            found["reasons"]["model"] = scorer.explain(found)
        except LookupError as exc:
            found["reasons"]["model_note"] = f"contributions unavailable: {exc}"
    except (redis.RedisError, OSError) as exc:
        raise HTTPException(503, "decision store unavailable: retry later") from exc
    return found
