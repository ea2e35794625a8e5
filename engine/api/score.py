"""POST /v1/score: the payment's hot path.

Unlike the other routes it is registered on the app's own router (`add_to(app.router)`), and it
reads the scorer from `app.state` rather than through a `Depends`. Both were measured (FastAPI
0.165, in-process ASGI calls of a minimal route, medians of 5 x 20,000): an `include_router` hop
costs about 7 us per request (the included router matches the path a second time) and one async
dependency about 10 us more: together half again the 34 us a minimal route costs, and about 3 % of
this route's CPU per payment. Every payment would pay that; the other routes can afford clarity.

As served, FastAPI's routing is skipped too: `ScoreFastPath` (engine/api/fast_path.py) calls `score`
itself for POST /v1/score; the route declared here documents it and answers when the fast path is
off (`create_app(raw_score_route=False)`) or cannot apply (a `root_path`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from antifraud.engine.api.deps import merchant_denied
from antifraud.engine.api.errors import ahead_of_clock, conflict, invalid
from antifraud.engine.api.models import ANSWER_FIELDS, ERRORS, Conflict, ScoreResponse
from antifraud.engine.decision_reads import DecisionReader
from antifraud.engine.decision_record import Answer
from antifraud.engine.pipeline import IdempotencyConflict, PendingRetry, Scorer
from antifraud.engine.schema import Transaction

PATH = "/v1/score"


async def score(request: Request) -> Response:
    """Score a payment before it is sent to the bank: allow, challenge, review or block."""
    # The payment's hot path reads the body itself: one validating parse of the raw bytes and
    # one dumps of the answer cost a fraction of FastAPI's generic body and response handling.
    try:
        txn = Transaction.model_validate_json(await request.body())
    except ValidationError as exc:
        return invalid(exc.errors(), prefix=("body",))
    if (denied := merchant_denied(request, txn.merchant_id)) is not None:
        return denied  # a key scoped to other merchants: refused before anything is counted
    # A payment stamped ahead of the service's clock would carry its entities' state into the
    # future (features/score.lua never lets an entity's time run backwards): refuse it.
    if (refused := ahead_of_clock(request, "timestamp", txn.timestamp)) is not None:
        return refused
    # Built once by start_services and never replaced (reloads swap its model and rules inside
    # it), so reading it here is as safe as a dependency, and cheaper (see the module docstring).
    scorer: Scorer = request.app.state.scorer
    try:
        scored = await scorer.ascore(txn)
        answered = scored if not isinstance(scored, PendingRetry) else await _after_wait(scorer, scored)
    except IdempotencyConflict as exc:
        # rare: the whole decided payment is read (the buffer, else the store: off the event loop)
        # to name the fields that differ
        reader: DecisionReader = request.app.state.services.reader
        fields = await run_in_threadpool(reader.changed_fields, exc.record, exc.payment)
        return conflict(str(exc), fields)
    picked: Mapping[str, object] = answered  # the answer picks its fields by name
    answer = {name: picked[name] for name in ANSWER_FIELDS}
    # A flagged payment's model contributions are computed once the answer is sent (Starlette runs
    # a plain function's background task in a thread) and logged beside its decision.
    background = (
        BackgroundTask(scorer.explain_stored, answered) if scorer.needs_explaining(answered) else None
    )
    return Response(orjson.dumps(answer), media_type="application/json", background=background)


async def _after_wait(scorer: Scorer, pending: PendingRetry) -> Answer:
    """A retry of a payment still being decided by another request: its record is polled every 2 ms
    up to the deadline (half the budget), sleeping on the event loop, so the worker goes on scoring
    other payments meanwhile."""
    while (stored := scorer.poll(pending)) is None and time.perf_counter() < pending.deadline:
        await asyncio.sleep(0.002)
    return scorer.resume(pending, stored)


def add_to(router: APIRouter) -> APIRoute:
    """Register the route on `router`: the app's own (`app.router`), to skip an included router's hop.

    Returns the route, which the fast path names as the request's route (for the metrics' label).
    """
    router.add_api_route(
        PATH,
        score,
        methods=["POST"],
        response_model=None,
        responses={
            200: {"model": ScoreResponse, "description": "The decision"},
            **ERRORS,
            409: {"model": Conflict, "description": "This transaction_id was scored with another body"},
        },
        tags=["payments"],
        openapi_extra={
            "requestBody": {
                "required": True,
                # the schema is added to the document's components by engine/api/openapi.py
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{Transaction.__name__}"}}
                },
            }
        },
    )
    route = router.routes[-1]
    assert isinstance(route, APIRoute) and route.path == PATH
    return route
