"""The rule tester in Chromium: a rule file with an error shows it under its line; a change is tested
against the logged decisions and its diff read; a form whose CSRF token was altered is refused; the
rules and lists pages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from console_helpers import REVIEW_RULE
from payloads import score_request
from playwright.sync_api import Page, expect

from .conftest import Console, shot, sign_in

#: the browser tests' review rule, lowered from 9,000 to 8,000
LOWER = REVIEW_RULE.replace("amount > 9000", "amount > 8000")


def _open_tester(page: Page, console: Console) -> None:
    sign_in(page, console, "ops")
    page.get_by_role("link", name="Rules", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Rules")
    expect(page.locator("#rule-big_amount_review")).to_be_visible()
    shot(page, "rules")
    page.get_by_role("link", name="Test a change").click()
    page.get_by_label("Rules file").select_option("review.yaml")


def test_a_rule_change_is_tested_and_its_diff_read(console: Console, page: Page) -> None:
    with console.api() as api:  # a payment of 8,500 in the last hour: the lower threshold reviews it
        tx = f"br-rules-{uuid.uuid4().hex[:8]}"
        now = datetime.now(UTC).isoformat()
        answer = api.post("/v1/score", json=score_request(tx, 0, amount=8500.0, timestamp=now))
        assert answer.status_code == 200 and answer.json()["verdict"] != "review", answer.text
    _open_tester(page, console)
    page.get_by_label("Its text").fill(LOWER.replace("action: review", "action: reveiw"))
    page.get_by_role("button", name="Check and test").click()
    expect(page.locator("li.has-error")).to_contain_text("reveiw")
    shot(page, "rule-test-errors")
    page.get_by_label("Its text").fill(LOWER)
    page.get_by_label("Logged decisions of the last").select_option("1 h")
    page.get_by_role("button", name="Check and test").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Rule test of review.yaml")
    expect(page.locator("#status")).to_have_text("Done.", timeout=60_000)  # console.js polls every 2 s
    expect(page.locator("#diff")).to_contain_text("-    when: amount > 9000")
    expect(page.locator("#diff")).to_contain_text("+    when: amount > 8000")
    expect(page.get_by_role("link", name=tx)).to_be_visible()  # a changed payment, allow -> review
    expect(page.get_by_role("button", name="Promote review.yaml to the live rules")).to_be_enabled()
    shot(page, "rule-test-result")


def test_a_form_with_an_altered_csrf_token_is_refused(console: Console, page: Page) -> None:
    _open_tester(page, console)
    page.evaluate("document.querySelector('#tester input[name=csrf]').value = 'forged'")
    page.get_by_role("button", name="Check and test").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.locator("main")).to_contain_text("the form's CSRF token is missing or wrong")
    shot(page, "rule-test-csrf-refused")


def test_the_lists_page(console: Console, page: Page) -> None:
    sign_in(page, console, "alice")
    page.get_by_role("link", name="Lists", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Lists")
    expect(page.locator("#list-blocked_ips")).to_contain_text("203.0.113.7")
    shot(page, "lists")
