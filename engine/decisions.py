"""The decision log's Redis side: a compact idempotency record per payment, and the buffer streams.

- `{ns}:{tx:<id>}:d`  the idempotency record (`IdempotencyRecord`, a JSON array), kept for the feature
                      spec's dedupe horizon: the answer, a digest of the payment, its entity fields and
                      the decision's entry id in the buffer. A retry is answered from it; feedback
                      finds the payment's entities in it.
- `{ns}:decisions`    the buffer of decisions (field "d": a `DecisionEntry`, its features as an array)
                      and of flagged decisions' model contributions (field "c", logged just after the
                      answer).
- `{ns}:decisions:features`  the names of the entries' feature lists, by id (`FeatureLists`).
- `{ns}:feedback`     the buffer of accepted feedback events (field "e").

On a Redis Cluster the record and the feature lists take the decisions stream's name as their hash
tag (`{{ns}:decisions}:{tx:<id>}:d`, `{{ns}:decisions}:features`), since one script writes all three:
the decision log lives on one shard, the feature state on all of them (docs/scale.md).

The encodings are engine/decision_entry.py's.

The decision sink (engine/sink.py) writes the buffers to the durable store and trims them; nothing
else does. Both are bounded (`BufferBound`): once full, a decision is still answered and its
idempotency record kept, but it is not logged and says so (`BUFFER_FULL` in `degraded`); feedback is
refused, for its sender to retry. Nothing is ever dropped from a buffer unwritten (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

import orjson
import redis
from redis.commands.core import Script
from redis.typing import EncodableT

from antifraud.engine.decision_entry import FeatureLists, decision_of, entry_json, record_head, record_of
from antifraud.engine.decision_record import (
    ContributionsRecord,
    Decision,
    DecisionEntry,
    FeedbackRecord,
    IdempotencyRecord,
    JSONObject,
)
from antifraud.engine.redis_script import DirectScript
from antifraud.engine.redis_url import following_moves, on_cluster, same_slot_as, slot_pipeline

log = logging.getLogger(__name__)

#: the `degraded` entry of a decision answered while the buffer was full: it is not in the log
BUFFER_FULL: Final = "decision log: buffer full"

# Whether a buffer has room: fewer than `max_entries` entries, and (max_age_ms > 0) its oldest entry
# at most max_age_ms old by Redis's clock. The sink trims what it has written, so the oldest entry is
# the oldest one not yet written. The age is read only once the buffer holds `age_from` entries
# (`BufferBound.age_from`): reading the oldest entry (XRANGE copies it into Lua) and the clock cost
# each payment ~8 us of Redis time (a third of this script's, measured with 3 KB entries; 1.4 KB
# now), and a buffer that short is a second or two of payments.
AGE_CHECK_FROM: Final = 10_000
_ROOM = """
local function room(stream, max_entries, max_age_ms, age_from)
  local n = redis.call('XLEN', stream)
  if n >= max_entries then return false end
  if max_age_ms <= 0 or n < age_from then return true end
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if not oldest then return true end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  return now_ms - tonumber(string.match(oldest[1], '^%d+')) <= max_age_ms
end
"""

# Log a decision unless the transaction already has one (a concurrent retry won the race: its
# record is returned). KEYS: record, stream, feature lists. ARGV: the bound (max entries, max age ms,
# age from), the record's JSON array without its last value (`stream_id`), record TTL ms, the entry's
# JSON, its feature list's id. Returns the earlier record, 1 when logged, 0 when the buffer was full
# (the record is kept, with a null stream id), -1 when Redis does not hold the feature list's names
# (nothing written: the caller saves them and calls again; a reader could not name the features).
_PUT = (
    _ROOM
    + """
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
if redis.call('HEXISTS', KEYS[3], ARGV[7]) == 0 then return -1 end
if room(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then
  local id = redis.call('XADD', KEYS[2], '*', 'd', ARGV[6])
  redis.call('SET', KEYS[1], ARGV[4] .. '"' .. id .. '"]', 'PX', ARGV[5])
  return 1
end
redis.call('SET', KEYS[1], ARGV[4] .. 'null]', 'PX', ARGV[5])
return 0
"""
)

# Append one entry to a bounded stream if it has room. KEYS: stream. ARGV: the bound (max entries, max
# age ms, age from), field, value. Returns the entry id, or false when full.
_APPEND = (
    _ROOM
    + """
if room(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then
  return redis.call('XADD', KEYS[1], '*', ARGV[4], ARGV[5])
end
return false
"""
)

_APPEND_SHA: Final = hashlib.sha1(_APPEND.encode()).hexdigest()


@dataclass(frozen=True)
class BufferBound:
    """How much a buffer stream may hold before it refuses entries (docs/decisions.md): entries, and
    the age of its oldest entry (0: no age bound). With the sink running a buffer holds about a second
    of payments; the bound is what a sink outage may fill before decisions are answered unlogged."""

    max_entries: int = 1_000_000
    max_age_s: float = 86_400.0

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ValueError(f"the buffer's max_entries must be at least 1, got {self.max_entries}")
        if not self.max_age_s >= 0:
            raise ValueError(f"the buffer's max_age_s must be 0 (none) or more, got {self.max_age_s}")

    @property
    def age_from(self) -> int:
        """From how many entries on the age is read: AGE_CHECK_FROM, or a tenth of a smaller bound
        (a bound of 2,000 entries has its age checked from 200)."""
        return min(AGE_CHECK_FROM, max(1, self.max_entries // 10))

    @property
    def args(self) -> tuple[int, int, int]:
        return self.max_entries, int(self.max_age_s * 1000), self.age_from


class BufferFull(Exception):
    """A buffer stream is at its bound: the sink is down or far behind."""

    def __init__(self, stream: str) -> None:
        super().__init__(
            f"the {stream} buffer is full: the decision sink is not writing it to the store "
            "(check `antifraud sink` and the store); retry later"
        )
        self.stream = stream


#: the `degraded` entry of a decision logged on the primary whose replicas did not confirm it in time
#: (`Replication`): it is answered and logged, but a failover right now could lose it
NOT_REPLICATED: Final = "decision log: not replicated"

#: what `DecisionLog.put` did with a new decision (the store's `Logged` is a record read back)
PutResult = Literal["logged", "buffer full", "not replicated"]


@dataclass(frozen=True)
class Replication:
    """How many replicas must hold a decision or feedback event before it is acknowledged (Redis's
    `WAIT replicas timeout_ms`, sent after the write on the same connection), and how long to wait.
    0 replicas: no wait (the default; one Redis has none). On a cluster with a replica per primary,
    1 means a failover never loses an acknowledged decision or feedback event (docs/scale.md)."""

    replicas: int = 0
    timeout_ms: int = 20


class DecisionLog:
    """Writes decisions, contributions and feedback into the buffers, and keeps and reads the
    idempotency records; a thin layer over redis-py."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "af",
        record_ttl_ms: int = 2 * 86_400_000,
        bound: BufferBound | None = None,
        replication: Replication | None = None,
    ) -> None:
        """`record_ttl_ms`: how long an idempotency record is kept; the service passes the feature
        spec's dedupe horizon, so a retry the feature state recognizes always finds its record."""
        self.client = client
        self.ns = namespace
        self.record_ttl_ms = record_ttl_ms
        self.bound = bound or BufferBound()
        self.replication = replication or Replication()
        self._unreplicated_until = 0.0  # monotonic time until which WAIT is skipped (`_replicated`)
        self.decisions_stream = f"{namespace}:decisions"
        self.feedback_stream = f"{namespace}:feedback"
        self.feature_lists = FeatureLists(client, namespace)
        # The script writes a record, the stream and reads the feature lists in one step, so on a
        # cluster all three share the stream's slot (a record hashes by its transaction elsewhere).
        self._on_cluster = on_cluster(client)
        self._record_prefix = f"{same_slot_as(self.decisions_stream, client)}:{{tx:"
        # the scoring path's call, over its own connection (engine/redis_script.py): about 20 us of
        # the worker's CPU less per payment than redis-py's Script
        self._put = DirectScript(client, _PUT)
        self._put_script = client.register_script(_PUT)  # for a pipeline with WAIT (`_replicated`)
        self._append_script = client.register_script(_APPEND)

    def _key(self, txid: str) -> str:
        return f"{self._record_prefix}{txid}}}:d" if self._on_cluster else f"{self.ns}:{{tx:{txid}}}:d"

    def feature_list(self, names: Sequence[str]) -> str:
        """The id of a list of feature names, for a `DecisionEntry`'s `feature_list`: the first entry
        logged with it saves the names in Redis, where every reader finds them."""
        return self.feature_lists.id_of(names)

    def put(self, entry: DecisionEntry, record: IdempotencyRecord) -> IdempotencyRecord | PutResult:
        """Log a new decision with its idempotency record, in one atomic step. Returns the earlier
        record when the transaction already has one (nothing is written), else whether the decision
        entered the buffer ("logged") or found it full ("buffer full"; the record is kept). Its
        feature list must be known to this log (`feature_list`)."""
        keys, args = self._put_call(entry, record)
        if self.replication.replicas:
            return self._put_replicated(entry, keys, args)
        done = self._put(keys, args)
        if done == -1:  # the list's first entry, or a Redis that lost the names (restarted empty)
            self.feature_lists.save(entry["feature_list"])
            done = self._put(keys, args)
        return _put_result(done, entry["transaction_id"])

    def _put_replicated(
        self, entry: DecisionEntry, keys: list[str], args: list[EncodableT]
    ) -> IdempotencyRecord | PutResult:
        done, copies = self._replicated(self._put_script, keys, args)
        if done == -1:
            self.feature_lists.save(entry["feature_list"])
            done, copies = self._replicated(self._put_script, keys, args)
        result = _put_result(done, entry["transaction_id"])
        if result == "logged" and copies < self.replication.replicas:
            return "not replicated"
        return result

    def _replicated(self, script: Script, keys: list[str], args: Sequence[EncodableT]) -> tuple[object, int]:
        """Run `script` and WAIT on the same connection (the node of the keys' slot): its reply, and
        how many replicas confirmed the write within the timeout."""
        pipe = slot_pipeline(self.client, keys[0])
        script(keys=keys, args=args, client=pipe)
        if time.monotonic() < self._unreplicated_until:
            # the last WAIT went unmet (the shard lost its replica: a failover): for a second, do not
            # block each call for the whole timeout, and answer its writes as not replicated
            with following_moves(self.client):
                (reply,) = pipe.execute()
            return reply, 0
        pipe.execute_command("WAIT", self.replication.replicas, self.replication.timeout_ms)
        with following_moves(self.client):
            reply, copies = pipe.execute()
        if int(copies) < self.replication.replicas:
            self._unreplicated_until = time.monotonic() + 1.0
        return reply, int(copies)

    async def aput(self, entry: DecisionEntry, record: IdempotencyRecord) -> IdempotencyRecord | PutResult:
        """`put` without blocking the event loop while Redis runs the script."""
        keys, args = self._put_call(entry, record)
        if self.replication.replicas:  # blocks for the write and its WAIT (docs/scale.md: the cost)
            return self._put_replicated(entry, keys, args)
        done = await self._put.acall(keys, args)
        if done == -1:  # as in `put`; saving the names blocks, once per list and Redis
            self.feature_lists.save(entry["feature_list"])
            done = await self._put.acall(keys, args)
        return _put_result(done, entry["transaction_id"])

    def _put_call(
        self, entry: DecisionEntry, record: IdempotencyRecord
    ) -> tuple[list[str], list[EncodableT]]:
        keys = [self._key(entry["transaction_id"]), self.decisions_stream, self.feature_lists.key]
        args: list[EncodableT] = [
            *self.bound.args,
            record_head(record),
            self.record_ttl_ms,
            entry_json(entry),
            entry["feature_list"],
        ]
        return keys, args

    def record(self, txid: str) -> IdempotencyRecord | None:
        """The idempotency record of a transaction decided within the dedupe horizon, or None."""
        raw = cast(bytes | None, self.client.get(self._key(txid)))
        return record_of(raw, txid) if raw else None

    def buffered(self, stream_id: str) -> Decision | None:
        """The decision at `stream_id` in the buffer, its features by name, or None once the sink has
        written and trimmed it."""
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            self.client.xrange(self.decisions_stream, min=stream_id, max=stream_id),
        )
        raw = entries[0][1].get(b"d") if entries else None
        return decision_of(raw, self.feature_lists.names) if raw else None

    def log_contributions(self, record: ContributionsRecord) -> bool:
        """Log a flagged decision's contributions (a second record of its transaction, which the sink
        stores beside the decision); False when the buffer is full (they are left out)."""
        return self._append_to(self.decisions_stream, b"c", _dumps(record)) is not None

    def add_feedback(self, event: FeedbackRecord | Mapping[str, str | None]) -> str:
        """Log a feedback event; returns its entry id. Raises `BufferFull` when the buffer is full:
        the event is not accepted, and its sender should retry."""
        entry = self._append_to(self.feedback_stream, b"e", _dumps(event))
        if entry is None:
            raise BufferFull(self.feedback_stream)
        return entry

    def _append_to(self, stream: str, field: bytes, value: bytes) -> str | None:
        if not self.replication.replicas:
            return append_bounded(self.client, stream, self.bound, field, value)
        entry, copies = self._replicated(self._append_script, [stream], (*self.bound.args, field, value))
        if entry is not None and copies < self.replication.replicas:
            # accepted on the primary only: a failover now could lose it (counted in the log)
            log.warning(
                "%s entry %s not confirmed by %d replica(s) in %d ms",
                stream,
                entry,
                self.replication.replicas,
                self.replication.timeout_ms,
            )
        return entry.decode() if isinstance(entry, bytes) else None


