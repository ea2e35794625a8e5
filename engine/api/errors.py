"""422 answers: the same shape whether FastAPI or the scoring route's own parse found the error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


def invalid(errors: Sequence[Any], prefix: tuple[str, ...] = ()) -> JSONResponse:
    """422 naming each field and why, without the input: a refused request may carry a raw PAN."""
    detail = [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler for `RequestValidationError`: FastAPI's default would echo the input."""
    assert isinstance(exc, RequestValidationError)
    return invalid(exc.errors())
