"""The decision sink's after-write hook: what the console and the webhooks learn from each batch.

The sink calls `ConsoleFeed.after_write(decisions, feedback)` once the store holds a batch and before
it acknowledges it (engine/sink.py), so the scoring path pays nothing and a case appears within the
sink's linger plus its write. For the batch's decisions: each `review` enters the queue
(`ReviewQueue.enqueue`), all are counted in the 5-minute statistics (`Stats.add`), and
`decision.review` and `decision.block` are published to the webhook outbox; for its feedback, each
failed challenge puts its payment in the queue (source `challenge`: the decision is read through
`find`, from the buffer or the store, which both hold it once the feedback is written), and each
label publishes `label.received`. When the hook raises, the batch stays pending and is passed again:
the queue and the outbox are idempotent (a case, an event id, once); the statistics may count it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import cast

import redis
from prometheus_client import CollectorRegistry, Counter

from antifraud.engine.decision_reads import DecisionReader
from antifraud.engine.decision_record import Decision, FeedbackRecord
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.review.queue import ReviewQueue
from antifraud.engine.settings import Settings
from antifraud.engine.stats import Stats
from antifraud.engine.store import Logged, Store
from antifraud.engine.webhooks.outbox import EventType, Outbox

log = logging.getLogger("antifraud.review")

_DECISION_EVENTS: dict[str, EventType] = {"review": "decision.review", "block": "decision.block"}
#: a decision by its transaction id, wherever it is (engine/decision_reads.py's `DecisionReader.decision`)
FindDecision = Callable[[str], Decision | None]


def decision_event(decision: Decision) -> dict[str, object]:
    """The `data` of a decision's webhook event: the answer and the payment's figures, never the
    features."""
    reasons = decision["reasons"]
    return {
        "transaction_id": decision["transaction_id"],
        "merchant_id": decision["payment"].get("merchant_id"),
        "verdict": decision["verdict"],
        "score": decision["score"],
        "risk_score": decision["risk_score"],
        "reasons": {"rules": reasons["rules"], "band": reasons.get("band")},
        "amount": decision["amount"],
        "currency": decision["currency"],
        "timestamp": decision["timestamp"],
        "decided_at": decision["decided_at"],
        "model_version": decision["model_version"],
        "rules_version": decision["rules_version"],
    }


class ConsoleFeed:
    """The hook: the review queue, the statistics and (when webhooks are configured) the outbox.

    `find` reads the decision of a failed challenge; without it (a sink that cannot read decisions)
    failed challenges are counted as unqueued."""

    def __init__(
        self,
        queue: ReviewQueue,
        stats: Stats,
        outbox: Outbox | None = None,
        registry: CollectorRegistry | None = None,
        find: FindDecision | None = None,
    ) -> None:
        self.queue = queue
        self.stats = stats
        self.outbox = outbox
        self.find = find
        self.overflow = Counter(
            "antifraud_review_queue_full_total",
            "Review decisions not queued because the review queue held its most open cases",
            registry=registry,
        )
        self.unqueued_challenges = Counter(
            "antifraud_review_challenge_unqueued_total",
            "Failed challenges not queued because their decision could not be read (never logged)",
            registry=registry,
        )

    @classmethod
    def from_settings(
        cls,
        client: redis.Redis,
        settings: Settings,
        outbox: Outbox | None,
        registry: CollectorRegistry | None,
        store: Store | None = None,
    ) -> ConsoleFeed:
        """The hook of a sink serving `settings`' namespace and review queue bounds; with the sink's
        `store`, it reads the decisions of failed challenges (from the buffer, else the store)."""
        queue = ReviewQueue.from_settings(client, settings)
        find = DecisionReader(DecisionLog(client, settings.namespace), store).decision if store else None
        return cls(queue, Stats(client, settings.namespace), outbox, registry, find)

    def after_write(self, decisions: Sequence[Logged], feedback: Sequence[Logged]) -> None:
        """Feed one written batch: decisions first, then feedback."""
        written = [cast(Decision, d.record) for d in decisions]
        _, refused = self.queue.enqueue(d for d in written if d["verdict"] == "review")
        _, refused_challenges = self.queue.enqueue(self._failed_challenges(feedback), source="challenge")
        if refused + refused_challenges:
            self.overflow.inc(refused + refused_challenges)
        self.stats.add(written)
        if self.outbox is None:
            return
        for decision in written:
            event = _DECISION_EVENTS.get(decision["verdict"])
            if event is not None:
                tx = decision["transaction_id"]
                self.outbox.publish(event, f"{event}:{tx}", tx, decision_event(decision))
        for logged in feedback:
            record = cast(FeedbackRecord, logged.record)
            if record["kind"] == "label":
                tx = record["transaction_id"]
                self.outbox.publish("label.received", f"label.received:{logged.stream_id}", tx, dict(record))

    def _failed_challenges(self, feedback: Sequence[Logged]) -> list[Decision]:
        """The decisions of the batch's failed challenges (each once), read through `find`."""
        failed = {
            r["transaction_id"]
            for r in (cast(FeedbackRecord, f.record) for f in feedback)
            if r["kind"] == "challenge" and r.get("result") == "failed"
        }
        found = []
        for tx in sorted(failed):
            decision = self.find(tx) if self.find is not None else None
            if decision is None:
                log.warning("failed challenge of %s not queued: its decision cannot be read", tx)
                self.unqueued_challenges.inc()
            else:
                found.append(decision)
        return found
