"""Probes and metrics: /health, /ready, /metrics (open: the auth middleware guards /v1/ and /admin/)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from antifraud.engine.api.deps import MetricsDep, ServicesDep
from antifraud.engine.services import Services

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


class Readiness(BaseModel):
    """The answer to GET /ready, the same shape with 200 and 503."""

    ready: bool = Field(description="every check is true; the HTTP status is 200 exactly when this is")
    checks: dict[str, bool | str] = Field(
        description="redis, model, rules: true, or why not",
        examples=[{"redis": True, "model": True, "rules": True}],
    )


@router.get(
    "/ready",
    response_model=Readiness,
    responses={
        200: {"description": "Ready: Redis answers, a model and rules are loaded"},
        503: {"model": Readiness, "description": "Not ready: the failing checks say why"},
    },
)
async def ready(response: Response, services: ServicesDep) -> Readiness:
    """Redis reachable, model and rules loaded: 200 with every check true, else 503 naming the failures."""
    checks = readiness(services)
    ok = all(value is True for value in checks.values())
    # set both ways: an injected Response's status_code is None until set, not 200
    response.status_code = 200 if ok else 503
    return Readiness(ready=ok, checks=checks)


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(metrics: MetricsDep) -> Response:
    """Prometheus metrics. A plain function, run in the thread pool: rendering reads the workers'
    metric files and the model monitor's summary in Redis, never on the event loop that scores."""
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


def readiness(services: Services) -> dict[str, bool | str]:
    """Each readiness check: True, or why not."""
    redis_ok: bool | str
    try:
        redis_ok = bool(services.client.ping())
    except (redis.RedisError, OSError) as exc:
        redis_ok = f"unreachable: {type(exc).__name__}"
    loaded = services.scorer.loaded
    return {
        "redis": redis_ok,
        "model": loaded.model is not None or "not loaded",
        "rules": loaded.rules is not None or "not loaded",
    }
