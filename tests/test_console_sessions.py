"""The console's shell: signing in and out with API keys, sessions in Redis, cookies, CSRF, the guards.

Against the real app (FastAPI's test client with its lifespan) on a real redis-server; the `Secure` flag
behind a proxy through a real uvicorn, which alone reads X-Forwarded-Proto.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Annotated

import httpx
import orjson
import pytest
import redis
import uvicorn
from console_helpers import check_page, csrf_token, sign_in
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from payloads import score_request

from antifraud.engine.api import create_app
from antifraud.engine.api.fast_path import ScoreFastPath
from antifraud.engine.api.http_metrics import HttpMetrics
from antifraud.engine.api.middleware import BodyLimit
from antifraud.engine.auth import ROUTE_ROLES, ApiKeyAuth, new_key, revoke_key
from antifraud.engine.console.deps import SECURITY_HEADERS, render, require
from antifraud.engine.console.sessions import SIGNIN_ATTEMPTS_PER_MINUTE, Session
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.stack import free_port

LOOPBACK = ("127.0.0.1", 50000)
ROLES = {"scorer": "checkout", "analyst": "alice", "admin": "ops", "scoped": "shop-m1-risk"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.yaml"


@pytest.fixture
def keys(keys_file: Path) -> dict[str, str]:
    return {
        "scorer": new_key(keys_file, ROLES["scorer"], "scorer"),
        "analyst": new_key(keys_file, ROLES["analyst"], "analyst"),
        "admin": new_key(keys_file, ROLES["admin"], "admin"),
        "scoped": new_key(keys_file, ROLES["scoped"], "analyst", ["m_1"]),
    }


def _settings(keys_file: Path | None, **console: object) -> Settings:
    settings = Settings(
        redis_url=None,
        model_dir=ROOT / "models" / "default",
        rules_dir=ROOT / "rules",
        api_keys_file=keys_file,
    )
    for name, value in console.items():
        setattr(settings, name, value)
    return settings


def _app(redis_client: redis.Redis, keys_file: Path | None, **console: object) -> FastAPI:
    app = create_app(_settings(keys_file, **console), client=redis_client)
    # a page guarded like B's and C's, to prove `require` (the shell has no such page of its own)
    router = APIRouter()

    @router.get("/console/test-only/unscoped")
    def unscoped(
        request: Request, session: Annotated[Session, require({"analyst", "admin"}, unscoped=True)]
    ) -> Response:
        return render(request, "error.html", {"status": 200, "message": f"hello {session.key_name}"})

    @router.get("/console/test-only/admin")
    def admin(request: Request, session: Annotated[Session, require({"admin"})]) -> Response:
        return render(request, "error.html", {"status": 200, "message": f"hello {session.key_name}"})

    app.include_router(router, include_in_schema=False)
    return app


@pytest.fixture
def client(redis_client: redis.Redis, keys_file: Path, keys: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(_app(redis_client, keys_file), client=LOOPBACK) as c:
        yield c


def _cookie(response: httpx.Response, name: str) -> SimpleCookie:
    for header in response.headers.get_list("set-cookie"):
        jar = SimpleCookie()
        jar.load(header)
        if name in jar:
            return jar
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


def _audit(redis_client: redis.Redis) -> list[dict[str, object]]:
    return [orjson.loads(f[b"a"]) for _, f in redis_client.xrange("af:audit")]  # type: ignore[union-attr]


# -- signing in


@pytest.mark.parametrize("role", ["analyst", "admin"])
def test_an_analyst_or_admin_key_signs_in_with_a_strict_http_only_cookie(
    client: TestClient, keys: dict[str, str], redis_client: redis.Redis, role: str
) -> None:
    page = client.get("/console/signin")
    assert page.status_code == 200
    check_page(page.text)
    form_cookie = _cookie(page, "af_signin")["af_signin"]
    assert form_cookie["httponly"] and form_cookie["samesite"].lower() == "strict"
    assert form_cookie["path"] == "/console/signin" and form_cookie["max-age"] == "600"

    answer = sign_in(client, keys[role])
    assert answer.status_code == 303 and answer.headers["location"] == "/console/queue"
    cookie = _cookie(answer, "af_session")["af_session"]
    assert cookie["httponly"] and cookie["samesite"].lower() == "strict" and cookie["path"] == "/console"
    assert not cookie["secure"], "plain HTTP on loopback: no Secure flag (the browser would drop it)"
    token = cookie.value
    (name,) = redis_client.keys("af:console:session:*")
    assert name.decode() == "af:console:session:" + hashlib.sha256(token.encode()).hexdigest()
    assert token.encode() not in b"".join(redis_client.hgetall(name).values()), (
        "only the token's hash is kept"
    )
    assert 0 < redis_client.ttl(name) <= 1800

    home = client.get("/console/")  # the queue's page is package B's; the shell shows who is in
    assert f"Signed in as <strong>{ROLES[role]}</strong>" in home.text
    assert [(r["action"], r["actor"], r["role"]) for r in _audit(redis_client)] == [
        ("signin", ROLES[role], role)
    ]


def test_a_scorer_key_is_refused_and_an_unknown_key_too(
    client: TestClient, keys: dict[str, str], redis_client: redis.Redis
) -> None:
    scorer = sign_in(client, keys["scorer"])
    assert scorer.status_code == 403 and "scorer keys cannot sign in" in scorer.text
    unknown = sign_in(client, keys["admin"] + "x")
    assert unknown.status_code == 401 and "unknown key" in unknown.text
    check_page(unknown.text)
    assert "af_session" not in client.cookies and not redis_client.keys("af:console:session:*")
    refused = _audit(redis_client)
    assert [(r["action"], r["actor"]) for r in refused] == [
        ("signin.refused", "checkout"),
        ("signin.refused", ""),
    ]
    assert all(r["ip"] == "127.0.0.1" and r["detail"]["reason"] for r in refused)  # type: ignore[index]


def test_the_sign_in_form_is_double_submit_and_attempts_are_limited_per_ip(
    client: TestClient, keys: dict[str, str]
) -> None:
    client.get("/console/signin")
    forged = client.post(
        "/console/signin", data={"key": keys["admin"], "csrf": "forged"}, follow_redirects=False
    )
    assert forged.status_code == 403 and "sign-in form expired" in forged.text
    for _ in range(SIGNIN_ATTEMPTS_PER_MINUTE - 1):
        assert sign_in(client, keys["admin"] + "x").status_code == 401
    limited = sign_in(client, keys["admin"])
    assert limited.status_code == 429 and "wait a minute" in limited.text


def test_plain_http_from_another_machine_is_refused_unless_the_console_url_is_set(
    redis_client: redis.Redis, keys_file: Path, keys: dict[str, str]
) -> None:
    with TestClient(_app(redis_client, keys_file), client=("192.0.2.7", 50000)) as remote:
        answer = sign_in(remote, keys["admin"])
        assert answer.status_code == 403 and "ANTIFRAUD_CONSOLE_URL" in answer.text
    with TestClient(
        _app(redis_client, keys_file, console_url="http://console.example"), client=("192.0.2.7", 50000)
    ) as remote:
        assert sign_in(remote, keys["admin"]).status_code == 303


def test_without_api_keys_nobody_signs_in_and_the_page_says_why(redis_client: redis.Redis) -> None:
    with TestClient(_app(redis_client, None), client=LOOPBACK) as open_service:
        page = open_service.get("/console/signin")
        assert "ANTIFRAUD_ALLOW_NO_AUTH" in page.text
        answer = sign_in(open_service, "afk_anything")
        assert answer.status_code == 403 and "sign-in is off" in answer.text


# -- the Secure flag


def test_the_cookie_is_secure_behind_https_by_the_console_url(
    redis_client: redis.Redis, keys_file: Path, keys: dict[str, str]
) -> None:
    app = _app(redis_client, keys_file, console_url="https://risk.example")
    with TestClient(app, client=LOOPBACK, base_url="https://testserver") as c:
        assert _cookie(c.get("/console/signin"), "af_signin")["af_signin"]["secure"]
        answer = sign_in(c, keys["admin"])
        assert _cookie(answer, "af_session")["af_session"]["secure"]


def test_the_cookie_is_secure_behind_a_proxy_on_loopback_sending_x_forwarded_proto(
    redis_client: redis.Redis, keys_file: Path, keys: dict[str, str]
) -> None:
    """uvicorn (proxy headers on, trusting 127.0.0.1 as `serve` does) makes the request https."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_app(redis_client, keys_file), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            proxied = {"X-Forwarded-Proto": "https"}
            form = c.get("/console/signin", headers=proxied)
            # the form's cookie is Secure, which httpx keeps from plain http: handed over as a browser would
            c.cookies.set("af_signin", form.cookies["af_signin"], path="/console/signin")
            answer = c.post(
                "/console/signin", data={"key": keys["admin"], "csrf": csrf_token(form.text)}, headers=proxied
            )
            assert answer.status_code == 303
            assert _cookie(answer, "af_session")["af_session"]["secure"]
            plain = c.get("/console/signin")
            assert not _cookie(plain, "af_signin")["af_signin"]["secure"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# -- sessions


def test_a_session_ends_after_its_idle_time_and_its_maximum_age(
    client: TestClient, keys: dict[str, str], redis_client: redis.Redis
) -> None:
    sign_in(client, keys["analyst"])
    (name,) = redis_client.keys("af:console:session:*")
    redis_client.hset(name, "renewed", int(time.time()) - 120)
    redis_client.expire(name, 5)
    assert "Signed in as" in client.get("/console/").text
    assert redis_client.ttl(name) > 5, "a request renews the idle expiry (at most once a minute)"
    redis_client.delete(name)  # what Redis does once the idle time has passed
    gone = client.get("/console/", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/console/signin"

    sign_in(client, keys["analyst"])
    (name,) = redis_client.keys("af:console:session:*")
    redis_client.hset(name, "created", int(time.time()) - 43_200)
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/signin"
    assert not redis_client.exists(name), "a session past its maximum age is deleted"


def test_sign_out_ends_the_session(
    client: TestClient, keys: dict[str, str], redis_client: redis.Redis
) -> None:
    sign_in(client, keys["admin"])
    token = client.cookies["af_session"]
    page = client.get("/console/")
    out = client.post("/console/signout", data={"csrf": csrf_token(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/console/signin"
    assert not redis_client.keys("af:console:session:*")
    client.cookies.set("af_session", token, path="/console")  # the old cookie, replayed
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/signin"
    assert [r["action"] for r in _audit(redis_client)] == ["signin", "signout"]


def test_a_revoked_key_or_a_changed_role_counts_at_the_next_request(
    client: TestClient, keys: dict[str, str], keys_file: Path
) -> None:
    sign_in(client, keys["analyst"])
    assert "Signed in as" in client.get("/console/").text
    revoke_key(keys_file, "alice")
    client.app.state.keyring.reload()  # type: ignore[attr-defined]  # the watcher does it within a second
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/signin"


def test_require_checks_the_role_and_the_scope(client: TestClient, keys: dict[str, str]) -> None:
    sign_in(client, keys["scoped"])
    scoped = client.get("/console/test-only/unscoped")
    assert scoped.status_code == 403 and "key for every merchant" in scoped.text
    assert "merchants m_1" in scoped.text
    assert client.get("/console/test-only/admin").status_code == 403
    sign_in(client, keys["admin"])
    assert client.get("/console/test-only/admin").status_code == 200
    assert client.get("/console/test-only/unscoped").status_code == 200


# -- CSRF, origin, headers


def _console_posts(app: FastAPI) -> list[str]:
    """Every POST route under /console/, through included routers, path parameters filled in."""
    paths = []
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for leaf in contexts() if contexts else [route]:
            methods = getattr(getattr(leaf, "original_route", leaf), "methods", None) or set()
            path: str = getattr(leaf, "path", "")
            if "POST" in methods and path.startswith("/console/"):
                paths.append(path.replace("{", "").replace("}", ""))
    return paths


def test_every_console_post_needs_the_sessions_csrf_token(client: TestClient, keys: dict[str, str]) -> None:
    posts = _console_posts(client.app)  # type: ignore[arg-type]
    assert "/console/signout" in posts and "/console/signin" in posts
    sign_in(client, keys["admin"])
    token = csrf_token(client.get("/console/").text)
    for path in posts:
        for form in ({}, {"csrf": "wrong"}, {"csrf": token[:-1]}):
            answer = client.post(path, data=form, follow_redirects=False)
            assert answer.status_code == 403, (path, form, answer.status_code)
            assert "CSRF" in answer.text or "sign-in form expired" in answer.text
    assert "Signed in as" in client.get("/console/").text, "no refused POST changed anything"


def test_a_form_posted_from_another_origin_is_refused(client: TestClient, keys: dict[str, str]) -> None:
    sign_in(client, keys["admin"])
    token = csrf_token(client.get("/console/").text)
    answer = client.post(
        "/console/signout",
        data={"csrf": token},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 403 and "evil.example" in answer.text
    own = client.post(
        "/console/signout",
        data={"csrf": token},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert own.status_code == 303


def test_every_page_and_redirect_carries_the_security_headers(
    client: TestClient, keys: dict[str, str]
) -> None:
    answers = [client.get("/console/signin"), sign_in(client, keys["admin"]), client.get("/console/nowhere")]
    assert answers[2].status_code == 404 and "no such page" in answers[2].text
    check_page(answers[2].text)
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and "focus-visible" in css.text


# -- what the console leaves alone


def test_the_console_leaves_the_api_the_middleware_and_the_score_route_as_they_were(
    client: TestClient, keys: dict[str, str]
) -> None:
    app = client.app
    assert [m.cls for m in app.user_middleware] == [HttpMetrics, ApiKeyAuth, BodyLimit, ScoreFastPath]  # type: ignore[attr-defined]
    assert not any("/console".startswith(prefix) for prefix in ROUTE_ROLES)
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/console")]
    scored = client.post(
        "/v1/score", json=score_request(), headers={"Authorization": f"Bearer {keys['scorer']}"}
    )
    assert scored.status_code == 200
    assert client.get("/v1/decisions/x").status_code == 401, "the API still wants its key, cookie or not"
    assert client.get("/nowhere").json() == {"detail": "Not Found"}, "the API keeps its JSON errors"


def test_only_the_rule_upload_may_send_a_larger_body(client: TestClient, keys: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {keys['scorer']}"}
    big = b"x" * 20_000  # over the 16 KB limit, under the upload's 1 MB
    assert client.post("/v1/score", content=big, headers=auth).status_code == 413
    assert client.post("/console/rules/test", content=big).status_code != 413
    assert client.post("/console/rules/test", content=b"x" * 1_100_000).status_code == 413


def test_the_console_can_be_off_in_a_worker(
    redis_client: redis.Redis, keys_file: Path, keys: dict[str, str]
) -> None:
    with TestClient(
        create_app(_settings(keys_file, console=False), client=redis_client), client=LOOPBACK
    ) as c:
        assert c.get("/console/signin").status_code == 404


def test_pages_escape_what_they_show(client: TestClient, keys_file: Path) -> None:
    key = new_key(keys_file, "<script>alert(1)</script>", "analyst")
    client.app.state.keyring.reload()  # type: ignore[attr-defined]
    sign_in(client, key)
    page = client.get("/console/").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
