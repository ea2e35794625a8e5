"""GET /v1/decisions/{transaction_id}: a decision, explained, from the buffer or the durable store.

A key scoped to merchants reads only its merchants' decisions; another merchant's decision gets the
same 404 as one never stored, so a scoped key cannot learn that a transaction id exists elsewhere.
What it answers is `engine/decision_view.py`'s, which the console's decision page shares.
The route is a plain `def`: FastAPI runs it in its thread pool, so a store read (DuckDB over Parquet
files, or PostgreSQL) never blocks the worker's event loop, where payments are scored.
"""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, HTTPException

from antifraud.engine.api.deps import CallerDep, ReaderDep, ScorerDep
from antifraud.engine.api.models import ERRORS, UNAVAILABLE, Problem, StoredDecision
from antifraud.engine.decision_reads import StoreUnavailable
from antifraud.engine.decision_view import NotFound, explained

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
def decision(transaction_id: str, reader: ReaderDep, scorer: ScorerDep, caller: CallerDep) -> dict[str, Any]:
    """A decision with its features, reasons and the feedback the store holds about it."""
    try:
        return explained(reader, scorer, transaction_id, caller.merchants if caller is not None else None)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (redis.RedisError, OSError, StoreUnavailable) as exc:
        raise HTTPException(503, f"decision store unavailable: retry later ({exc})") from exc