def append_bounded(
    client: redis.Redis, stream: str, bound: BufferBound, field: bytes, value: bytes
) -> str | None:
    """Append one entry (`field` = `value`) to `stream` if it has room under `bound`, in one atomic
    step; returns its entry id, or None when the stream is full. The feedback buffer, the audit log
    (engine/audit.py) and the webhook outbox (engine/webhooks/outbox.py) are bounded by it: none of
    them is ever trimmed below what its reader has not yet taken."""
    args = (*bound.args, field, value)
    try:
        entry = client.evalsha(_APPEND_SHA, 1, stream, *args)
    except redis.exceptions.NoScriptError:  # a Redis that has not seen the script yet, or restarted
        entry = client.eval(_APPEND, 1, stream, *args)
    return entry.decode() if isinstance(entry, bytes) else None


def _put_result(done: object, txid: str) -> IdempotencyRecord | PutResult:
    if isinstance(done, bytes):
        return record_of(done, txid)
    return "logged" if done == 1 else "buffer full"


def answered(record: IdempotencyRecord) -> list[str]:
    """The `degraded` list a retry is answered with: the record's, and `BUFFER_FULL` when the first
    request found the buffer full (the record's stream id is then null)."""
    degraded = list(record["degraded"])
    if record["stream_id"] is None and BUFFER_FULL not in degraded:
        degraded.append(BUFFER_FULL)
    return degraded


def _dumps(record: FeedbackRecord | ContributionsRecord | JSONObject | Mapping[str, str | None]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
