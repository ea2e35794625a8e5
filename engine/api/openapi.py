"""The OpenAPI document as a client generator needs it: the bearer scheme on every guarded call.

Authentication is an ASGI middleware (engine/auth.py), not a route dependency, so FastAPI cannot
see it; this module writes it into the generated document instead: a `bearer` security scheme, and
on each operation under a guarded prefix the scheme and the roles that may call it. The document is
built once, on its first request, so none of this costs a scored payment anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

SCHEME = "bearer"
#: the document's sections, in order: a generated client groups its calls by them
TAGS: list[dict[str, Any]] = [
    {"name": "payments", "description": "Score a payment; report what happened to it."},
    {"name": "decisions", "description": "Read a stored decision, explained."},
    {"name": "operations", "description": "Probes and metrics (no key needed)."},
    {"name": "admin", "description": "Live reloads (admin keys)."},
]


def install(
    app: FastAPI, route_roles: Mapping[str, Iterable[str]], bodies: Iterable[type[BaseModel]] = ()
) -> None:
    """Make `app.openapi()` document the bearer scheme and the roles of each guarded operation.

    `bodies` are request models that a route reads itself (the scoring route parses its body
    without FastAPI): their schemas join the document's components, where the route refers to them.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=TAGS,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in bodies:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            secure(document, route_roles)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customize it


def secure(document: dict[str, Any], route_roles: Mapping[str, Iterable[str]]) -> None:
    """Add the bearer scheme to `document`, and to each operation the first matching prefix guards."""
    document.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `antifraud keys new`, sent as `Authorization: Bearer <key>`.",
    }
    for path, operations in document.get("paths", {}).items():
        roles = next((sorted(r) for prefix, r in route_roles.items() if path.startswith(prefix)), None)
        if roles is None:
            continue  # open: probes, metrics, the docs
        for operation in operations.values():
            operation["security"] = [{SCHEME: []}]
            note = f"Roles: {', '.join(roles)}."
            description = operation.get("description")
            operation["description"] = f"{description}\n\n{note}" if description else note
