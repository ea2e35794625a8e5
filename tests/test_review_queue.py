"""The review queue (engine/review/): the sink's hook feeds it once per decision, it is bounded,
claims lock a case for one reviewer and expire, and a resolution becomes a label through the
feedback path (GET /v1/decisions/{id} shows it), an outbox event and a day count."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from payloads import logged_decision

from antifraud.engine.decision_record import Decision
from antifraud.engine.review.queue import ReviewQueue, case_fields
from antifraud.engine.stats import LATENCY_EDGES_MS, Stats


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
    assert queue.next_case("bob", merchants={"m_b"}) == "b1"


def test_two_reviewers_never_hold_one_case_and_a_claim_expires(redis_client: redis.Redis) -> None:
    queue = ReviewQueue(redis_client, claim_s=1)
    queue.enqueue([review("tx-1", 1), review("tx-2", 2)])
    assert queue.claim("tx-1", "alice").status == "claimed"
    taken = queue.claim("tx-1", "bob")
    assert taken.status == "taken" and taken.holder == "alice" and 0 < taken.ms_left <= 1000
    assert queue.claim("tx-1", "alice").status == "claimed"  # renewed
    assert queue.next_case("bob") == "tx-2"  # the next free case
    assert queue.next_case("carol") is None
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
