"""Helpers of the console's HTTP tests: signing in through the form, reading a page's CSRF token, what
every page's HTML must hold (one <h1>, every form control labelled: a <label for=id>, a wrapping <label>,
or aria-label), and rules that send a payment to the review queue."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import httpx

from antifraud.engine.settings import ROOT

REVIEW_RULE = """\
rules:
  - id: big_amount_review
    description: Payments over 9,000 are looked at by a person
    when: amount > 9000
    action: review
    reason: BIG_AMOUNT
"""


def rules_with_review(directory: Path) -> Path:
    """A copy of the repository's rules in `directory`/rules plus `big_amount_review` (payments over
    9,000 are reviewed), so a test makes a review case by scoring one."""
    rules = directory / "rules"
    shutil.copytree(ROOT / "rules", rules)
    (rules / "review.yaml").write_text(REVIEW_RULE)
    return rules


_CONTROLS = ("input", "select", "textarea")
_UNLABELLED_INPUTS = ("hidden", "submit", "button", "reset", "image")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h1 = 0
        self.label_for: set[str] = set()
        self.in_label = 0
        self.controls: list[tuple[str, dict[str, str | None], bool]] = []  # tag, attributes, wrapped

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "h1":
            self.h1 += 1
        elif tag == "label":
            self.in_label += 1
            if a.get("for"):
                self.label_for.add(str(a["for"]))
        elif tag in _CONTROLS:
            self.controls.append((tag, a, self.in_label > 0))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.in_label -= 1


def check_page(html: str) -> None:
    """Assert the page's accessibility basics (one <h1>, labelled controls)."""
    page = _Page()
    page.feed(html)
    assert page.h1 == 1, f"a page has exactly one <h1>, this one {page.h1}"
    for tag, attrs, wrapped in page.controls:
        if tag == "input" and attrs.get("type") in _UNLABELLED_INPUTS:
            continue
        labelled = wrapped or attrs.get("aria-label") or (attrs.get("id") in page.label_for)
        assert labelled, f"<{tag} name={attrs.get('name')!r}> has no label"


def csrf_token(html: str) -> str:
    """The value of the first hidden `csrf` field of a page."""
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def sign_in(client: httpx.Client, key: str, **headers: str) -> httpx.Response:
    """Sign in as a browser does: fetch the form (its double-submit cookie), post the key with its token.
    Returns the POST's answer (303 to the queue when signed in), redirects not followed."""
    form = client.get("/console/signin")
    return client.post(
        "/console/signin",
        data={"key": key, "csrf": csrf_token(form.text)},
        headers=headers,
        follow_redirects=False,
    )
