"""The review queue in Chromium: a reviewed payment enters the queue, an analyst claims and resolves it,
the label arrives at GET /v1/decisions/{id}; the search finds the payment by its card; the same work by
keyboard alone."""

from __future__ import annotations

import time
import uuid

import httpx
from payloads import score_request
from playwright.sync_api import Page, expect

from .conftest import Console, shot, sign_in

#: the sink writes a batch within about a second (its linger); a browser test waits a little longer
WAIT_S = 20.0


def _reviewed_payment(console: Console) -> tuple[str, str]:
    """Score a payment the rules review; its transaction id and card token."""
    suffix = uuid.uuid4().hex[:8]
    tx, card = f"br-review-{suffix}", f"card_br_{suffix}"
    with console.api() as api:
        answer = api.post("/v1/score", json=score_request(tx, 0, amount=9500.0, card_id=card))
    assert answer.status_code == 200 and answer.json()["verdict"] == "review", answer.text
    return tx, card


def _open_queue_until_listed(page: Page, console: Console, tx: str) -> None:
    """The queue page, reloaded until the sink has queued the case."""
    deadline = time.monotonic() + WAIT_S
    while True:
        page.goto(f"{console.url}/console/queue")
        if page.get_by_role("link", name=tx).count() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expect(page.get_by_role("link", name=tx)).to_be_visible()


def _label_of(console: Console, tx: str) -> list[tuple[str, str]]:
    """The feedback GET /v1/decisions/{id} shows, once the sink has stored the label."""
    deadline = time.monotonic() + WAIT_S
    with httpx.Client(
        base_url=console.url, headers={"Authorization": f"Bearer {console.keys['alice']}"}
    ) as api:
        while True:
            feedback = api.get(f"/v1/decisions/{tx}").json()["feedback"]
            if feedback or time.monotonic() > deadline:
                return [(f["kind"], f["label"]) for f in feedback]
            time.sleep(0.3)


def test_claim_and_resolve_a_review_then_find_it(console: Console, page: Page) -> None:
    tx, card = _reviewed_payment(console)
    sign_in(page, console, "alice")
    _open_queue_until_listed(page, console, tx)
    shot(page, "queue")
    page.get_by_role("button", name=f"Claim {tx}").click()
    expect(page).to_have_url(f"{console.url}/console/decisions/{tx}")
    expect(page.get_by_text("Claimed by you")).to_be_visible()
    expect(
        page.get_by_text("Payments over 9,000 are looked at by a person (review, BIG_AMOUNT)")
    ).to_be_visible()
    shot(page, "decision")
    page.get_by_label("fraud", exact=True).check()
    page.get_by_label("Note").fill("The card holder says it was not them")
    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_role("status")).to_have_text("resolved as fraud")
    expect(page.locator("#review")).to_contain_text("Resolved as fraud by alice")
    shot(page, "decision-resolved")
    assert _label_of(console, tx) == [("label", "fraud")]

    page.get_by_role("link", name="Search", exact=True).click()
    page.get_by_label("Card token").fill(card)
    page.get_by_label("From (UTC day)").fill("2026-03-01")
    page.get_by_label("To (UTC day, included)").fill("2026-03-01")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_role("link", name=tx)).to_be_visible()
    shot(page, "search")
    page.get_by_role("link", name=tx).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Decision {tx}")

    page.get_by_role("link", name="Today", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Today")
    expect(page.get_by_role("table", name="Reviews")).to_be_visible()
    shot(page, "today")


def test_claim_and_resolve_by_keyboard_alone(console: Console, page: Page) -> None:
    tx, _ = _reviewed_payment(console)
    sign_in(page, console, "alice")
    _open_queue_until_listed(page, console, tx)
    claim = page.get_by_role("button", name=f"Claim {tx}")
    for _ in range(60):  # Tab through the page until the case's claim button has the focus
        page.keyboard.press("Tab")
        if claim.evaluate("button => button === document.activeElement"):
            break
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{console.url}/console/decisions/{tx}")
    page.get_by_label("legitimate", exact=True).focus()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.type("Known customer, confirmed by phone")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("resolved as legitimate")
    assert _label_of(console, tx) == [("label", "legitimate")]
