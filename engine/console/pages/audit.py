"""The audit log page: who did what, newest first, from the store and the stream's unwritten tail
(engine/audit.py), filtered by actor, action, subject and UTC day (docs/console.md, "Audit")."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from antifraud.engine.audit import ACTIONS, AuditReader
from antifraud.engine.console.deps import ConsoleError, render, require
from antifraud.engine.console.sessions import Session
from antifraud.engine.store import AuditQuery

router = APIRouter()

#: the most records the page shows
PAGE_ROWS = 200


def _day(text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConsoleError(400, f"day must be a date as YYYY-MM-DD, not {text!r}") from None


@router.get("/console/audit")
async def audit_page(
    request: Request,
    session: Annotated[Session, require({"analyst", "admin"}, unscoped=True)],
    actor: str = "",
    action: str = "",
    subject: str = "",
    day: str = "",
) -> Response:
    """The audit records matching the form, newest first, at most PAGE_ROWS."""
    if action and action not in ACTIONS:
        raise ConsoleError(400, f"unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}")
    chosen = _day(day)
    start = datetime.combine(chosen, datetime.min.time(), tzinfo=UTC) if chosen else None
    query = AuditQuery(
        actor=actor or None,
        action=action or None,
        subject=subject or None,
        start=start,
        end=start + timedelta(days=1) if start else None,
        limit=PAGE_ROWS,
    )
    state = request.app.state
    reader = AuditReader(state.services.reader.store, state.redis, state.settings.namespace)
    try:
        records = await run_in_threadpool(reader.read, query)  # the store's query blocks: off the loop
    except reader.store.errors as exc:
        raise ConsoleError(503, f"the decision store cannot be read now: {exc}") from exc
    return render(
        request,
        "audit.html",
        {
            "records": records,
            "actions": sorted(ACTIONS),
            "actor": actor,
            "action": action,
            "subject": subject,
            "day": day,
        },
    )
