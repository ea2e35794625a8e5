"""The review queue (engine/review/): the sink's hook feeds it once per decision, it is bounded,
claims lock a case for one reviewer and expire, and a resolution becomes a label through the
feedback path (GET /v1/decisions/{id} shows it), an outbox event and a day count."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
import redis
from console_app import CHALLENGE_RULES, ConsoleApp, console_app
from console_helpers import csrf_token
from payloads import T0, log_decision, logged_decision

from antifraud.engine.audit import AuditReader
from antifraud.engine.decision_record import Decision, FeedbackRecord
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.review.feed import ConsoleFeed
from antifraud.engine.review.queue import ReviewQueue, case_fields
from antifraud.engine.sink import Sink
from antifraud.engine.stats import LATENCY_EDGES_MS, Stats
from antifraud.engine.store import AuditQuery, Logged, open_store
from antifraud.engine.webhooks.outbox import Outbox


def review(txid: str, i: int, merchant: str = "m_1", risk: int = 60, **more: Any) -> Decision:
    """A logged review decision decided `i` seconds after now - 1 h."""
    decided = datetime.now(UTC) - timedelta(hours=1) + timedelta(seconds=i)
    decision = logged_decision(
        txid,
        i,
        verdict="review",
        risk_score=risk,
        decided_at=decided.isoformat(),
        payment={"card_id": f"card_{i}", "merchant_id": merchant},
        reasons={
            "rules": [{"rule": "big_amount", "action": "review", "reason": "AMOUNT"}],
            "shadow_rules": [],
            "skipped_rules": [],
            "model": [],
        },
        **more,
    )
    return cast(Decision, decision)


def test_a_case_is_queued_once_and_overflow_is_refused_not_evicted(redis_client: redis.Redis) -> None:
    queue = ReviewQueue(redis_client, max_open=3)
    assert queue.enqueue([review("tx-1", 1), review("tx-2", 2)]) == (2, 0)
    assert queue.enqueue([review("tx-1", 1), review("tx-2", 2)]) == (0, 0)  # a replayed batch
    assert queue.enqueue([review("tx-3", 3), review("tx-4", 4), review("tx-5", 5)]) == (1, 2)
    assert queue.open_count() == 3
    assert [c.transaction_id for c in queue.page().cases] == ["tx-1", "tx-2", "tx-3"]
    today = queue.days(1)[0][1]
    assert today["queued"] == 3 and today["overflow"] == 2


def test_both_orders_and_pages(redis_client: redis.Redis) -> None:
    queue = ReviewQueue(redis_client)
    queue.enqueue(
        [review("old-low", 1, risk=55), review("new-high", 5, risk=90), review("mid-high", 3, risk=90)]
    )
    assert [c.transaction_id for c in queue.page("oldest").cases] == ["old-low", "mid-high", "new-high"]
    # riskiest first, then the oldest of equal risk
    assert [c.transaction_id for c in queue.page("riskiest").cases] == ["mid-high", "new-high", "old-low"]
    second = queue.page("oldest", page=1, per_page=2)
    assert [c.transaction_id for c in second.cases] == ["new-high"] and not second.has_next
    first = queue.oldest_decided()
    assert first is not None and datetime.now(UTC) - first > timedelta(minutes=59)


def test_a_scoped_view_merges_its_merchants_only(redis_client: redis.Redis) -> None:
    queue = ReviewQueue(redis_client)
    queue.enqueue(
        [review("a1", 1, "m_a"), review("b1", 2, "m_b"), review("c1", 3, "m_c"), review("a2", 4, "m_a")]
    )
    page = queue.page("oldest", merchants={"m_a", "m_c"})
    assert [c.transaction_id for c in page.cases] == ["a1", "c1", "a2"] and page.open_count == 3
    assert queue.free("bob", merchants={"m_b"}) == ["b1"]


def test_two_reviewers_never_hold_one_case_and_a_claim_expires(redis_client: redis.Redis) -> None:
    queue = ReviewQueue(redis_client, claim_s=1)
    queue.enqueue([review("tx-1", 1), review("tx-2", 2)])
    assert queue.claim("tx-1", "alice").status == "claimed"
    taken = queue.claim("tx-1", "bob")
    assert taken.status == "taken" and taken.holder == "alice" and 0 < taken.ms_left <= 1000
    assert queue.claim("tx-1", "alice").status == "claimed"  # renewed
    assert queue.free("bob") == ["tx-2"] and queue.free("alice") == ["tx-1", "tx-2"]
    assert queue.claim("tx-2", "bob").status == "claimed" and queue.free("carol") == []
    assert queue.resolve("tx-1", "bob", "fraud", "not mine").status == "taken"
    assert not queue.release("tx-1", "bob") and queue.release("tx-1", "alice")
    assert queue.claim("tx-1", "carol").status == "claimed"
    time.sleep(1.1)  # the claim lapses by itself
    case = queue.case("tx-1")
    assert case is not None and case.claimed_by is None
    assert queue.claim("tx-1", "bob").status == "claimed"
    assert queue.days(1)[0][1]["claimed"] == 4  # alice, bob (tx-2), carol, bob again


def test_resolve_and_reopen(redis_client: redis.Redis) -> None:
    queue = ReviewQueue(redis_client, keep_days=1)
    queue.enqueue([review("tx-1", 1), review("tx-2", 2)])
    queue.claim("tx-1", "alice")
    assert queue.resolve("tx-1", "alice", "fraud", "stolen card").status == "resolved"
    case = queue.case("tx-1")
    assert case is not None and case.status == "resolved" and case.outcome == "fraud"
    assert case.note == "stolen card" and case.resolved_by == "alice" and case.claimed_by is None
    assert queue.open_count() == 1 and queue.resolve("tx-1", "bob", "legitimate", "x").status == "already"
    assert 0 < cast(int, redis_client.pttl("af:{review}:case:tx-1")) <= 86_400_000
    assert queue.days(1)[0][1]["fraud"] == 1
    # the label could not be saved: open again, still alice's
    assert queue.reopen("tx-1", "alice")
    case = queue.case("tx-1")
    assert case is not None and case.status == "open" and case.claimed_by == "alice" and case.outcome is None
    assert queue.open_count() == 2 and queue.days(1)[0][1]["fraud"] == 0
    assert redis_client.pttl("af:{review}:case:tx-1") == -1
    # nobody's case may be resolved without a claim
    assert queue.resolve("tx-2", "bob", "legitimate", "known customer").status == "resolved"
    assert queue.resolve("tx-9", "bob", "legitimate", "no such case").status == "missing"


def test_the_case_keeps_no_features_and_the_answer_in_brief() -> None:
    fields = case_fields(review("tx-1", 1))
    assert fields["merchant"] == "m_1" and fields["card"] == "card_1" and fields["risk_score"] == "60"
    assert (
        "features" not in fields
        and '"big_amount"' in fields["reasons"]
        and '"model"' not in fields["reasons"]
    )


def test_stats_sum_the_buckets_of_a_window(redis_client: redis.Redis) -> None:
    stats = Stats(redis_client)
    now = datetime.now(UTC)
    batch = [
        cast(
            Decision, logged_decision(f"tx-{i}", i, decided_at=now.isoformat(), timings={"total_ms": 0.4 + i})
        )
        for i in range(6)
    ]
    batch[0]["reasons"]["rules"] = [{"rule": "r1", "action": "block", "reason": None}]
    batch[1]["reasons"]["shadow_rules"] = [{"rule": "s1", "action": "block", "reason": None}]
    batch[2]["degraded"] = ["features: redis unavailable (ConnectionError)"]
    stats.add(batch)
    totals = stats.window(now - timedelta(hours=1), now + timedelta(minutes=1))
    assert totals.n == 6 and totals.verdicts == {"allow": 2, "review": 2, "block": 2}
    assert totals.rules == {"r1": 1} and totals.shadow_rules == {"s1": 1} and totals.degraded == 1
    assert sum(totals.latency) == 6 and len(totals.latency) == len(LATENCY_EDGES_MS) + 1
    assert totals.latency_bound(0.5) == 3 and totals.latency_bound(0.99) == 7.5
    assert stats.window(now - timedelta(days=1), now - timedelta(hours=2)).n == 0


# -- through the console and the sink -------------------------------------------------------------------


def test_the_sinks_hook_queues_a_review_once_even_when_its_batch_is_passed_again(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    log = DecisionLog(redis_client)
    for i in range(3):
        log_decision(log, review(f"tx-{i}", i) if i != 1 else {**review("tx-1", 1), "verdict": "allow"})
    queue, stats = ReviewQueue(redis_client), Stats(redis_client)
    feed = ConsoleFeed(queue, stats)
    calls: list[int] = []

    def failing_once(decisions: Sequence[Logged], feedback: Sequence[Logged]) -> None:
        feed.after_write(decisions, feedback)
        calls.append(len(decisions))
        if len(calls) == 1:
            raise RuntimeError("the hook failed after feeding: the batch stays pending")

    store = open_store(str(tmp_path / "store"))
    try:
        sink = Sink(redis_client, store, block_ms=10, linger_ms=0, after_write=failing_once)
        with pytest.raises(RuntimeError):
            sink.run_once()
        assert sink.run_once() == 3 and calls == [3, 3]  # written and passed again, then acknowledged
    finally:
        store.close()
    assert [c.transaction_id for c in queue.page().cases] == ["tx-0", "tx-2"]
    assert queue.days(1)[0][1]["queued"] == 2


def test_the_hook_publishes_each_event_once(redis_client: redis.Redis) -> None:
    outbox = Outbox(redis_client, lambda _type: True)
    feed = ConsoleFeed(ReviewQueue(redis_client), Stats(redis_client), outbox)
    block = cast(Decision, {**review("tx-b", 2), "verdict": "block"})
    label = {
        "transaction_id": "tx-r",
        "kind": "label",
        "label": "fraud",
        "outcome": None,
        "decline_code": None,
        "reported_at": "2026-03-01T12:00:00+00:00",
        "received_at": "2026-03-01T12:00:01+00:00",
    }
    decisions = [Logged("1-0", review("tx-r", 1)), Logged("1-1", block)]
    feedback = [Logged("2-0", cast(FeedbackRecord, label))]
    for _ in range(2):  # a batch passed again
        feed.after_write(decisions, feedback)
    events = [orjson.loads(f[b"e"]) for _, f in redis_client.xrange("af:hooks:outbox")]  # type: ignore[union-attr]
    assert [e["id"] for e in events] == ["decision.review:tx-r", "decision.block:tx-b", "label.received:2-0"]
    assert (
        events[0]["data"]["reasons"]["rules"][0]["rule"] == "big_amount"
        and "features" not in events[0]["data"]
    )
    assert events[2]["data"]["label"] == "fraud"
    assert Stats(redis_client).window(datetime.now(UTC) - timedelta(hours=2), datetime.now(UTC)).n == 4


def test_a_resolution_becomes_a_label_the_api_and_the_features_see(
    redis_client: redis.Redis, model_dir: Path, tmp_path: Path
) -> None:
    with console_app(redis_client, model_dir, tmp_path) as app:
        assert app.score("tx-big", 0, amount=9500.0)["verdict"] == "review"
        app.drain()
        app.sign_in("alice")
        queue_page = app.http.get("/console/queue")
        token = csrf_token(queue_page.text)
        claimed = app.http.post("/console/queue/next", data={"csrf": token}, follow_redirects=False)
        assert claimed.headers["location"] == "/console/decisions/tx-big"
        # bob cannot take or resolve alice's case
        app.sign_in("bob")
        bob_token = csrf_token(app.http.get("/console/decisions/tx-big").text)
        assert "Claimed by alice" in app.http.get("/console/decisions/tx-big").text
        taken = app.http.post("/console/reviews/tx-big/claim", data={"csrf": bob_token})
        assert "claimed by alice" in taken.text
        refused = app.http.post(
            "/console/reviews/tx-big/resolve", data={"csrf": bob_token, "outcome": "legitimate", "note": "x"}
        )
        assert "claimed by alice" in refused.text
        # alice resolves it as fraud, with a note; a webhook endpoint subscribes to everything
        app.http.app.state.outbox = Outbox(redis_client, lambda _type: True)  # type: ignore[attr-defined]
        app.sign_in("alice")
        token = csrf_token(app.http.get("/console/decisions/tx-big").text)
        done = app.http.post(
            "/console/reviews/tx-big/resolve", data={"csrf": token, "outcome": "fraud", "note": "stolen card"}
        )
        assert done.status_code == 200 and "resolved as fraud" in done.text
        assert "Resolved as <strong>fraud</strong> by alice" in done.text
        app.drain()
        stored = app.http.get("/v1/decisions/tx-big", headers=app.bearer("alice")).json()
        assert [(f["kind"], f["label"]) for f in stored["feedback"]] == [("label", "fraud")]
        # the label reached the feature state: the card's next payment is blocked as a known fraud
        later = datetime.now(UTC).isoformat()  # after the label's time: it counts for this payment
        assert app.score("tx-next", 10, timestamp=later)["verdict"] == "block"
        (event,) = [orjson.loads(f[b"e"]) for _, f in redis_client.xrange("af:hooks:outbox")]  # type: ignore[union-attr]
        assert (event["id"], event["type"]) == ("review.resolved:tx-big", "review.resolved")
        assert event["data"]["outcome"] == "fraud" and event["data"]["resolved_by"] == "alice"
        day = ReviewQueue(redis_client).days(1)[0][1]
        assert (day["queued"], day["claimed"], day["fraud"]) == (1, 1, 1)
        # the audit log, drained into the store by the sink, read with what it has not written yet
        store = open_store(app.settings.store_url)
        try:
            actions = [a.record["action"] for a in AuditReader(store, redis_client).read(AuditQuery())]
        finally:
            store.close()
        assert actions.count("review.claim") == 2 and actions.count("review.resolve") == 2


def test_a_resolution_needs_a_note_and_a_scoped_key_sees_its_own_cases(
    redis_client: redis.Redis, model_dir: Path, tmp_path: Path
) -> None:
    with console_app(redis_client, model_dir, tmp_path) as app:
        app.score("tx-m1", 0, amount=9500.0)
        app.score("tx-m2", 1, amount=9600.0, merchant_id="m_2", card_id="card_b")
        app.drain()
        app.sign_in("shop2")
        page = app.http.get("/console/queue")
        assert "tx-m2" in page.text and "tx-m1" not in page.text
        token = csrf_token(page.text)
        assert app.http.post("/console/reviews/tx-m1/claim", data={"csrf": token}).status_code == 404
        assert app.http.post("/console/reviews/tx-m2/claim", data={"csrf": token}).status_code == 200
        no_note = app.http.post(
            "/console/reviews/tx-m2/resolve", data={"csrf": token, "outcome": "legitimate", "note": " "}
        )
        assert no_note.status_code == 422
        assert ReviewQueue(redis_client).case("tx-m2").status == "open"  # type: ignore[union-attr]


# -- failed challenges ----------------------------------------------------------------------------------


def _challenge(app: ConsoleApp, txid: str, result: str) -> httpx.Response:
    """The payment flow reports how the payer did on a challenge."""
    event = {"transaction_id": txid, "kind": "challenge", "result": result, "reported_at": T0.isoformat()}
    return app.http.post("/v1/feedback", json=event, headers=app.bearer("checkout"))


def test_a_failed_challenge_enters_the_queue_and_a_passed_one_does_not(
    redis_client: redis.Redis, model_dir: Path, tmp_path: Path
) -> None:
    with console_app(redis_client, model_dir, tmp_path, CHALLENGE_RULES) as app:
        assert app.score("tx-fail", 0, amount=5500.0)["verdict"] == "challenge"
        assert app.score("tx-pass", 1, amount=5600.0, card_id="card_b")["verdict"] == "challenge"
        app.drain()  # the decisions are stored before the results arrive
        assert _challenge(app, "tx-pass", "passed").status_code == 202
        failed = _challenge(app, "tx-fail", "failed")
        assert failed.status_code == 202 and failed.json()["matched"] is True
        app.drain()
        queue = ReviewQueue(redis_client)
        (case,) = queue.page().cases
        assert (case.transaction_id, case.source) == ("tx-fail", "challenge")
        assert case.reasons["challenge"] == "failed"
        assert case.amount == 5500.0 and case.reasons["rules"][0]["rule"] == "large_amount"
        app.sign_in("alice")
        page = app.http.get("/console/queue").text
        assert "the payer failed the challenge" in page and "tx-pass" not in page
        decision = app.http.get("/console/decisions/tx-fail").text
        assert "feedback: challenge failed" in decision
        assert "entered the review queue: the challenge failed" in decision
        assert "In the queue because the payer failed the challenge" in decision
        stored = app.http.get("/v1/decisions/tx-pass", headers=app.bearer("alice")).json()
        assert [(f["kind"], f["result"]) for f in stored["feedback"]] == [("challenge", "passed")]
        # neither result is a feature event: the card's declines are not counted
        later = app.score("tx-later", 2, amount=20.0)
        assert later["verdict"] == "allow"
        features = app.http.get("/v1/decisions/tx-later", headers=app.bearer("alice")).json()["features"]
        assert features["card_declines_1h"] == 0.0


def test_a_failed_challenge_whose_decision_is_still_in_the_buffer_is_queued(
    redis_client: redis.Redis, model_dir: Path, tmp_path: Path
) -> None:
    """The decision and its result in one batch of the sink: the hook reads the decision all the same."""
    with console_app(redis_client, model_dir, tmp_path, CHALLENGE_RULES) as app:
        app.score("tx-fast", 0, amount=5100.0)
        assert _challenge(app, "tx-fast", "failed").status_code == 202
        app.drain()
        case = ReviewQueue(redis_client).case("tx-fast")
        assert case is not None and case.source == "challenge" and queue_day(redis_client)["queued"] == 1


def queue_day(client: redis.Redis) -> dict[str, int]:
    """Today's counters of the review queue."""
    return ReviewQueue(client).days(1)[0][1]


def test_a_challenge_result_about_a_payment_not_challenged_is_a_conflict_naming_kind(
    redis_client: redis.Redis, model_dir: Path, tmp_path: Path
) -> None:
    with console_app(redis_client, model_dir, tmp_path, CHALLENGE_RULES) as app:
        assert app.score("tx-review", 0, amount=9500.0)["verdict"] == "review"
        for txid, says in (("tx-review", "was answered 'review'"), ("tx-nobody", "has no known decision")):
            refused = _challenge(app, txid, "failed")
            assert refused.status_code == 409
            assert refused.json()["fields"] == ["kind"] and says in refused.json()["detail"], refused.text
        assert redis_client.xlen("af:feedback") == 0
