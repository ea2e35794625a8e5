"""An ASGI scope for calling the app in process, as uvicorn would build it for a scoring request."""

from __future__ import annotations

from starlette.types import Scope


def score_scope(body: bytes, key: str) -> Scope:
    """The HTTP scope of `POST /v1/score` with `body` and the API key `key`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/score",
        "raw_path": b"/v1/score",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:80"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 9),
        "server": ("127.0.0.1", 80),
    }
