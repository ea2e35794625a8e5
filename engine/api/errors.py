"""Error answers: the same shape whether FastAPI or the scoring route's own parse found the error.

A body that is not JSON at all is the client's malformed request (400), not a field to fix (422).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def invalid(errors: Sequence[Any], prefix: tuple[str, ...] = ()) -> JSONResponse:
    """422 naming each field and why, without the input: a refused request may carry a raw PAN.

    400 instead when the body is not JSON (its parser's message says where, never what).
    """
    for e in errors:
        if e["type"] == "json_invalid":
            reason = e.get("ctx", {}).get("error") or e["msg"]
            return JSONResponse({"detail": f"the body is not valid JSON: {reason}"}, status_code=400)
        # FastAPI hands a body sent without a JSON content type over unparsed
        if isinstance(raw := e.get("input"), bytes) and not _is_json(raw):
            return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
    detail = [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler for `RequestValidationError`: FastAPI's default would echo the input."""
    assert isinstance(exc, RequestValidationError)
    return invalid(exc.errors())


def conflict(message: str, fields: Sequence[str] | None) -> JSONResponse:
    """409: the transaction id was already used with another body; `fields` names what differs
    (None: the decided payment could not be read to compare, and the answer says so)."""
    if fields is None:
        message += " (the fields that differ cannot be named now: the decision store is unavailable)"
    return JSONResponse({"detail": message, "fields": list(fields or ())}, status_code=409)


def ahead_of_clock(request: Request, field: str, when: datetime) -> JSONResponse | None:
    """422 when `when` is further ahead of the service's clock than the configured tolerance.

    A time ahead of the clock would become its card's and merchant's "now" in the feature state
    (an entity's time never runs backwards), so it is refused like any invalid field.
    """
    skew_s: float = request.app.state.settings.clock_skew_s
    ahead_s = (when - datetime.now(UTC)).total_seconds()
    if ahead_s <= skew_s:
        return None
    message = (
        f"{field} is {ahead_s:,.0f} s ahead of the service's clock (tolerance {skew_s:g} s, "
        f"ANTIFRAUD_CLOCK_SKEW_S): send the real time in UTC, or fix the client's clock"
    )
    return invalid([{"loc": (field,), "msg": message, "type": "datetime_future"}], prefix=("body",))
