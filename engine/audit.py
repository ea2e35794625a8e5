"""The audit log: every sign-in, claim, resolution, list change and promotion, recorded before it is done.

`AuditLog.record` appends an `AuditRecord` to the stream `{ns}:audit`, bounded like the feedback buffer
(`append_bounded`, the same `BufferBound`): when the stream is full (the sink is not draining it), the
record is refused with `BufferFull` and so is the action, so nothing is ever done unrecorded. The stream
is a short buffer, as the decision streams are: the decision sink moves it into the durable store
(docs/console.md, "Audit").
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
