"""Probes and metrics: /health, /ready, /metrics (open: the auth middleware guards /v1/ and /admin/)."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from antifraud.engine.api.deps import MetricsDep, ServicesDep
from antifraud.engine.services import Services

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(response: Response, services: ServicesDep) -> dict[str, Any]:
    """Redis reachable, model and rules loaded."""
    checks = readiness(services)
    if not all(v is True for v in checks.values()):
        response.status_code = 503
    return {"ready": response.status_code == 200, "checks": checks}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(metrics: MetricsDep) -> Response:
    """Prometheus metrics."""
    return Response(metrics.render(), media_type="text/plain; version=0.0.4")


def readiness(services: Services) -> dict[str, Any]:
    """Each readiness check: True, or why not."""
    try:
        redis_ok: Any = bool(services.client.ping())
    except (redis.RedisError, OSError) as exc:
        redis_ok = f"unreachable: {type(exc).__name__}"
    loaded = services.scorer.loaded
    return {
        "redis": redis_ok,
        "model": loaded.model is not None or "not loaded",
        "rules": loaded.rules is not None or "not loaded",
    }
