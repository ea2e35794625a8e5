"""The console's decision page, search and day page, through the real app on a real redis-server with a
Parquet store: what GET /v1/decisions/{id} answers, in words; no card number on any page; another
merchant's decision a 404; each search field; the day's figures."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from console_app import ConsoleApp, console_app
from console_helpers import check_page
from payloads import log_decision, logged_decision, score_request

from antifraud.engine.decisions import DecisionLog
from antifraud.engine.redis_server import EmbeddedRedis

PAN = "4111111111111111"


@pytest.fixture
def app(
    redis_client: redis.Redis, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConsoleApp]:
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", "test-secret-0123456789")
    with console_app(redis_client, model_dir, tmp_path) as running:
        running.score("tx-1", 0, amount=20.0)
        running.score("tx-2", 5, amount=9500.0)  # reviewed: big_amount
        running.score("tx-3", 9, amount=30.0, merchant_id="m_2", customer_id="cust_9", card_id="card_b")
        running.drain()
        running.sign_in("alice")
        yield running


def test_the_decision_page_explains_in_words(app: ConsoleApp) -> None:
    page = app.http.get("/console/decisions/tx-2")
    assert page.status_code == 200
    check_page(page.text)
    html = page.text
    api = app.http.get("/v1/decisions/tx-2", headers=app.bearer("alice")).json()
    assert api["verdict"] == "review" and ">review</span>" in html
    assert "Amounts over 9,000 need a person (review, BIG_AMOUNT)" in html  # the rule's description
    assert "card: payments in the last 10 minutes" in html  # features by their human names
    assert "card_count_10m" in html
    earlier = html[html.index('id="earlier"') : html.index('id="features"')]
    assert "tx-1" in earlier and "tx-3" not in earlier  # the card's earlier decisions
    assert "entered the review queue" in html and "Claim this case" in html
    for contribution in api["reasons"]["model"]:
        assert f"({contribution['contribution']:+.2f})" in html


def test_no_card_number_reaches_any_page(app: ConsoleApp) -> None:
    app.score("tx-pan", 20, card_id=None, pan=PAN, amount=9100.0)
    app.drain()
    for path in (
        "/console/decisions/tx-pan",
        "/console/queue",
        "/console/search?verdict=review&start=2026-03-01&end=2026-03-01",
        "/console/today",
    ):
        page = app.http.get(path)
        assert page.status_code == 200, path
        assert PAN not in page.text and PAN[6:] not in page.text, path
    assert "tx-pan" in app.http.get("/console/queue").text


def test_another_merchants_decision_is_not_found(app: ConsoleApp) -> None:
    app.sign_in("shop2")
    assert app.http.get("/console/decisions/tx-2").status_code == 404
    assert app.http.get("/console/decisions/tx-unknown").status_code == 404
    own = app.http.get("/console/decisions/tx-3")
    assert own.status_code == 200 and "card_b" in own.text
    # a scoped key searches its own merchant, never another's
    assert app.http.get("/console/search?merchant_id=m_1&start=2026-03-01").status_code == 403
    found = app.http.get("/console/search?start=2026-03-01&end=2026-03-01")
    assert _rows(found.text) == ["tx-3"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("card_id=card_a", ["tx-2", "tx-1"]),
        ("customer_id=cust_9", ["tx-3"]),
        ("merchant_id=m_2", ["tx-3"]),
        ("verdict=review", ["tx-2"]),
        ("start=2026-03-02&end=2026-03-09", []),
        ("start=2026-03-01&end=2026-03-01", ["tx-3", "tx-2", "tx-1"]),
    ],
)
def test_search_by_each_field(app: ConsoleApp, query: str, expected: list[str]) -> None:
    if "start" not in query:
        query += "&start=2026-03-01&end=2026-03-01"
    page = app.http.get(f"/console/search?{query}")
    assert page.status_code == 200
    check_page(page.text)
    assert _rows(page.text) == expected


def test_search_by_transaction_goes_to_its_decision_and_the_form_starts_with_a_week(app: ConsoleApp) -> None:
    jump = app.http.get("/console/search?transaction_id=tx-1", follow_redirects=False)
    assert jump.status_code == 303 and jump.headers["location"] == "/console/decisions/tx-1"
    empty = app.http.get("/console/search")
    assert empty.status_code == 200 and 'id="results"' not in empty.text
    assert re.search(r'id="start" name="start" type="date" value="\d{4}-\d\d-\d\d"', empty.text)
    assert app.http.get("/console/search?verdict=maybe").status_code == 422


def test_today_shows_the_days_figures(app: ConsoleApp) -> None:
    page = app.http.get("/console/today")
    assert page.status_code == 200
    check_page(page.text)
    assert "<caption>Decisions: 3</caption>" in page.text
    assert re.search(r"open cases</th><td class=\"num\">1<", page.text)
    assert re.search(r"p99</th><td class=\"num\">(≤ [\d.]+|over 100) ms<", page.text)
    assert ">signin<" in page.text  # the latest audit records
    app.sign_in("shop2")
    assert app.http.get("/console/today").status_code == 403  # scoped keys see their merchants only


def test_the_queue_page_lists_the_open_case_with_its_reasons(app: ConsoleApp) -> None:
    page = app.http.get("/console/queue?order=riskiest")
    assert page.status_code == 200
    check_page(page.text)
    assert "tx-2" in page.text and "Amounts over 9,000 need a person" in page.text
    assert "9500.00 EUR" in page.text and "<strong>1</strong> open case;" in page.text
    app.sign_in("shop2")
    assert "tx-2" not in app.http.get("/console/queue").text


def _rows(html: str) -> list[str]:
    if 'id="results"' not in html:
        return []
    table = html[html.index('id="results"') : html.index("</table>", html.index('id="results"'))]
    return re.findall(r'<th scope="row"><a href="/console/decisions/[^"]+">([^<]+)</a>', table)


def test_skipped_rules_are_collapsed_under_a_count(app: ConsoleApp) -> None:
    """Rules skipped for a missing input are listed in a <details> whose summary counts them, so the
    fired rules and the band come first; a decision with none has no such section."""
    skipped = [f"rule_{i}" for i in range(7)]
    reasons = {"rules": [], "shadow_rules": [], "skipped_rules": skipped, "model": []}
    log_decision(DecisionLog(app.redis), logged_decision("tx-skip", 30, verdict="allow", reasons=reasons))
    app.drain()
    html = app.http.get("/console/decisions/tx-skip").text
    check_page(html)
    details = html[html.index('<details id="skipped">') : html.index("</details>")]
    assert "<summary>7 rules not evaluated (an input was missing)</summary>" in details
    assert all(f"rule {rule} was not evaluated" in details for rule in skipped)
    why = html[html.index('id="reasons-title"') : html.index('<details id="skipped">')]
    assert "was not evaluated" not in why
    assert '<details id="skipped">' not in app.http.get("/console/decisions/tx-2").text


def test_a_page_redis_does_not_answer_is_a_503_page_and_the_api_keeps_its_answers(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stopped under a signed-in console: its pages say "retry" with 503, not a bare 500; the
    scoring route still answers (degraded), as without the console."""
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", "test-secret-0123456789")
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        with console_app(client, model_dir, tmp_path) as running:
            running.sign_in("alice")
            server.stop()
            for path in ("/console/queue", "/console/rules", "/console/today"):
                page = running.http.get(path)
                assert page.status_code == 503, (path, page.text[:300])
                assert "Redis did not answer" in page.text and "retry" in page.text
            scored = running.http.post(
                "/v1/score", json=score_request("tx-down"), headers=running.bearer("checkout")
            )
            assert scored.status_code == 200 and scored.json()["degraded"]
    finally:
        client.close()
        server.stop()
