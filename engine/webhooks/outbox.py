"""The webhook outbox: events waiting for the delivery worker, in the bounded stream `{ns}:hooks:outbox`.

Who publishes: the decision sink's after-write hook (`decision.review`, `decision.block`,
`label.received`) and the console (`review.resolved`), only for event types some endpoint subscribes to.
An event's id is deterministic (`<type>:<transaction id>`, or `label.received:<feedback stream id>`), and
each id is published once an hour at most (`{ns}:hooks:seen:<id>`): a batch the sink writes again after a
crash publishes nothing new. The outbox is bounded like the feedback buffer (`append_bounded`); an event
that finds it full goes to the dead letters (`{ns}:hooks:dead`) as "outbox full", where the console shows
it and an admin can retry it.

An event is marked seen after it entered the outbox: a crash between the two may publish it twice, never
lose it; receivers drop repeats by the `Antifraud-Delivery` header (the event id).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Literal, TypedDict

import orjson
import redis

from antifraud.engine.decisions import BufferBound, append_bounded

EventType = Literal["decision.review", "decision.block", "review.resolved", "label.received"]
EVENT_TYPES: Final[tuple[EventType, ...]] = (
    "decision.review",
    "decision.block",
    "review.resolved",
    "label.received",
)
#: the outbox's bound: about 100,000 events of a few hundred bytes, with no age limit (retries last an hour)
OUTBOX_BOUND: Final = BufferBound(max_entries=100_000, max_age_s=0)
#: how long an event id is remembered as published
SEEN_S: Final = 3600
#: the dead letters kept (approximately: the newest)
DEAD_MAXLEN: Final = 10_000
#: the stream entry's field holding the event's JSON
FIELD: Final = b"e"


class HookEvent(TypedDict):
    """An event as the outbox holds it. The POSTed body is `{id, type, created, data}`; the worker keeps
    the events of one transaction in order by `transaction_id`."""

    id: str
    type: EventType
    created: str  # ISO 8601, UTC
    transaction_id: str
    data: dict[str, object]


class Outbox:
    """Publishes webhook events into the outbox stream, each id once."""

    def __init__(
        self,
        client: redis.Redis,
        subscribed: Callable[[str], bool],
        namespace: str = "af",
        bound: BufferBound = OUTBOX_BOUND,
    ) -> None:
        """`subscribed(event_type)`: whether some configured endpoint wants that type (the endpoints
        file is reloaded live, so it is asked at each event)."""
        self.client = client
        self.subscribed = subscribed
        self.bound = bound
        self.stream = f"{namespace}:hooks:outbox"
        self.dead = f"{namespace}:hooks:dead"
        self._seen = f"{namespace}:hooks:seen:"

    def publish(
        self, event_type: EventType, event_id: str, transaction_id: str, data: Mapping[str, object]
    ) -> bool:
        """Queue an event for delivery; True when it entered the outbox. False when no endpoint
        subscribes to its type, when its id was published within the hour, or when the outbox was full
        (it is then a dead letter, "outbox full")."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        seen = self._seen + event_id
        if not self.subscribed(event_type) or self.client.exists(seen):
            return False
        event: HookEvent = {
            "id": event_id,
            "type": event_type,
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "transaction_id": transaction_id,
            "data": dict(data),
        }
        body = orjson.dumps(event)
        entered = append_bounded(self.client, self.stream, self.bound, FIELD, body) is not None
        if not entered:
            self.client.xadd(
                self.dead,
                {"endpoint": "", "event": body, "status": "", "error": "outbox full"},
                maxlen=DEAD_MAXLEN,
                approximate=True,
            )
        self.client.set(seen, 1, ex=SEEN_S)
        return entered
