"""What the console's routes depend on: the signed-in session, role checks, the CSRF check, rendering.

    @router.get("/console/queue")
    def queue(request: Request, session: Annotated[Session, require({"analyst", "admin"})]) -> Response:
        return render(request, "queue.html", {...})

    @router.post("/console/reviews/{tx}/claim")
    def claim(request: Request, session: CsrfChecked, ...) -> Response: ...

Every console POST takes `CsrfChecked` (tests/test_console_sessions.py checks each route). The session
dependency is a plain `def`: it reads Redis with the blocking client, so FastAPI runs it in its thread
pool, off the event loop the scoring route shares.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from antifraud.engine.audit import Actor, AuditLog
from antifraud.engine.auth import KeyRing, Role
from antifraud.engine.console.sessions import Session, SessionStore
from antifraud.engine.decisions import BufferFull
from antifraud.engine.settings import Settings

#: the session cookie (Path=/console) and the sign-in form's double-submit cookie (Path=/console/signin)
SESSION_COOKIE: Final = "af_session"
SIGNIN_COOKIE: Final = "af_signin"
SIGNIN_PATH: Final = "/console/signin"
#: the headers of every console page and redirect (docs/console.md, "Signing in")
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ConsoleState:
    """What `install` keeps on `app.state.console` for the routes."""

    settings: Settings
    templates: Jinja2Templates
    sessions: SessionStore
    audit: AuditLog
    keyring: KeyRing | None  # None: the service runs without API keys, and nobody can sign in


class ConsoleError(Exception):
    """Refuse a console request with `status`; the console's error page shows `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class NotSignedIn(Exception):
    """No live session: the console redirects to its sign-in page."""


def console_state(request: Request) -> ConsoleState:
    """The console's state, put on the app by `engine.console.install`."""
    state: ConsoleState = request.app.state.console
    return state


def client_ip(request: Request) -> str:
    """The caller's address as uvicorn has it (the proxy's client when it trusts the proxy)."""
    return request.client.host if request.client else ""


def behind_https(request: Request) -> bool:
    """Whether the console is served over HTTPS: its configured URL says so, or this request came in
    over it (uvicorn's TLS, or X-Forwarded-Proto from a proxy it trusts)."""
    url = console_state(request).settings.console_url
    return (url is not None and url.startswith("https://")) or request.url.scheme == "https"


def current_session(request: Request) -> Session:
    """Dependency: the signed-in session (NotSignedIn: the console redirects to its sign-in page)."""
    state = console_state(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = (
        state.sessions.load(token, state.keyring.keys, client_ip(request))
        if token and state.keyring is not None
        else None
    )
    if session is None:
        raise NotSignedIn
    request.state.console_session = session
    return session


SessionDep = Annotated[Session, Depends(current_session)]


def require(roles: Collection[Role], unscoped: bool = False) -> Any:
    """Dependency (`Annotated[Session, require({"admin"})]`): the session, when its key has one of
    `roles` and, with `unscoped`, acts for every merchant; a 403 page otherwise."""
    allowed = frozenset(roles)

    async def checked(session: SessionDep) -> Session:
        if session.role not in allowed:
            raise ConsoleError(
                403,
                f"this page needs an {' or '.join(sorted(allowed))} key; "
                f"{session.key_name!r} is an {session.role} key",
            )
        if unscoped and not session.unscoped:
            raise ConsoleError(
                403, f"this page needs a key for every merchant; {session.key_name!r} is scoped"
            )
        return session

    return Depends(checked)


def refuse_foreign_origin(request: Request) -> None:
    """A 403 for a POST whose Origin is neither this request's own nor the configured console URL's."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser's cross-site form (browsers send Origin with every POST)
    own = {f"{request.url.scheme}://{request.url.netloc}"}
    if url := console_state(request).settings.console_url:
        parts = urlsplit(url)
        own.add(f"{parts.scheme}://{parts.netloc}")
    if origin not in own:
        raise ConsoleError(
            403, f"a form posted from {origin} is refused: the console takes its own forms only"
        )


def same_token(sent: object, expected: str) -> bool:
    """Whether a form's token equals the expected one, compared in constant time."""
    return isinstance(sent, str) and bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())


async def csrf_checked(request: Request, session: SessionDep) -> Session:
    """Dependency of every console POST: the session, when the form's `csrf` field is the session's
    token and the Origin is the console's own; a 403 page otherwise."""
    refuse_foreign_origin(request)
    form = await request.form()
    if not same_token(form.get("csrf"), session.csrf):
        raise ConsoleError(
            403, "the form's CSRF token is missing or wrong: reload the page and send it again"
        )
    return session


CsrfChecked = Annotated[Session, Depends(csrf_checked)]


def audited(
    request: Request, actor: Actor, action: str, subject: str = "", detail: Mapping[str, object] | None = None
) -> str:
    """Record an action in the audit log before doing it; returns the record's id. When the log is full
    the action is refused with a 503 page: nothing is done unrecorded."""
    try:
        return console_state(request).audit.record(actor, action, subject, detail)
    except BufferFull as exc:
        raise ConsoleError(503, f"nothing can be done unrecorded, and the audit log is full: {exc}") from exc


def secured(response: Response) -> Response:
    """The response with the console's security headers."""
    response.headers.update(SECURITY_HEADERS)
    return response


def render(request: Request, template: str, context: Mapping[str, object], status: int = 200) -> HTMLResponse:
    """A console page: `template` with `context`, the signed-in session (`session`, None on the sign-in
    and error pages) and its CSRF token (`csrf`, for `partials/_csrf.html`), with the security headers."""
    session: Session | None = getattr(request.state, "console_session", None)
    response = console_state(request).templates.TemplateResponse(
        request,
        template,
        {"session": session, "csrf": session.csrf if session else "", **context},
        status_code=status,
    )
    secured(response)
    return response


def redirect(url: str) -> RedirectResponse:
    """A 303 to `url` (after a form: the browser follows it with a GET), with the security headers."""
    response = RedirectResponse(url, status_code=303)
    secured(response)
    return response
