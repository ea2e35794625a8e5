"""The risk console: server-rendered pages for risk staff, served by the API's own app (docs/console.md).

`install(app, settings)` mounts its routers under /console (none of them in the OpenAPI document), its
static files under /console/static and its Jinja2 templates (autoescaped). Its requests pass the API-key
middleware untouched (no /console prefix there) and are guarded by the console's own session and CSRF
dependencies (`engine.console.deps`); POST /v1/score never reaches any of it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jinja2
import redis
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from antifraud.engine.audit import AuditLog
from antifraud.engine.auth import KeyRing
from antifraud.engine.console.deps import (
    SESSION_COOKIE,
    SIGNIN_PATH,
    ConsoleError,
    ConsoleState,
    NotSignedIn,
    current_session,
    redirect,
    render,
)
from antifraud.engine.console.pages import (
    audit,
    auth,
    decisions,
    lists,
    monitoring,
    queue,
    rules,
    today,
    webhooks,
)
from antifraud.engine.console.sessions import SessionStore
from antifraud.engine.decisions import BufferBound
from antifraud.engine.settings import Settings
from antifraud.engine.webhooks.config import Endpoints, outbox_of

HERE = Path(__file__).resolve().parent
#: the console's page routers, in the order of the navigation
PAGES = (auth, queue, decisions, today, monitoring, rules, lists, audit, webhooks)


def install(app: FastAPI, settings: Settings, keyring: KeyRing | None) -> None:
    """Mount the console on `app` unless `settings.console` is off. `keyring` is the API-key middleware's
    own ring (reloaded live): sign-in checks keys against it; None means nobody can sign in."""
    if not settings.console:
        return
    bound = BufferBound(settings.buffer_max_entries, settings.buffer_max_age_s)
    app.state.console = ConsoleState(
        settings=settings,
        # every value escaped, whatever a template's name (select_autoescape would go by its suffix)
        templates=Jinja2Templates(
            env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
        ),
        sessions=SessionStore(
            app.state.redis,
            settings.namespace,
            settings.console_session_idle_s,
            settings.console_session_max_s,
            settings.console_signin_per_minute,
        ),
        audit=AuditLog(app.state.redis, settings.namespace, bound),
        keyring=keyring,
    )
    # the webhook endpoints (reloaded live) and the outbox a resolution publishes to (none without a file)
    app.state.webhooks = Endpoints(settings.webhooks_file)
    app.state.outbox = outbox_of(app.state.redis, app.state.webhooks, settings.namespace)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for page in PAGES:
        app.include_router(page.router, include_in_schema=False)
    app.add_exception_handler(ConsoleError, _console_error)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(redis.RedisError, _redis_error)


async def _console_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleError)
    return render(request, "error.html", {"status": exc.status, "message": exc.message}, exc.status)


async def _not_signed_in(request: Request, exc: Exception) -> Response:
    response = redirect(SIGNIN_PATH)
    if SESSION_COOKIE in request.cookies:  # expired or revoked: drop the dead cookie
        response.delete_cookie(SESSION_COOKIE, path="/console", httponly=True, samesite="strict")
    return response


async def _redis_error(request: Request, exc: Exception) -> Response:
    """A console page that Redis did not answer (down, or slower than the scoring path's short
    timeout, which the console shares): 503 "retry" rather than a bare 500. The API's routes keep
    their own handling: re-raised, as without this handler."""
    if not request.url.path.startswith("/console/"):
        raise exc
    message = f"Redis did not answer ({type(exc).__name__}): retry in a moment"
    return render(request, "error.html", {"status": 503, "message": message}, 503)


async def _http_error(request: Request, exc: Exception) -> Response:
    """A console page for errors under /console (an unknown page: 404); the API keeps its JSON errors."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/console/"):
        return await http_exception_handler(request, exc)
    if SESSION_COOKIE in request.cookies:  # the page's navigation for a signed-in user
        with contextlib.suppress(NotSignedIn):
            await run_in_threadpool(current_session, request)
    message = "there is no such page in the console" if exc.status_code == 404 else exc.detail
    return render(request, "error.html", {"status": exc.status_code, "message": message}, exc.status_code)
