"""ASGI middleware counting HTTP requests by route template, method and status.

Added last to the app (so it runs first among the middlewares), it also sees the 401, 403 and 413
answers of the auth and body-limit middlewares, which answer before any route runs. The route label
is the route's template (`/v1/decisions/{transaction_id}`), never the raw path: ids in paths would
make one series per payment. A path no route matches is counted as route="other".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import Counter
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from antifraud.engine.metrics import Metrics

OTHER = "other"
# Any other method name is counted as "other": the label must stay bounded whatever clients send.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Count every HTTP request in `metrics.http_requests{route, method, status}`."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.counter = metrics.http_requests
        # The labelled children by label values: `labels()` validates and locks on every call,
        # a dict lookup does not. Bounded: routes x methods x statuses actually answered.
        self.children: dict[tuple[str, str, int], Counter] = {}
        self.routes: list[BaseRoute] | None = None  # the app's routes, flattened on first need

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            # the server's error handler, outside this middleware, answers 500 unless an
            # answer had already started
            self._count(scope, status or 500)
            raise
        if status:  # no answer at all (a disconnected client) is no status to count
            self._count(scope, status)

    def _route_template(self, scope: Scope) -> str:
        """The template of the route that handled the request, or that would have handled it."""
        route = scope.get("route")  # set by the router when a route matched
        if route is None:
            # Answered before routing (auth, body limit) or by no route (404): match the path
            # against the app's routes now. Only these answers pay for a second match.
            if self.routes is None:
                # built once: routes are all added before the first request builds this middleware
                app = scope.get("app")
                self.routes = list(_leaf_routes(app.router.routes if app is not None else []))
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match != Match.NONE:
                    route = candidate
                    break
        template = getattr(route, "path_format", None)
        return template if isinstance(template, str) else OTHER

    def _count(self, scope: Scope, status: int) -> None:
        method = scope["method"] if scope["method"] in METHODS else OTHER
        key = (self._route_template(scope), method, status)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.counter.labels(key[0], method, str(status))
        child.inc()


def _leaf_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route that answers requests, through included routers.

    FastAPI (0.16x) keeps an included router as one entry of the app's routes; its
    `effective_route_contexts` are its routes as included (prefix applied), each with `matches`
    and `path_format` like a route's.
    """
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            yield route
        else:
            yield from contexts()
