"""What the routes depend on, as FastAPI dependencies reading the worker's `Services`.

`create_app` builds the services in the app's lifespan and keeps them on `app.state.services`;
a route names what it needs (`reader: ReaderDep`) instead of capturing it from `create_app`. The
providers are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread pool,
a hop that would cost more than the lookup itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from antifraud.engine.auth import SCOPE_KEY, ApiKey
from antifraud.engine.decision_reads import DecisionReader
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.loader import Reloader
from antifraud.engine.metrics import Metrics
from antifraud.engine.pipeline import Scorer
from antifraud.engine.services import Services
from antifraud.features.online import OnlineFeatures


def services_of(request: Request) -> Services:
    """The worker's services; they exist once the app's lifespan has started."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise RuntimeError(
            "the app's services are not built: serve it with its lifespan (uvicorn, TestClient) "
            "or call engine.api.start_services(app) first"
        )
    return services


async def get_services(request: Request) -> Services:
    """Dependency: the worker's services."""
    return services_of(request)


async def get_scorer(services: Annotated[Services, Depends(get_services)]) -> Scorer:
    """Dependency: the scorer (its model and rules are swapped in place by reloads)."""
    return services.scorer


async def get_log(services: Annotated[Services, Depends(get_services)]) -> DecisionLog:
    """Dependency: the decision log (idempotency records and buffers in Redis)."""
    return services.log


async def get_reader(services: Annotated[Services, Depends(get_services)]) -> DecisionReader:
    """Dependency: the read path of decisions and feedback (the buffer, then the store)."""
    return services.reader


async def get_features(services: Annotated[Services, Depends(get_services)]) -> OnlineFeatures:
    """Dependency: the online feature state in Redis."""
    return services.features


async def get_reloader(services: Annotated[Services, Depends(get_services)]) -> Reloader:
    """Dependency: the reloader of model and rules."""
    return services.reloader


async def get_metrics(request: Request) -> Metrics:
    """Dependency: the worker's metrics (built with the app, so they render before the lifespan)."""
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_caller(request: Request) -> ApiKey | None:
    """Dependency: the key the auth middleware matched (None when authentication is off)."""
    key: ApiKey | None = request.scope.get(SCOPE_KEY)
    return key


def merchant_denied(request: Request, merchant_id: str) -> JSONResponse | None:
    """403 when the calling key is scoped to merchants and `merchant_id` is not one of them, else None.

    Called on the scoring route once the payment is validated and before it is scored (so a refused
    payment moves no counter): a dict lookup and a set membership, nothing awaited.
    """
    key: ApiKey | None = request.scope.get(SCOPE_KEY)
    if key is None or key.merchants is None or merchant_id in key.merchants:
        return None
    return JSONResponse(
        {"detail": f"key {key.name!r} may not act for merchant {merchant_id!r}"}, status_code=403
    )


ServicesDep = Annotated[Services, Depends(get_services)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
LogDep = Annotated[DecisionLog, Depends(get_log)]
ReaderDep = Annotated[DecisionReader, Depends(get_reader)]
FeaturesDep = Annotated[OnlineFeatures, Depends(get_features)]
ReloaderDep = Annotated[Reloader, Depends(get_reloader)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CallerDep = Annotated[ApiKey | None, Depends(get_caller)]
