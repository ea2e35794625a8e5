"""Signing in and out of the console with an analyst or admin API key (docs/console.md, "Signing in").

The key is checked against the API-key middleware's own ring; a scorer key is refused (403), an unknown
one too (401), and an IP may try `console_signin_per_minute` times a minute (10 by default). The
sign-in form comes before any session, so its CSRF token is a double submit: the hidden field must
equal the `af_signin` cookie set with the form. Every attempt within the rate is audited, and a
sign-in is recorded before the session is made.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from antifraud.engine.audit import Visitor
from antifraud.engine.auth import authenticate
from antifraud.engine.console.deps import (
    SESSION_COOKIE,
    SIGNIN_COOKIE,
    SIGNIN_PATH,
    ConsoleError,
    CsrfChecked,
    SessionDep,
    audited,
    behind_https,
    client_ip,
    console_state,
    redirect,
    refuse_foreign_origin,
    render,
    same_token,
)
from antifraud.engine.console.sessions import is_loopback

router = APIRouter()

#: where a signed-in user lands
HOME = "/console/queue"
#: how long the sign-in form may be left open (seconds)
SIGNIN_FORM_S = 600
NO_KEYS = (
    "sign-in is off: this service runs without API keys (ANTIFRAUD_ALLOW_NO_AUTH=1); "
    "start it with --api-keys and sign in with an analyst or admin key"
)


def _signin_form(request: Request, error: str = "", status: int = 200) -> Response:
    """The sign-in page with a new double-submit token in its form and its cookie."""
    token = secrets.token_urlsafe(32)
    state = console_state(request)
    response = render(
        request,
        "signin.html",
        {"signin_token": token, "error": error or (NO_KEYS if state.keyring is None else "")},
        status,
    )
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=SIGNIN_FORM_S,
        path=SIGNIN_PATH,
        httponly=True,
        samesite="strict",
        secure=behind_https(request),
    )
    return response


@router.get(SIGNIN_PATH)
def signin_page(request: Request) -> Response:
    """The sign-in form."""
    return _signin_form(request)


@router.post(SIGNIN_PATH)
def signin(request: Request, key: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """Check the key; on success make a session, set its cookie and go to the queue."""
    state, ip = console_state(request), client_ip(request)
    if not state.sessions.attempt(ip):
        raise ConsoleError(
            429, f"more than {state.sessions.signin_per_minute} sign-in attempts in a minute: wait a minute"
        )
    refuse_foreign_origin(request)
    if not same_token(csrf, request.cookies.get(SIGNIN_COOKIE, "")):
        return _refused(
            request, Visitor(ip), 403, "the sign-in form expired or came from elsewhere: sign in again"
        )
    if state.keyring is None:
        return _refused(request, Visitor(ip), 403, NO_KEYS)
    if not behind_https(request) and state.settings.console_url is None and not is_loopback(ip):
        return _refused(
            request,
            Visitor(ip),
            403,
            "sign-in over plain HTTP from another machine is refused: serve the console behind HTTPS "
            "and set ANTIFRAUD_CONSOLE_URL to its address",
        )
    found = authenticate(state.keyring.keys, key.strip()) if key.strip() else None
    if found is None:
        return _refused(request, Visitor(ip), 401, "unknown key: sign in with an analyst or admin key")
    visitor = Visitor(ip, found.name, found.role)
    if found.role == "scorer":
        return _refused(request, visitor, 403, "scorer keys cannot sign in: use an analyst or admin key")
    audited(request, visitor, "signin", visitor.key_name)
    token, _ = state.sessions.create(found, ip, request.headers.get("user-agent", ""))
    response = redirect(HOME)
    response.set_cookie(
        SESSION_COOKIE, token, path="/console", httponly=True, samesite="strict", secure=behind_https(request)
    )
    response.delete_cookie(SIGNIN_COOKIE, path=SIGNIN_PATH, httponly=True, samesite="strict")
    return response


def _refused(request: Request, visitor: Visitor, status: int, reason: str) -> Response:
    audited(request, visitor, "signin.refused", visitor.key_name, {"reason": reason})
    return _signin_form(request, reason, status)


@router.post("/console/signout")
def signout(request: Request, session: CsrfChecked) -> Response:
    """End the session and go back to the sign-in page."""
    audited(request, session, "signout", session.key_name)
    console_state(request).sessions.end(session)
    response = redirect(SIGNIN_PATH)
    response.delete_cookie(SESSION_COOKIE, path="/console", httponly=True, samesite="strict")
    return response


@router.get("/console/")
def home(session: SessionDep) -> Response:
    """The console's front page is the review queue."""
    return redirect(HOME)
