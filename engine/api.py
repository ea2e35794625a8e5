"""HTTP API of the scoring service (FastAPI). `create_app(settings)` builds it; see docs/api.md."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import redis
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.auth import ApiKeyAuth, load_keys
from engine.feedback import Feedback
from engine.loader import Reloader
from engine.metrics import Metrics
from engine.schema import Transaction
from engine.settings import Settings
from engine.verdicts import Verdict

log = logging.getLogger("antifraud")


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
    degraded: Literal[False] | list[str] = Field(description="false, or what was missing")
    timings: dict[str, float]


ANSWER_FIELDS = tuple(ScoreResponse.model_fields)


class BodyLimit:
    """Refuse request bodies over a size with 413, before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None, client: redis.Redis | None = None) -> FastAPI:
    """The service: loads model and rules, connects to Redis (`settings.redis_url`)."""
    settings = settings or Settings()
    if client is None:
        if not settings.redis_url:
            raise ValueError("no Redis URL: pass --redis or set ANTIFRAUD_REDIS_URL")
        # Each call may block this worker for at most a share of the request's budget.
        timeout = settings.budget_ms * 0.6 / 1000
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
        )
    metrics = Metrics()
    reloader = Reloader(settings, client, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reloader.load_all()
        # Freeze the start-up heap (model, spec, modules) so collections stop walking it:
        # full collections of that heap were the main cause of p99 spikes.
        gc.collect()
        gc.freeze()
        watcher = asyncio.create_task(reloader.watch())
        yield
        watcher.cancel()

    app = FastAPI(
        title="antifraud",
        version="1",
        lifespan=lifespan,
        description="Real-time fraud scoring of card payments: allow, review or block.",
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # added last, so it runs first: nothing reads a body before the caller is known
    app.add_middleware(
        ApiKeyAuth,
        keys=load_keys(settings.api_keys_file) if settings.api_keys_file else None,
        roles={"/admin/": "admin", "/v1/": "scorer"},
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(exc.errors())

    @app.post(
        "/v1/score",
        response_model=None,
        responses={200: {"model": ScoreResponse, "description": "The decision"}, **ERRORS},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": Transaction.model_json_schema()}},
            }
        },
    )
    async def score(request: Request) -> Response:
        """Score a payment before it is sent to the bank: allow, review or block."""
        # The payment's hot path reads the body itself: one validating parse of the raw bytes and
        # one dumps of the answer cost a fraction of FastAPI's generic body and response handling.
        try:
            txn = Transaction.model_validate_json(await request.body())
        except ValidationError as exc:
            return _invalid(exc.errors(), prefix=("body",))
        decision = reloader.scorer.score(txn)
        answer = {name: decision[name] for name in ANSWER_FIELDS}
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.post(
        "/v1/feedback",
        response_model=FeedbackAccepted,
        status_code=202,
        responses={**ERRORS, 503: {"model": Problem, "description": "Redis unavailable: retry later"}},
    )
    async def feedback(event: Feedback) -> dict[str, Any]:
        """Tell the engine what happened to a payment (label, bank outcome, refund, cancellation)."""
        record = {**event.model_dump(mode="json"), "received_at": datetime.now(UTC).isoformat()}
        store = reloader.scorer.store
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
                reloader.scorer.features.feedback(
                    event.feature_event, event.transaction_id, event.reported_at, payment
                )
        except (redis.RedisError, OSError) as exc:
            metrics.redis_errors.inc()
            raise HTTPException(
                503, "feedback store unavailable: retry later", headers={"Retry-After": "1"}
            ) from exc
        metrics.feedback.labels(event.kind).inc()
        return {"transaction_id": event.transaction_id, "accepted": True, "matched": matched}

    @app.get(
        "/v1/decisions/{transaction_id}",
        responses={
            **ERRORS,
            404: {"model": Problem, "description": "No decision stored for this transaction"},
            503: {"model": Problem, "description": "Redis unavailable: retry later"},
        },
    )
    async def decision(transaction_id: str) -> dict[str, Any]:
        """A stored decision with its features, reasons and any feedback."""
        try:
            found = reloader.scorer.store.get(transaction_id)
            if found is None:
                raise HTTPException(404, f"no decision stored for transaction {transaction_id!r}")
            found["feedback"] = reloader.scorer.store.feedback_for(transaction_id)
            try:
                found["reasons"]["model"] = reloader.scorer.explain(found)
            except LookupError as exc:
                found["reasons"]["model_note"] = f"contributions unavailable: {exc}"
        except (redis.RedisError, OSError) as exc:
            raise HTTPException(503, "decision store unavailable: retry later") from exc
        return found

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready(response: Response) -> dict[str, Any]:
        """Redis reachable, model and rules loaded."""
        checks = reloader.readiness()
        if not all(v is True for v in checks.values()):
            response.status_code = 503
        return {"ready": response.status_code == 200, "checks": checks}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload-rules", responses=ERRORS)
    async def reload_rules() -> dict[str, Any]:
        """Load the rule set from disk; a bad one is refused and the previous one keeps serving."""
        return reloader.reload_rules(raise_http=True)

    @app.post("/admin/reload-model", responses=ERRORS)
    async def reload_model() -> dict[str, Any]:
        """Load the model from disk; one that fails to load leaves the previous one serving."""
        return reloader.reload_model(raise_http=True)

    app.state.reloader = reloader
    app.state.settings = settings
    return app


def _invalid(errors: Sequence[Any], prefix: tuple[str, ...] = ()) -> JSONResponse:
    """422 naming each field and why, without the input: a refused request may carry a raw PAN."""
    detail = [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory engine.api:app_from_env` (each worker builds its own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings())
