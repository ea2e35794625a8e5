"""Admin calls (role admin, checked by the auth middleware on /admin/): live reloads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from antifraud.engine.api.deps import ReloaderDep
from antifraud.engine.api.models import ERRORS

router = APIRouter()


@router.post("/admin/reload-rules", responses=ERRORS)
async def reload_rules(reloader: ReloaderDep) -> dict[str, Any]:
    """Load the rule set from disk; a bad one is refused and the previous one keeps serving."""
    return _refused_as_422(reloader.reload_rules(), "rule set")


@router.post("/admin/reload-model", responses=ERRORS)
async def reload_model(reloader: ReloaderDep) -> dict[str, Any]:
    """Load the model from disk; one that fails to load leaves the previous one serving."""
    return _refused_as_422(reloader.reload_model(), "model")


def _refused_as_422(result: dict[str, Any], what: str) -> dict[str, Any]:
    """A refused reload is the caller's error to see (422), with the reasons; a done one is answered."""
    if not result["reloaded"]:
        raise HTTPException(
            422, {"message": f"{what} refused; the previous one keeps serving", "errors": result["errors"]}
        )
    return result
