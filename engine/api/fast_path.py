"""POST /v1/score answered by a raw ASGI handler in front of FastAPI's routing (issue 15).

Placed innermost among the app's middlewares, `ScoreFastPath` sees a request after the metrics, the
API-key check and the body limit have run exactly as for any route, then answers a scoring request
itself with the route's own function (`engine.api.score.score`: one compiled parse of the body,
orjson bytes out, the flagged decisions' explanation after the answer, in a thread). What it skips
is FastAPI's and Starlette's per-request machinery: the exception middleware, the router's match of
every route, and the route's request/response wrapper. Nothing is copied, so the answers, their
headers, the 401/403/413 of the middlewares and the counters are the FastAPI route's by construction;
the route stays declared on the app, so the OpenAPI document and /docs do not change, and any other
request (another path or method, a mounted `root_path`) goes to FastAPI untouched.

The cost it removes, in-process: benchmarks/bench_score_route.py; over HTTP: docs/performance.md.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from antifraud.engine.api.score import PATH, score


class ScoreFastPath:
    """ASGI middleware answering POST /v1/score with `score`; every other request goes on to `app`."""

    def __init__(self, app: ASGIApp, route: APIRoute) -> None:
        self.app = app
        self.route = route  # the declared route: the metrics label the request with its template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # An exact match only: anything else (HEAD, "/v1/score/", a root_path to strip) is FastAPI's
        # to answer, 405, redirect or route, as it always did.
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        # what Starlette's router sets on a match: HttpMetrics reads the route's template from it
        scope["route"] = self.route
        response = await score(Request(scope, receive, send))
        await response(scope, receive, send)  # sends the answer, then runs its background task
