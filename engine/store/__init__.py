"""The durable decision store: every decision, its model contributions, every feedback event and the
console's audit records, kept for as long as the provider sets, outside Redis (which holds only the hot
state and a short buffer; docs/decisions.md).

Two backends behind one small interface, as Feast keeps its online store apart from its feature
definitions: Parquet files partitioned by day, queried with DuckDB (the embedded default, one host),
and PostgreSQL (several service hosts sharing one store). `open_store(url)` picks one by its URL.
The decision sink (`antifraud.engine.sink`) is the only writer; the API's reads, the console,
monitoring and `export-decisions` read through `Store`'s query methods.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from antifraud.engine.decision_record import AuditRecord, ContributionsRecord, Decision, FeedbackRecord
from antifraud.engine.verdicts import Verdict


@dataclass(frozen=True)
class Logged:
    """A record as the sink read it from its Redis stream: the stream entry id makes every write
    idempotent (a batch written again after a crash adds nothing)."""

    stream_id: str  # e.g. "1764950000000-0"
    record: Decision | FeedbackRecord | ContributionsRecord | AuditRecord


@dataclass(frozen=True)
class DecisionQuery:
    """What `Store.search` looks for; every given field must match. Newest payments first."""

    card_id: str | None = None
    customer_id: str | None = None
    merchant_id: str | None = None
    verdict: Verdict | None = None
    start: datetime | None = None  # payment time, inclusive
    end: datetime | None = None  # payment time, exclusive
    limit: int = 100


@dataclass(frozen=True)
class AuditQuery:
    """What `Store.audit` looks for; every given field must match. Newest records first."""

    actor: str | None = None
    action: str | None = None
    subject: str | None = None
    start: datetime | None = None  # the record's time (`at`), inclusive
    end: datetime | None = None  # exclusive
    limit: int = 100


class Audited(NamedTuple):
    """An audit record read back, with the stream entry it was written from (the same record read
    from the store and from the stream's unwritten tail is one record: engine/audit.py)."""

    stream_id: str
    record: AuditRecord


@dataclass(frozen=True)
class Written:
    """What one `Store.write` added: records new to the store (the rest were there already)."""

    decisions: int
    feedback: int
    contributions: int = 0
    audit: int = 0


def with_contributions(decision: Decision, contributions: ContributionsRecord | None) -> Decision:
    """The decision as read back: its stored contributions put into `reasons.model` (in place, and
    returned), only when its own `reasons.model` is empty and they were computed by the model that
    decided (the same `model_version`); otherwise the decision exactly as logged.

    A flagged decision's contributions are computed after its answer and logged as a second record of
    the transaction (`ContributionsRecord`); every read of a decision goes through here, so the API,
    the console and `export-decisions` see one record."""
    reasons = decision.get("reasons")
    if (
        contributions is None
        or not reasons
        or reasons.get("model")
        or decision.get("model_version") is None
        or contributions.get("model_version") != decision.get("model_version")
    ):
        return decision
    reasons["model"] = contributions["contributions"]
    return decision


class Store(Protocol):
    """A durable store of decisions, their contributions and feedback events. Writes are idempotent and
    durable on return; every read of a decision merges its contributions (`with_contributions`)."""

    url: str
    #: the exceptions that mean the store cannot be read or written now (down, unreachable, files
    #: unreadable): the API answers 503 and the sink retries
    errors: tuple[type[Exception], ...]

    def write(
        self,
        decisions: Sequence[Logged],
        feedback: Sequence[Logged],
        contributions: Sequence[Logged] = (),
        audit: Sequence[Logged] = (),
    ) -> Written:
        """Add a batch; idempotent by transaction id (decisions, contributions: the first kept) and by
        stream id (feedback, audit records). Contributions may come before, with or after their decision.

        Returns only once the batch is durable (fsynced files, a committed transaction): the sink
        acknowledges the stream entries after this returns, never before.
        """
        ...

    def decision(self, transaction_id: str, timestamp: datetime | None = None) -> Decision | None:
        """The stored decision of a transaction, with its contributions, or None.

        `timestamp`, the payment's time when the caller knows it: only a decision of that UTC day is
        found (the Parquet store then reads that day's partition alone instead of every day's)."""
        ...

    def feedback_for(self, transaction_id: str) -> list[FeedbackRecord]:
        """The feedback events about a transaction, in the order they were received."""
        ...

    def search(self, query: DecisionQuery) -> list[Decision]:
        """Decisions matching `query` (with their contributions), newest payment first, at most
        `query.limit`."""
        ...

    def audit(self, query: AuditQuery) -> list[Audited]:
        """Audit records matching `query`, newest first (by time, then stream entry), at most
        `query.limit`."""
        ...

    def apply_retention(self, before: datetime) -> int:
        """Delete the decisions and contributions of payments, the feedback received and the audit
        records made before the UTC day of `before` (whole days, on both backends: the Parquet store
        deletes day partitions); returns how many records were deleted."""
        ...

    def iter_decisions(
        self, start: datetime | None = None, end: datetime | None = None, batch: int = 5000
    ) -> Iterator[list[Decision]]:
        """Every decision of a payment time in [start, end) (None: unbounded), as logged with its
        contributions merged (`with_contributions`), in batches of
        at most `batch`, in payment time order, then transaction id. Memory is bounded by the batch
        (and the database's own sort, which spills to disk), whatever the size of the store."""
        ...

    def iter_feedback(
        self, start: datetime | None = None, end: datetime | None = None, batch: int = 5000
    ) -> Iterator[list[FeedbackRecord]]:
        """Every feedback event received in [start, end) (None: unbounded), as logged, in batches of at
        most `batch`, in the order received (received time, then stream entry)."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def open_store(url: str) -> Store:
    """The store a URL names: `postgresql://...` or `postgres://...` is a `PostgresStore`;
    `parquet:///abs/dir` or a plain path is a `ParquetStore` on that directory."""
    # each backend is imported only when used: psycopg and DuckDB are not loaded by a host using the other
    if url.startswith(("postgresql://", "postgres://")):
        from antifraud.engine.store.postgres import PostgresStore

        return PostgresStore(url)
    from antifraud.engine.store.parquet import ParquetStore

    return ParquetStore(url.removeprefix("parquet://"))
