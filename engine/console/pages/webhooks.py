"""The webhooks page (admin): the configured endpoints, the outbox's backlog and the dead letters, each of
which an admin can send again, audited (docs/console.md, "Webhooks")."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from antifraud.engine.console.deps import ConsoleError, CsrfChecked, audited, redirect, render, require
from antifraud.engine.console.sessions import Session
from antifraud.engine.webhooks.config import Endpoints
from antifraud.engine.webhooks.worker import dead_letter, dead_letters, retry_dead

router = APIRouter()
Admin = Annotated[Session, require({"admin"}, unscoped=True)]
PAGE = "/console/webhooks"


@router.get(PAGE)
async def webhooks_page(request: Request, session: Admin, retried: str = "") -> Response:
    """Endpoints, backlog, dead letters."""
    state = request.app.state
    ns = state.settings.namespace
    endpoints: Endpoints = state.webhooks

    def read() -> dict[str, object]:
        client = state.redis
        return {
            "endpoints": endpoints.current(),
            "outbox": int(cast(int, client.xlen(f"{ns}:hooks:outbox"))),
            "retrying": int(cast(int, client.zcard(f"{ns}:hooks:retry"))),
            "dead": dead_letters(client, ns),
            "dead_total": int(cast(int, client.xlen(f"{ns}:hooks:dead"))),
        }

    context = await run_in_threadpool(read)
    return render(
        request, "webhooks.html", {**context, "file": state.settings.webhooks_file, "retried": retried}
    )


@router.post(PAGE + "/dead/{dead_id}/retry")
def retry(request: Request, dead_id: str, session: CsrfChecked, admin: Admin) -> Response:
    """Send one dead letter again (recorded first)."""
    state = request.app.state
    ns = state.settings.namespace
    letter = dead_letter(state.redis, dead_id, ns)
    if letter is None:
        raise ConsoleError(404, f"there is no dead letter {dead_id} (sent again already?)")
    audited(
        request,
        session,
        "hooks.retry",
        letter["event"],
        {"dead_letter": dead_id, "endpoint": letter["endpoint"]},
    )
    if not retry_dead(state.redis, dead_id, ns):
        raise ConsoleError(503, "the webhook outbox is full: the delivery worker is behind; try again later")
    return redirect(f"{PAGE}?retried={letter['event']}")
