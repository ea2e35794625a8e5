"""Signing in to the console in Chromium: an analyst key gets in, a scorer key is refused, a form with an
altered CSRF token is refused; the audit log and the webhooks page (admins only)."""

from __future__ import annotations

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
    sign_in(page, console, "ops")
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Webhooks")
    expect(page.get_by_role("table", name="Dead letters: 0")).to_be_visible()
    shot(page, "webhooks")
