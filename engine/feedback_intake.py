"""Taking in one feedback event: stored in the feedback buffer, then applied to the feature state.

`POST /v1/feedback` and the console's review resolution both call `FeedbackIntake.accept`, so a
reviewer's verdict becomes a label exactly as a label sent by the payment flow does: the sink stores
it, `GET /v1/decisions/{id}` shows it, the features (`card_frauds_30d`) and the training data learn
from it.

A caller scoped to merchants sends feedback only about payments it can see: a stored decision of one
of its merchants. Anything else (another merchant's payment, or a transaction id with no stored
decision) is `NotYours` and nothing is stored. The two are refused alike, so a scoped caller cannot
learn that another merchant's transaction id exists; and an unknown id is refused because nothing
proves it is the caller's merchant's: kept unmatched, it would be joined (by transaction id) to
whichever merchant's payment later carries that id. Unscoped callers keep feedback about unknown ids
(`matched` false), for chargebacks about payments the store no longer holds.

A challenge's result (`kind: challenge`) is taken only about a payment answered `challenge`: about
any other, or about an unknown transaction, it is `NotChallenged` and nothing is stored (a result
with nothing to attach it to could not put the payment in the review queue, which is what it is for).

The payment's entities come from its idempotency record within the dedupe horizon, and from the
store after it (engine/decision_reads.py). When the feedback buffer is full (the decision sink down
or far behind), `BufferFull` is raised: the event is never accepted and then dropped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from antifraud.engine.decision_reads import DecisionReader, StoreUnavailable
from antifraud.engine.decisions import BufferFull, DecisionLog
from antifraud.engine.feedback import FeedbackEvent
from antifraud.engine.metrics import Metrics
from antifraud.features.online import OnlineFeatures


class NotYours(Exception):
    """A caller scoped to merchants sent feedback about a payment none of its merchants made."""


class NotChallenged(Exception):
    """A challenge's result about a payment that was not answered `challenge` (or is unknown)."""


@dataclass(frozen=True)
class FeedbackIntake:
    """What accepting feedback needs: the log (its buffer), the reader (the payment), the features."""

    log: DecisionLog
    reader: DecisionReader
    features: OnlineFeatures
    metrics: Metrics

    def accept(self, event: FeedbackEvent, merchants: Collection[str] | None = None, who: str = "") -> bool:
        """Store `event` and apply it to the feature state; returns whether a decision of the payment
        is known (`matched`).

        `merchants`: the caller's (None: every merchant); `who` names the caller in a refusal.
        Raises `NotYours`, `NotChallenged`, `BufferFull`, or a Redis, OS or `StoreUnavailable` error
        (retry later); each but `NotChallenged` is counted in the metrics.
        """
        record = {**event.model_dump(mode="json"), "received_at": datetime.now(UTC).isoformat()}
        try:
            subject = self.reader.subject(event.transaction_id)
            if merchants is not None and (
                subject is None or subject.merchant_id is None or subject.merchant_id not in merchants
            ):
                raise NotYours(
                    f"key {who!r} may send feedback only about payments of its merchants; "
                    f"none is stored for transaction {event.transaction_id!r}"
                )
            if event.kind == "challenge" and (subject is None or subject.verdict != "challenge"):
                answered = f"was answered {subject.verdict!r}" if subject else "has no known decision"
                raise NotChallenged(
                    f"kind 'challenge' is only for a payment answered 'challenge'; transaction "
                    f"{event.transaction_id!r} {answered}"
                )
            self.log.add_feedback(record)  # logged before the feature update: an accepted event is never lost
            if subject is not None and event.feature_event is not None:
                # the payment's own time: a fraud label counts among the payments of its time
                tx = event.transaction_id
                payment = {**subject.entities, "transaction_id": tx, "timestamp": subject.timestamp}
                self.features.feedback(event.feature_event, tx, event.reported_at, payment)
        except BufferFull:
            self.metrics.buffer_full.labels("feedback").inc()
            raise
        except (redis.RedisError, OSError, StoreUnavailable):
            self.metrics.redis_errors.inc()
            raise
        self.metrics.feedback.labels(event.kind).inc()
        return subject is not None
