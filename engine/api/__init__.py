"""HTTP API of the scoring service (FastAPI). `create_app(settings)` builds it; see docs/api.md.

One module per concern (score, feedback, decisions, health, admin), each an `APIRouter` but for the
scoring route (see engine/api/score.py); what a route needs comes from `antifraud.engine.api.deps`, which
reads the `Services` that `start_services` builds in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from antifraud.engine import console
from antifraud.engine.api import admin, decisions, feedback, health, openapi, score
from antifraud.engine.api.errors import invalid_request
from antifraud.engine.api.fast_path import ScoreFastPath
from antifraud.engine.api.http_metrics import HttpMetrics
from antifraud.engine.api.middleware import BodyLimit
from antifraud.engine.api.models import ANSWER_FIELDS, ERRORS, FeedbackAccepted, Problem, ScoreResponse
from antifraud.engine.auth import ROUTE_ROLES, ApiKeyAuth, KeyRing
from antifraud.engine.metrics import Metrics
from antifraud.engine.monitor_summary import SummaryGauges
from antifraud.engine.schema import Transaction
from antifraud.engine.services import Services, build_services, connect_redis
from antifraud.engine.settings import Settings

__all__ = [
    "ANSWER_FIELDS",
    "ERRORS",
    "FeedbackAccepted",
    "Problem",
    "ScoreResponse",
    "app_from_env",
    "create_app",
    "start_services",
]


def create_app(
    settings: Settings | None = None, client: redis.Redis | None = None, raw_score_route: bool = True
) -> FastAPI:
    """The service: loads model and rules, connects to Redis (`settings.redis_url`).

    `raw_score_route=False` leaves POST /v1/score to FastAPI's routing instead of the fast path in
    front of it (engine/api/fast_path.py): the answers are the same; the tests and benchmarks compare.
    """
    settings = settings or Settings()
    # The client is made here, so a missing Redis URL fails at once; it connects on first use.
    app_client = client if client is not None else connect_redis(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = start_services(app)
        # Freeze the start-up heap (model, spec, modules) so collections stop walking it:
        # full collections of that heap were the main cause of p99 spikes.
        gc.collect()
        gc.freeze()
        watcher = asyncio.create_task(services.reloader.watch())
        yield
        watcher.cancel()
        services.reader.store.close()

    app = FastAPI(
        title="antifraud",
        version="1",
        lifespan=lifespan,
        description="Real-time fraud scoring of card payments: allow, challenge, review or block.",
        # operation ids are the route functions' names: a generated client's calls read `score`,
        # `feedback`, `decision`, not `score_v1_score_post`
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.redis = app_client
    # the model monitor's gauges come from its summary in Redis, the same for every worker and host
    app.state.metrics = Metrics(shared=SummaryGauges(app_client, settings.namespace))
    # The routes in this order, which is the OpenAPI document's. The scoring route goes on the app's
    # own router: an included router costs each request a second path match (engine/api/score.py).
    score_route = score.add_to(app.router)
    if raw_score_route:
        # added first, so it runs last among the middlewares: after the metrics, the auth and the
        # body limit, it answers POST /v1/score without FastAPI's routing (engine/api/fast_path.py)
        app.add_middleware(ScoreFastPath, route=score_route)
    # the console's rule upload alone may be larger (looked up only for a body over the limit)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        allowances={"/console/rules/test": settings.console_upload_bytes},
    )
    # added after the body limit, so it runs before it: nothing reads a body before the caller is known
    keyring = KeyRing(settings.api_keys_file) if settings.api_keys_file else None  # reloaded live
    app.state.keyring = keyring  # the console signs in against the same keys
    app.add_middleware(ApiKeyAuth, keys=keyring, roles=ROUTE_ROLES)
    # added after the auth, so it runs before it and counts its 401 and 403 answers too
    app.add_middleware(HttpMetrics, metrics=app.state.metrics)
    app.add_exception_handler(RequestValidationError, invalid_request)
    for module, tag in (
        (feedback, "payments"),
        (decisions, "decisions"),
        (health, "operations"),
        (admin, "admin"),
    ):
        app.include_router(module.router, tags=[tag])
    console.install(app, settings, keyring)  # after the API's routes; none of its own is in the schema
    openapi.install(app, ROUTE_ROLES, bodies=[Transaction])
    return app


def start_services(app: FastAPI) -> Services:
    """Build the app's services (model, rules, scorer, ...) and put them on `app.state`.

    The lifespan calls it once before serving; a tool driving the app without its lifespan
    (benchmarks/loadlib/components.py) calls it itself.
    """
    state = app.state
    services = build_services(state.settings, state.redis, state.metrics)
    state.services = services
    state.scorer = services.scorer  # the scoring route reads it directly (see engine/api/score.py)
    state.reloader = services.reloader
    return services


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory engine.api:app_from_env` (each worker builds its own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(Settings())
