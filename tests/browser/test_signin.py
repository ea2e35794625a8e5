"""Signing in to the console in Chromium: an analyst key gets in, a scorer key is refused, a form with an
altered CSRF token is refused; the audit log and the webhooks page (admins only), with the dead letter
of a review whose endpoint answered 410."""

from __future__ import annotations

import time
import uuid

from payloads import score_request
from playwright.sync_api import Page, expect

from .conftest import Console, shot, sign_in


def test_an_analyst_signs_in_and_out(console: Console, page: Page) -> None:
    page.goto(f"{console.url}/console/")
    expect(page).to_have_url(f"{console.url}/console/signin")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    shot(page, "signin")
    sign_in(page, console, "alice")
    expect(page.get_by_role("navigation", name="console")).to_be_visible()
    expect(page.get_by_text("Signed in as")).to_contain_text("alice")
    cookie = next(c for c in page.context.cookies() if c["name"] == "af_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    shot(page, "signed-in")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{console.url}/console/signin")
    assert not [c for c in page.context.cookies() if c["name"] == "af_session"]


def test_a_scorer_key_is_refused(console: Console, page: Page) -> None:
    sign_in(page, console, "checkout")
    expect(page.get_by_role("alert")).to_have_text("scorer keys cannot sign in: use an analyst or admin key")
    expect(page).to_have_url(f"{console.url}/console/signin")
    assert not [c for c in page.context.cookies() if c["name"] == "af_session"]
    shot(page, "signin-scorer-refused")


def test_a_form_whose_csrf_token_was_altered_is_refused(console: Console, page: Page) -> None:
    sign_in(page, console, "alice")
    page.evaluate("document.querySelector('form.signout input[name=csrf]').value = 'forged'")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("alert")).to_contain_text("the form's CSRF token is missing or wrong")
    shot(page, "csrf-refused")
    # nothing was done: still signed in, and the audit log holds the sign-in
    page.goto(f"{console.url}/console/audit?actor=alice")
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit log")
    expect(page.get_by_role("cell", name="signin", exact=True).first).to_be_visible()
    shot(page, "audit")


def test_an_admin_reads_the_webhooks_page_and_an_analyst_cannot(console: Console, page: Page) -> None:
    sign_in(page, console, "alice")
    expect(page.get_by_role("link", name="Webhooks")).to_have_count(0)
    page.goto(f"{console.url}/console/webhooks")
    expect(page.get_by_role("alert")).to_contain_text("this page needs an admin key")
    page.get_by_role("button", name="Sign out").click()
    tx = f"br-hook-{uuid.uuid4().hex[:8]}"
    with console.api() as api:  # reviewed: its decision.review goes to the retired endpoint, a 410
        assert api.post("/v1/score", json=score_request(tx, 0, amount=9500.0)).json()["verdict"] == "review"
    sign_in(page, console, "ops")
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Webhooks")
    expect(page.get_by_role("cell", name="retired-bus", exact=True).first).to_be_visible()
    deadline = time.monotonic() + 30  # the sink's linger, then the worker's POST
    while not page.get_by_role("link", name=tx).count() and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    expect(page.get_by_role("link", name=tx)).to_be_visible()
    expect(page.get_by_role("button", name=f"send decision.review:{tx} again")).to_be_visible()
    shot(page, "webhooks")
