"""The audit log: every sign-in, claim, resolution, list change and promotion, recorded before it is done.

`AuditLog.record` appends an `AuditRecord` to the stream `{ns}:audit`, bounded like the feedback buffer
(`append_bounded`, the same `BufferBound`): when the stream is full (the sink is not draining it), the
record is refused with `BufferFull` and so is the action, so nothing is ever done unrecorded. The stream
is a short buffer, as the decision streams are: the decision sink moves it into the durable store
(docs/console.md, "Audit"). `AuditReader` reads the store, then the stream's tail the sink has not
written yet, as one list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol, cast

import orjson
import redis

from antifraud.engine.decision_record import AuditRecord
from antifraud.engine.decisions import BufferBound, BufferFull, append_bounded
from antifraud.engine.store import Audited, AuditQuery, Store

#: every action the console records (docs/console.md)
ACTIONS: Final = frozenset(
    {
        "signin",
        "signin.refused",
        "signout",
        "review.claim",
        "review.release",
        "review.resolve",
        "list.add",
        "list.remove",
        "rules.test",
        "rules.promote",
        "hooks.retry",
    }
)
#: the stream entry's field holding the record's JSON
FIELD: Final = b"a"
#: the most entries of the stream's tail a read looks through (newest first): the sink writes the stream
#: within about a second, so only a sink that has stopped leaves more unwritten
TAIL_SCAN: Final = 2000


class Actor(Protocol):
    """Who acts: a console session (engine.console.sessions.Session) or a visitor not yet signed in."""

    @property
    def key_name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def ip(self) -> str: ...


@dataclass(frozen=True)
class Visitor:
    """An actor not signed in: someone trying to sign in, from `ip`, with a key that may be unknown."""

    ip: str
    key_name: str = ""
    role: str = ""


class AuditLog:
    """Appends audit records to the bounded stream `{ns}:audit` and reads its latest ones."""

    def __init__(self, client: redis.Redis, namespace: str = "af", bound: BufferBound | None = None) -> None:
        self.client = client
        self.stream = f"{namespace}:audit"
        self.bound = bound or BufferBound()

    def record(
        self, actor: Actor, action: str, subject: str = "", detail: Mapping[str, object] | None = None
    ) -> str:
        """Record an action before doing it; returns the record's stream id. Raises `BufferFull` when
        the stream is at its bound (the action must then be refused) and ValueError for an action
        not in ACTIONS."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; known: {sorted(ACTIONS)}")
        entry: AuditRecord = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "actor": actor.key_name,
            "role": actor.role,
            "action": action,
            "subject": subject,
            "detail": dict(detail or {}),
            "ip": actor.ip,
        }
        stream_id = append_bounded(self.client, self.stream, self.bound, FIELD, orjson.dumps(entry))
        if stream_id is None:
            raise BufferFull(self.stream)
        return stream_id

    def latest(self, count: int = 20) -> list[AuditRecord]:
        """The newest `count` records still in the stream (not yet moved to the store), newest first."""
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.client.xrevrange(self.stream, count=count)
        )
        return [cast(AuditRecord, orjson.loads(fields[FIELD])) for _, fields in entries if FIELD in fields]


def _moment(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def _entry_order(item: Audited) -> tuple[datetime, int, int]:
    milliseconds, _, sequence = item.stream_id.partition("-")
    return _moment(item.record["at"]), int(milliseconds or 0), int(sequence or 0)


def matches(record: AuditRecord, query: AuditQuery) -> bool:
    """Whether an audit record is one `query` asks for (as the store's own filter)."""
    wanted = (query.actor, query.action, query.subject)
    if any(
        w is not None and w != got
        for w, got in zip(wanted, (record["actor"], record["action"], record["subject"]), strict=True)
    ):
        return False
    at = _moment(record["at"])
    return (query.start is None or at >= _aware(query.start)) and (
        query.end is None or at < _aware(query.end)
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class AuditReader:
    """The audit log as the console shows it: the records in the store and those still in the stream,
    newest first, each once (a record written but not yet trimmed from the stream is in both)."""

    def __init__(
        self, store: Store, client: redis.Redis, namespace: str = "af", scan: int = TAIL_SCAN
    ) -> None:
        self.store = store
        self.client = client
        self.stream = f"{namespace}:audit"
        self.scan = scan

    def read(self, query: AuditQuery) -> list[Audited]:
        """The records matching `query`, at most `query.limit`. Raises the store's `errors` when it
        cannot be read."""
        found = {item.stream_id: item for item in self.store.audit(query)}
        for item in self.tail(query):
            found.setdefault(item.stream_id, item)
        return sorted(found.values(), key=_entry_order, reverse=True)[: query.limit]

    def read_or_tail(self, query: AuditQuery) -> list[AuditRecord]:
        """The records of `read`, or of the tail alone while the store cannot be read (a page that
        shows the latest records as a side panel shows what it can rather than fail)."""
        try:
            found = self.read(query)
        except self.store.errors:
            found = self.tail(query)[: query.limit]
        return [item.record for item in found]

    def tail(self, query: AuditQuery) -> list[Audited]:
        """The records matching `query` among the stream's newest `scan` entries."""
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.client.xrevrange(self.stream, count=self.scan)
        )
        records = (
            Audited(ident.decode(), cast(AuditRecord, orjson.loads(fields[FIELD])))
            for ident, fields in entries
            if FIELD in fields
        )
        return [item for item in records if matches(item.record, query)]
