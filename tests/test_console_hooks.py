"""What the console's shell gives packages B and C to build on: the audit log's bound, the webhook outbox
(each event once, only when subscribed, full means a dead letter) and the sink's after-write hook (after
the store's write, before the acknowledgement; a hook that fails leaves the batch pending)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
import redis
from payloads import log_decision, logged_decision

from antifraud.engine.audit import AuditLog, Visitor
from antifraud.engine.decisions import BufferBound, BufferFull, DecisionLog
from antifraud.engine.sink import Sink
from antifraud.engine.store import Logged, open_store
from antifraud.engine.webhooks.outbox import Outbox


def test_an_action_is_refused_when_the_audit_log_is_full(redis_client: redis.Redis) -> None:
    audit = AuditLog(redis_client, bound=BufferBound(max_entries=2, max_age_s=0))
    alice = Visitor("127.0.0.1", "alice", "analyst")
    first = audit.record(alice, "review.claim", "tx-1")
    audit.record(alice, "review.resolve", "tx-1", {"outcome": "fraud", "note": "card reported stolen"})
    with pytest.raises(BufferFull):
        audit.record(alice, "review.claim", "tx-2")
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record(alice, "review.delete", "tx-1")
    newest, oldest = audit.latest()
    assert newest["action"] == "review.resolve" and newest["detail"] == {
        "outcome": "fraud",
        "note": "card reported stolen",
    }
    assert (oldest["actor"], oldest["role"], oldest["subject"], oldest["ip"]) == (
        "alice",
        "analyst",
        "tx-1",
        "127.0.0.1",
    )
    assert oldest["at"].endswith("Z") and first.count("-") == 1


def test_an_event_is_published_once_and_only_when_an_endpoint_wants_it(redis_client: redis.Redis) -> None:
    wanted = {"decision.review"}
    outbox = Outbox(redis_client, wanted.__contains__)
    data = {"transaction_id": "tx-1", "verdict": "review"}
    assert outbox.publish("decision.review", "decision.review:tx-1", "tx-1", data)
    assert not outbox.publish("decision.review", "decision.review:tx-1", "tx-1", data), (
        "a replay adds nothing"
    )
    assert not outbox.publish("decision.block", "decision.block:tx-2", "tx-2", data), "nobody subscribes"
    ((_, fields),) = redis_client.xrange("af:hooks:outbox")
    event = orjson.loads(fields[b"e"])
    assert (event["id"], event["type"], event["transaction_id"], event["data"]) == (
        "decision.review:tx-1",
        "decision.review",
        "tx-1",
        data,
    )


def test_an_event_that_finds_the_outbox_full_is_a_dead_letter(redis_client: redis.Redis) -> None:
    outbox = Outbox(redis_client, lambda _: True, bound=BufferBound(max_entries=1, max_age_s=0))
    assert outbox.publish("review.resolved", "review.resolved:tx-1", "tx-1", {"outcome": "fraud"})
    assert not outbox.publish("review.resolved", "review.resolved:tx-2", "tx-2", {"outcome": "legitimate"})
    ((_, dead),) = redis_client.xrange("af:hooks:dead")
    assert dead[b"error"] == b"outbox full" and orjson.loads(dead[b"event"])["id"] == "review.resolved:tx-2"
    assert not outbox.publish("review.resolved", "review.resolved:tx-2", "tx-2", {}), "dead-lettered once"
    assert redis_client.xlen("af:hooks:dead") == 1


class _Hook:
    """An after-write hook that records what it saw, and fails while told to."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], list[str]]] = []
        self.fail = False

    def __call__(self, decisions: Sequence[Logged], feedback: Sequence[Logged]) -> None:
        if self.fail:
            raise RuntimeError("the console's queue is unreachable")
        self.batches.append(
            ([d.record["transaction_id"] for d in decisions], [f.record["transaction_id"] for f in feedback])
        )


def test_the_sink_hands_each_written_batch_to_its_after_write_hook_before_acknowledging_it(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    log = DecisionLog(redis_client)
    for i in range(3):
        assert log_decision(log, logged_decision(f"tx-{i}", i, {"f": 1.0})) == "logged"
    log.add_feedback(
        {
            "transaction_id": "tx-1",
            "kind": "label",
            "label": "fraud",
            "outcome": None,
            "decline_code": None,
            "reported_at": "2026-12-05T10:00:00+00:00",
            "received_at": "2026-12-05T10:00:01+00:00",
        }
    )
    hook = _Hook()
    store = open_store(str(tmp_path / "store"))
    try:
        sink = Sink(redis_client, store, block_ms=10, linger_ms=0, after_write=hook)
        hook.fail = True
        with pytest.raises(RuntimeError):
            sink.run_once()
        assert store.decision("tx-0") is not None, "the hook runs after the store's write"
        assert redis_client.xpending("af:decisions", "sink")["pending"] == 3, (
            "a failed hook acknowledges nothing"
        )
        hook.fail = False
        assert sink.run_once() == 4
        assert hook.batches == [(["tx-0", "tx-1", "tx-2"], ["tx-1"])], "the same batch, passed again"
        assert redis_client.xpending("af:decisions", "sink")["pending"] == 0
    finally:
        store.close()
