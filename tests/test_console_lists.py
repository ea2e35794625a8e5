"""Deny and allow lists from the console, through the real app on a real redis-server: an add from a
decision page rewrites the list file atomically, reloads the rules so that the next payment of that card
is blocked, and is audited; a remove undoes it; an inline list cannot be edited; values are checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from console_app import ConsoleApp, console_app
from console_helpers import check_page, csrf_token

from antifraud.engine.audit import AuditLog
from antifraud.engine.decision_record import AuditRecord
from antifraud.engine.list_edits import ListEditError, edit_list
from antifraud.engine.rules import load_ruleset

LISTS = """
lists:
  deny_cards: {file: lists/deny_cards.txt}
  trusted_ips: [203.0.113.99]
rules:
  - id: deny_listed_card
    description: Cards on the deny list
    when: card_id in lists.deny_cards
    action: block
    reason: DENY_LIST
  - id: trusted_ip
    when: ip in lists.trusted_ips
    action: allow
    reason: TRUSTED
"""


@pytest.fixture
def app(redis_client: redis.Redis, model_dir: Path, tmp_path: Path) -> Iterator[ConsoleApp]:
    with console_app(redis_client, model_dir, tmp_path) as running:
        rules_dir = running.settings.rules_dir
        (rules_dir / "lists").mkdir()
        (rules_dir / "lists" / "deny_cards.txt").write_text("# cards\ncard_old  # seen in a breach\n")
        (rules_dir / "lists.yaml").write_text(LISTS)
        assert running.http.post("/admin/reload-rules", headers=running.bearer("ops")).json()["reloaded"]
        running.score("tx-1", 0, amount=20.0, card_id="card_z")
        running.drain()
        running.sign_in("alice")
        yield running


def _audit(client: redis.Redis, action: str) -> list[AuditRecord]:
    """The audit records of `action`, oldest first."""
    return [r for r in reversed(AuditLog(client).latest(100)) if r["action"] == action]


def test_an_add_from_a_decision_page_blocks_the_card_and_is_audited(app: ConsoleApp) -> None:
    page = app.http.get("/console/decisions/tx-1")
    check_page(page.text)
    assert 'value="card_z"' in page.text and "Deny this card_id" in page.text
    # the inline list's button is disabled with the reason
    assert "written inline in a rules file" not in page.text or "trusted_ips" in page.text
    assert app.score("tx-2", 1, amount=20.0, card_id="card_z")["verdict"] != "block"
    answer = app.http.post(
        "/console/lists/add",
        data={
            "csrf": csrf_token(page.text),
            "transaction_id": "tx-1",
            "kind": "deny",
            "field": "card_id",
            "value": "card_z",
            "reason": "chargeback ring",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert "added+to+deny_cards" in answer.headers["location"]
    text = (app.settings.rules_dir / "lists" / "deny_cards.txt").read_text()
    assert text.startswith("# cards\ncard_old  # seen in a breach\n")
    assert "card_z  # chargeback ring (alice, " in text
    assert not [p for p in (app.settings.rules_dir / "lists").iterdir() if p.name.startswith(".")]
    blocked = app.score("tx-3", 2, amount=20.0, card_id="card_z")
    assert blocked["verdict"] == "block" and "deny_listed_card" in str(blocked["reasons"])
    records = _audit(app.redis, "list.add")
    assert [r["subject"] for r in records] == ["card_z", "card_z"] and records[0]["actor"] == "alice"
    assert records[1]["detail"]["outcome"] == "done" and records[0]["detail"]["transaction_id"] == "tx-1"
    # the same value again: reported, nothing written
    again = app.http.post(
        "/console/lists/add",
        data={"csrf": csrf_token(page.text), "target": "deny:card_id", "value": "card_z", "reason": "twice"},
        follow_redirects=False,
    )
    assert "already+on" in again.headers["location"]
    assert len(_audit(app.redis, "list.add")) == 2
    lists_page = app.http.get("/console/lists")
    check_page(lists_page.text)
    assert "chargeback ring (alice," in lists_page.text


def test_remove_drops_the_value_and_reloads(app: ConsoleApp) -> None:
    page = app.http.get("/console/lists")
    answer = app.http.post(
        "/console/lists/remove",
        data={"csrf": csrf_token(page.text), "list": "deny_cards", "value": "card_old"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and "removed+from+deny_cards" in answer.headers["location"]
    assert (app.settings.rules_dir / "lists" / "deny_cards.txt").read_text() == "# cards\n"
    assert app.score("tx-9", 3, card_id="card_old")["verdict"] != "block"
    assert _audit(app.redis, "list.remove")


def test_values_reasons_and_inline_lists_are_refused(app: ConsoleApp) -> None:
    token = csrf_token(app.http.get("/console/lists").text)

    def add(**form: str) -> str:
        answer = app.http.post("/console/lists/add", data={"csrf": token, **form}, follow_redirects=False)
        return f"{answer.status_code} {answer.headers.get('location', '')} {answer.text}"

    assert "one+word" in add(target="deny:card_id", value="two words", reason="x")
    assert "give+a+reason" in add(target="deny:card_id", value="card_q", reason="")
    assert add(target="deny:merchant_id", value="m_1", reason="x").startswith("400")
    assert "no list" in add(target="deny:email", value="a@b.example", reason="x")  # not in this rule set
    # a value that is not the payment's own
    assert "is not the card_id" in add(
        transaction_id="tx-1", kind="deny", field="card_id", value="card_q", reason="x"
    )
    inline = add(target="allow:ip", value="198.51.100.1", reason="x")
    assert inline.startswith("409") and "written inline" in inline
    app.sign_in("shop2")  # a scoped key
    token = csrf_token(app.http.get("/console/queue").text)
    assert add(target="deny:card_id", value="card_q", reason="x").startswith("403")


def test_a_refused_reload_puts_the_old_file_back(app: ConsoleApp) -> None:
    rules_dir = app.settings.rules_dir
    ruleset = load_ruleset(
        rules_dir, {"card_id": "string", "ip": "string", "amount": "number", "card_frauds_30d": "number"}
    )
    before = (rules_dir / "lists" / "deny_cards.txt").read_text()
    records: list[str] = []
    with pytest.raises(ListEditError) as refused:
        edit_list(
            app.redis,
            "af",
            rules_dir,
            ruleset,
            lambda: {"reloaded": False, "errors": ["boom"]},
            lambda action, subject, detail: records.append(f"{action} {detail}") or "1-0",
            add=True,
            list_name="deny_cards",
            value="card_new",
            reason="test",
            actor="alice",
        )
    assert refused.value.status == 500
    assert (rules_dir / "lists" / "deny_cards.txt").read_text() == before
    assert len(records) == 2 and "refused" in records[1]
