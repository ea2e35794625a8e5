"""Signing in to the console in Chromium: an analyst key gets in, a scorer key is refused."""

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
