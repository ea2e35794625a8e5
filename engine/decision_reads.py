"""The one read path for decisions: the buffer in Redis first, then the durable store.

Every reader of decisions goes through `DecisionReader`: GET /v1/decisions/{id}, feedback (to find
the payment's entities), the 409 of a changed retry (to name the fields), searches for the console
and monitoring. Where a decision is:

- decided within the dedupe horizon: Redis holds its idempotency record, which says where its whole
  decision is: still in the buffer (its stream entry, until the sink has written it) or in the store,
  in the day partition of its payment time;
- older: only in the store (found by transaction id alone, which for the Parquet store means reading
  every day partition: docs/decisions.md).

Feedback is read from the store only: an event accepted a moment ago shows once the sink has written
it (about a second, the sink's lag).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis

from antifraud.engine.decision_record import Decision, FeedbackRecord, IdempotencyRecord
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.pipeline import changed_fields, entities_of
from antifraud.engine.store import DecisionQuery, Store
from antifraud.engine.verdicts import Verdict

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The durable store could not be read (PostgreSQL down, files unreadable): retry later."""


@dataclass(frozen=True)
class Subject:
    """What feedback needs of a decided payment: whose it is, when it was, its entities, and what it
    was answered (a challenge's result is taken only about a payment answered `challenge`)."""

    merchant_id: str | None
    timestamp: datetime
    entities: Mapping[str, str]
    verdict: Verdict


@dataclass
class DecisionReader:
    """Decisions and feedback, from the buffer and the store."""

    log: DecisionLog
    store: Store

    def decision(self, transaction_id: str) -> Decision | None:
        """A decision, as logged (with its contributions when they are stored), or None."""
        return self._whole(transaction_id, self.log.record(transaction_id))

    def _whole(self, transaction_id: str, record: IdempotencyRecord | None) -> Decision | None:
        if record is not None and record["stream_id"] is not None:
            buffered = self.log.buffered(record["stream_id"])
            if buffered is not None:
                return buffered
        # written by the sink (it trims an entry only after the store holds it), or never logged
        when = datetime.fromisoformat(record["timestamp"]) if record is not None else None
        return self._from_store(lambda: self.store.decision(transaction_id, when))

    def feedback_for(self, transaction_id: str) -> list[FeedbackRecord]:
        """The feedback events the store holds about a transaction, in the order they were received."""
        return self._from_store(lambda: self.store.feedback_for(transaction_id))

    def search(self, query: DecisionQuery) -> list[Decision]:
        """Decisions matching `query` in the store, newest payment first."""
        return self._from_store(lambda: self.store.search(query))

    def subject(self, transaction_id: str) -> Subject | None:
        """Whose payment a transaction was, when, and its entities; None when no decision is known.

        From the idempotency record within the dedupe horizon (one Redis read: the bank's outcome
        and most refunds come then), from the stored decision after it (a chargeback weeks later).
        """
        record = self.log.record(transaction_id)
        if record is not None:
            entities = record["entities"]
            when = datetime.fromisoformat(record["timestamp"])
            return Subject(entities.get("merchant_id"), when, entities, record["verdict"])
        decision = self._whole(transaction_id, None)
        if decision is None:
            return None
        entities = entities_of(decision["payment"])
        when = datetime.fromisoformat(decision["timestamp"])
        return Subject(entities.get("merchant_id"), when, entities, decision["verdict"])

    def changed_fields(self, record: IdempotencyRecord, payment: Mapping[str, Any]) -> list[str] | None:
        """The fields in which a refused retry differs from the decided payment; None when the whole
        decision cannot be read (the store unavailable, or the decision was never logged)."""
        try:
            decided = self._whole(record["transaction_id"], record)
        except (StoreUnavailable, redis.RedisError, OSError):
            return None  # the 409 stands, without the field names (engine.api.errors.conflict)
        return changed_fields(decided, payment) if decided is not None else None

    def _from_store(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except self.store.errors as exc:
            raise StoreUnavailable(f"the decision store {self.store.url} is unavailable: {exc}") from exc
