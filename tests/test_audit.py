"""The audit log in the durable store: the sink drains the `af:audit` stream into both backends (once, even
when a batch is written again), the store answers the console's queries and applies retention, and a
read merges the store with the stream's unwritten tail; then the console's audit page."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from console_helpers import check_page, sign_in
from fastapi.testclient import TestClient

from antifraud.engine.api import create_app
from antifraud.engine.audit import AuditLog, AuditReader, Visitor
from antifraud.engine.auth import new_key
from antifraud.engine.decision_record import AuditRecord
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.sink import Sink
from antifraud.engine.store import AuditQuery, Logged, open_store

ALICE = Visitor("10.0.0.7", "alice", "analyst")
OPS = Visitor("10.0.0.8", "ops", "admin")


def _record(
    at: str, actor: str = "alice", action: str = "review.claim", subject: str = "tx-1"
) -> AuditRecord:
    return {
        "at": at,
        "actor": actor,
        "role": "analyst",
        "action": action,
        "subject": subject,
        "detail": {},
        "ip": "",
    }


def test_the_sink_drains_the_audit_stream_into_the_store_once(
    redis_client: redis.Redis, store_url: str
) -> None:
    audit = AuditLog(redis_client)
    audit.record(ALICE, "review.claim", "tx-1")
    audit.record(ALICE, "review.resolve", "tx-1", {"outcome": "fraud", "note": "stolen card, «confirmed»"})
    audit.record(OPS, "rules.promote", "default.yaml", {"old": "429e", "new": "77ab"})
    store = open_store(store_url)
    try:
        sink = Sink(redis_client, store, block_ms=10, linger_ms=0)
        assert sink.run_once() == 3
        assert redis_client.xlen("af:audit") == 0, "written, acknowledged and trimmed"
        found = store.audit(AuditQuery())
        assert [a.record["action"] for a in found] == ["rules.promote", "review.resolve", "review.claim"]
        assert found[1].record["detail"] == {"outcome": "fraud", "note": "stolen card, «confirmed»"}
        assert found[0].record == {**found[0].record, "actor": "ops", "role": "admin", "ip": "10.0.0.8"}
        # a batch written again (a sink that died before acknowledging it) adds nothing
        again = [Logged(a.stream_id, a.record) for a in found]
        assert store.write([], [], [], again).audit == 0
        assert len(store.audit(AuditQuery())) == 3

        assert [a.record["action"] for a in store.audit(AuditQuery(actor="alice"))] == [
            "review.resolve",
            "review.claim",
        ]
        assert [a.record["subject"] for a in store.audit(AuditQuery(action="rules.promote"))] == [
            "default.yaml"
        ]
        assert len(store.audit(AuditQuery(subject="tx-1", limit=1))) == 1
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        assert len(store.audit(AuditQuery(start=today, end=today + timedelta(days=1)))) == 3
        assert store.audit(AuditQuery(end=today)) == []

        old = Logged("1700000000000-0", _record("2023-11-14T22:13:20.000Z"))
        assert store.write([], [], [], [old]).audit == 1
        assert store.apply_retention(today - timedelta(days=30)) == 1
        assert len(store.audit(AuditQuery())) == 3, "today's records stay"
    finally:
        store.close()


def test_a_read_merges_the_store_and_the_streams_unwritten_tail(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    audit = AuditLog(redis_client)
    store = open_store(str(tmp_path / "store"))
    try:
        audit.record(ALICE, "signin", "alice")
        audit.record(ALICE, "review.claim", "tx-1")
        Sink(redis_client, store, block_ms=10, linger_ms=0).run_once()
        audit.record(ALICE, "review.resolve", "tx-1")  # not yet written by the sink
        audit.record(OPS, "signin", "ops")
        # written but still in the stream (the sink died between its write and its trim): read once
        ((tail_id, _),) = redis_client.xrange("af:audit", count=1)
        reader = AuditReader(store, redis_client)
        written = reader.tail(AuditQuery())[-1]
        store.write([], [], [], [Logged(tail_id.decode(), written.record)])
        actions = [a.record["action"] for a in reader.read(AuditQuery())]
        assert actions == ["signin", "review.resolve", "review.claim", "signin"]
        assert [a.record["actor"] for a in reader.read(AuditQuery(action="signin"))] == ["ops", "alice"]
        assert [a.record["action"] for a in reader.read(AuditQuery(subject="tx-1", limit=1))] == [
            "review.resolve"
        ]
    finally:
        store.close()


# -- the page


@pytest.fixture
def console(redis_client: redis.Redis, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    keys_file = tmp_path / "keys.yaml"
    keys = {
        "alice": new_key(keys_file, "alice", "analyst"),
        "shop": new_key(keys_file, "shop", "analyst", ["m_1"]),
    }
    settings = Settings(
        redis_url=None,
        model_dir=ROOT / "models" / "default",
        rules_dir=ROOT / "rules",
        api_keys_file=keys_file,
    )
    with TestClient(create_app(settings, client=redis_client), client=("127.0.0.1", 50000)) as client:
        yield client, keys


def test_the_audit_page_shows_who_did_what_filtered(
    console: tuple[TestClient, dict[str, str]], redis_client: redis.Redis
) -> None:
    client, keys = console
    AuditLog(redis_client).record(OPS, "rules.promote", "default.yaml", {"new": "77ab"})
    sign_in(client, "not-a-key")
    sign_in(client, keys["alice"])
    page = client.get("/console/audit")
    assert page.status_code == 200
    check_page(page.text)
    for text in ("rules.promote", "default.yaml", "signin.refused", "(unknown key)", "77ab"):
        assert text in page.text
    assert page.text.index("<td>signin</td>") < page.text.index("<td>rules.promote</td>"), "newest first"
    only = client.get("/console/audit", params={"actor": "ops"}).text
    assert "<td>rules.promote</td>" in only and "<td>signin.refused</td>" not in only
    about = client.get("/console/audit", params={"subject": "default.yaml"}).text
    assert "<td>rules.promote</td>" in about and "<td>signin</td>" not in about
    today = datetime.now(UTC).date()
    assert "<td>rules.promote</td>" in client.get("/console/audit", params={"day": today.isoformat()}).text
    yesterday = client.get("/console/audit", params={"day": (today - timedelta(days=1)).isoformat()}).text
    assert "No record matches." in yesterday
    assert client.get("/console/audit", params={"day": "tomorrow"}).status_code == 400
    assert client.get("/console/audit", params={"action": "review.delete"}).status_code == 400

    # once the sink has moved the records to the store, the pages read them there
    store = open_store(client.app.state.settings.store_url)  # type: ignore[attr-defined]
    try:
        Sink(redis_client, store, block_ms=10, linger_ms=0).run_once()
    finally:
        store.close()
    assert redis_client.xlen("af:audit") == 0
    assert "<td>rules.promote</td>" in client.get("/console/audit").text
    assert ">rules.promote<" in client.get("/console/today").text, "the day's latest audit records"

    scoped = TestClient(client.app, client=("127.0.0.1", 50001))
    sign_in(scoped, keys["shop"])
    assert scoped.get("/console/audit").status_code == 403, "a key scoped to merchants sees no audit log"
