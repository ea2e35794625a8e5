"""ASGI middleware of the API that must run before any body is read."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Refuse request bodies over a size with 413, before anything parses them.

    `allowances` gives a few paths a larger limit (the console's rule upload); it is looked up only once
    a body is over `max_bytes`, so the payments, far below it, never pay for it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, allowances: Mapping[str, int] | None = None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.allowances = dict(allowances or {})

    def _limit(self, scope: Scope) -> int:
        return max(self.max_bytes, self.allowances.get(scope["path"], 0))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            limit = self._limit(scope)
            if int(declared) > limit:
                await self._refuse(limit, scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen, limit
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                limit = self._limit(scope)
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(limit, scope, receive, send)

    async def _refuse(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
