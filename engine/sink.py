"""The decision sink: moves decisions and feedback from their Redis streams into the durable store.

The scoring path appends every decision to `{ns}:decisions` (field "d"), a flagged decision's model
contributions right after its answer to the same stream (field "c"), and every feedback event to
`{ns}:feedback` (field "e"), and the console appends every action of its users to `{ns}:audit` (field "a",
engine/audit.py); the streams are a short buffer (engine/decisions.py). The sink reads all three
with a consumer group (`sink` by default, created at the start of each stream so nothing logged
before the first run is skipped), writes a batch to the store (`antifraud.engine.store.Store.write`,
durable on return) and only then acknowledges it (XACK) and trims the stream below the oldest entry
still unacknowledged.

What that guarantees (docs/decisions.md):
- nothing is lost: an entry leaves the stream only after its batch was written and acknowledged;
  a sink killed mid-batch leaves its entries pending, and they are written again by the next run
  (its own, or another consumer's after `claim_idle_ms`, XAUTOCLAIM);
- nothing is written twice: the store's writes are idempotent (by transaction id for decisions, by
  stream id for feedback and audit records), so a batch written again after a crash adds nothing;
- a store that fails leaves the batch pending; it is retried with a growing pause, never acknowledged.
An `after_write` hook (the console's review queue, statistics and webhook outbox) sees each batch once
the store has it and before it is acknowledged: a hook that raises leaves the batch pending too, so
what it feeds must be idempotent, as the store is (docs/console-design.md, 2).
Several sinks (consumers of one group) split the entries between them.

Every command names one stream, so the sink runs unchanged on a Redis Cluster (the streams live in
different slots).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import orjson
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.typing import EncodableT, FieldT

from antifraud.engine.daemon import stop_on_signals
from antifraud.engine.decision_entry import FeatureLists, decision_of
from antifraud.engine.decision_record import AuditRecord, ContributionsRecord, FeedbackRecord
from antifraud.engine.redis_url import connect
from antifraud.engine.store import Logged, Store

log = logging.getLogger("antifraud.sink")

#: the longest pause between two attempts while the store or Redis fails
MAX_BACKOFF_S = 30.0
#: entries that cannot be read are set aside here (and acknowledged) rather than retried forever
REJECTED_MAXLEN = 100_000
#: stream entries per read: a batch is read in replies of at most this many (see `Sink._read`)
READ_CHUNK = 200
#: while a batch lingers, how long the sink sleeps between two reads of what arrived (see `_linger`)
LINGER_STEP_S = 0.05

# one stream entry as redis-py returns it: id and fields ({} when the entry was deleted meanwhile)
_Entry = tuple[bytes, dict[bytes, bytes]]

#: what the sink calls with each batch's decisions and feedback once the store holds them
AfterWrite = Callable[[Sequence[Logged], Sequence[Logged]], None]


def default_consumer() -> str:
    """This process's consumer name in the group: host and pid, unique among live sinks."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _id_key(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _next_id(stream_id: str) -> str:
    """The smallest stream id after `stream_id` (XTRIM MINID keeps entries at or above its id)."""
    milliseconds, sequence = _id_key(stream_id)
    return f"{milliseconds}-{sequence + 1}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SinkMetrics:
    """Prometheus metrics of a sink, in their own registry (a standalone sink serves them itself)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.written = Counter(
            "antifraud_sink_written_total", "Records new to the store, by kind", ["kind"], registry=r
        )
        self.repeated = Counter(
            "antifraud_sink_repeated_total",
            "Records written again that the store already held (a batch retried after a crash)",
            ["kind"],
            registry=r,
        )
        self.lost = Counter(
            "antifraud_sink_lost_total",
            "Entries deleted from a stream (by hand: only the sink trims) before the sink wrote them",
            ["stream"],
            registry=r,
        )
        self.rejected = Counter(
            "antifraud_sink_rejected_total",
            "Entries that could not be read (not valid JSON, an unknown feature list), set aside",
            ["stream"],
            registry=r,
        )
        self.failures = Counter(
            "antifraud_sink_failures_total", "Batches that failed (store or Redis), retried", registry=r
        )
        self.lag = Gauge(
            "antifraud_sink_lag",
            "Entries of a stream not yet written: never delivered to the group, or pending",
            ["stream"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "antifraud_sink_batch_seconds",
            "Time to write and acknowledge one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )


#: what a stream entry holds, by the field its record's JSON is in
Kind = Literal["decisions", "feedback", "contributions", "audit"]


@dataclass
class _Stream:
    """One stream the sink reads, and its place in the XAUTOCLAIM scan of the group's pending list."""

    key: str
    kinds: dict[bytes, Kind]  # the fields holding a record's JSON, and the kind of record each holds
    claim_cursor: str = "0-0"
    entries: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # the batch in hand, by id


class Sink:
    """Reads the decision, feedback and audit streams with a consumer group and writes them to a store."""

    def __init__(
        self,
        client: redis.Redis,
        store: Store,
        namespace: str = "af",
        group: str = "sink",
        consumer: str | None = None,
        batch: int = 1000,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        forget_idle_ms: int = 3_600_000,
        metrics: SinkMetrics | None = None,
        linger_ms: int = 1000,
        after_write: AfterWrite | None = None,
    ) -> None:
        """`claim_idle_ms`: how long an entry delivered to another consumer stays unacknowledged
        before this one takes it over (that consumer is taken for dead; longer than a batch's write).
        `forget_idle_ms`: consumers idle that long with nothing pending are removed from the group.
        `linger_ms`: once a batch has its first new entry, how long to wait for more before writing
        it (a full batch is written at once): each write adds files or a transaction to the store, so
        a trickle of payments is written in a few larger batches rather than many tiny ones.
        `after_write(decisions, feedback)`: called with each batch the store has taken, before the
        batch is acknowledged; if it raises, the batch stays pending and is written and passed again."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.client = client
        self.store = store
        self.group = group
        self.consumer = consumer or default_consumer()
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.linger_ms = linger_ms
        self.forget_idle_ms = forget_idle_ms
        self.metrics = metrics or SinkMetrics()
        self.after_write = after_write
        self.rejected_stream = f"{namespace}:sink:rejected"
        self.feature_lists = FeatureLists(client, namespace)
        self.streams = (
            _Stream(f"{namespace}:decisions", {b"d": "decisions", b"c": "contributions"}),
            _Stream(f"{namespace}:feedback", {b"e": "feedback"}),
            _Stream(f"{namespace}:audit", {b"a": "audit"}),
        )
        self._last_forget = 0.0
        self.acknowledged = 0  # stream entries acknowledged since this sink started
        self.ensure_groups()

    def ensure_groups(self) -> None:
        """Create the consumer group on each stream (and the stream) unless it exists. It starts at the
        stream's first entry: decisions logged before the sink's first run are written too."""
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream.key, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- one batch ----------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Read, write and acknowledge one batch; returns how many stream entries it acknowledged.

        In order: this consumer's own pending entries (a batch whose write failed), entries other
        consumers left unacknowledged for `claim_idle_ms` (a sink that died), then new entries
        (waiting up to `block_ms` for one when there is nothing else to do, then up to `linger_ms`
        to fill the batch). Then the write, the acknowledgement and the trim. An exception (the store
        or Redis failing) leaves every entry of the batch pending for the next attempt.
        """
        for stream in self.streams:
            stream.entries = {}
        self._read_own_pending()
        self._claim_abandoned()
        self._read_new()
        self._linger()
        handled = sum(len(s.entries) for s in self.streams)
        if handled:
            started = time.perf_counter()
            self._write_and_ack()
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self.acknowledged += handled
        self.trim()
        self._forget_dead_consumers()
        return handled

    def _room(self) -> int:
        return self.batch - sum(len(s.entries) for s in self.streams)

    def _take(self, stream: _Stream, entries: Sequence[_Entry]) -> None:
        for entry_id, fields in entries:
            stream.entries.setdefault(_text(entry_id), fields)

    def _read(self, stream: _Stream, after: str, block: int | None = None) -> int:
        """Read entries of `stream` after `after` ("0": this consumer's pending ones; ">": new ones)
        until the batch is full or none are left, READ_CHUNK at a time: Redis builds a reply in one
        go, and 1,000 decisions (3 MB) in one reply stalled it for milliseconds, which the scoring
        path's calls waited out (measured in tests/reliability/test_sink_faults.py). `block` applies
        to the first read only. Returns how many entries it read."""
        read = 0
        while (room := self._room()) > 0:
            count = min(room, READ_CHUNK)
            got = _entries(
                self.client.xreadgroup(
                    self.group, self.consumer, {stream.key: after}, count=count, block=block
                )
            )
            self._take(stream, got)
            read += len(got)
            if len(got) < count:
                break
            block = None
            if after != ">":
                after = _text(got[-1][0])
        return read

    def _read_own_pending(self) -> None:
        for stream in self.streams:
            self._read(stream, "0")

    def _claim_abandoned(self) -> None:
        for stream in self.streams:
            room = self._room()
            if room <= 0:
                return
            reply = cast(
                list[object],
                self.client.xautoclaim(
                    stream.key,
                    self.group,
                    self.consumer,
                    self.claim_idle_ms,
                    start_id=stream.claim_cursor,
                    count=min(room, READ_CHUNK),
                ),
            )
            # the scan goes on where it stopped on the next batch, from the start again once done
            stream.claim_cursor = _text(cast(bytes, reply[0]))
            self._take(stream, cast(list[_Entry], reply[1]))
            # entries deleted from the stream while pending: XAUTOCLAIM drops them from the pending list
            # whatever their idle time (this consumer's own included, already in hand and counted later)
            deleted = cast(list[bytes], reply[2]) if len(reply) > 2 else []
            gone = [i for i in map(_text, deleted) if i not in stream.entries]
            if gone:
                self._note_lost(stream, len(gone))

    def _read_new(self) -> None:
        # feedback first without waiting, then decisions, waiting only when the batch is still empty
        for stream in reversed(self.streams):
            empty = self._room() == self.batch
            block = self.block_ms if empty and stream is self.streams[0] and self.block_ms > 0 else None
            self._read(stream, ">", block)

    def _linger(self) -> None:
        """Fill a started batch with new entries until it is full or `linger_ms` has passed.

        It sleeps LINGER_STEP_S between reads rather than blocking on the stream: a blocking read
        returns at the first new entry, so at 500 payments/s the sink made a read per payment or
        two, and those reads were most of its CPU (260-285 us per decision, docs/performance.md)."""
        if self.linger_ms <= 0 or self._room() in (0, self.batch):
            return
        deadline = time.monotonic() + self.linger_ms / 1000
        while self._room() > 0 and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(LINGER_STEP_S, left))
            for stream in reversed(self.streams):  # feedback, then decisions
                self._read(stream, ">")
                if self._room() <= 0:
                    return

    def _write_and_ack(self) -> None:
        decoded: dict[Kind, list[Logged]] = {
            "decisions": [],
            "feedback": [],
            "contributions": [],
            "audit": [],
        }
        for stream in self.streams:
            lost = 0
            for entry_id, fields in stream.entries.items():
                found = next(((kind, fields[f]) for f, kind in stream.kinds.items() if f in fields), None)
                if found is None:
                    lost += 1  # delivered, then deleted from the stream before it was written
                    continue
                kind, raw = found
                try:
                    record = (
                        decision_of(raw, self.feature_lists.names)  # its features by name
                        if kind == "decisions"
                        else cast(FeedbackRecord | ContributionsRecord | AuditRecord, orjson.loads(raw))
                    )
                except (orjson.JSONDecodeError, LookupError) as exc:
                    self._reject(stream, entry_id, fields, exc)
                    continue
                decoded[kind].append(Logged(entry_id, record))
            if lost:
                self._note_lost(stream, lost)
        if any(decoded.values()):
            # durable on return: only then acknowledge
            written = self.store.write(
                decoded["decisions"], decoded["feedback"], decoded["contributions"], decoded["audit"]
            )
            for kind, new in (
                ("decisions", written.decisions),
                ("feedback", written.feedback),
                ("contributions", written.contributions),
                ("audit", written.audit),
            ):
                self.metrics.written.labels(kind).inc(new)
                self.metrics.repeated.labels(kind).inc(len(decoded[kind]) - new)
            if self.after_write is not None:
                self.after_write(decoded["decisions"], decoded["feedback"])
        for stream in self.streams:
            if stream.entries:
                self.client.xack(stream.key, self.group, *stream.entries)

    def _note_lost(self, stream: _Stream, count: int) -> None:
        log.error(
            "%d entries of %s were deleted before the sink wrote them (the stream was trimmed or "
            "deleted by hand: only the sink trims it, below what it has written)",
            count,
            stream.key,
        )
        self.metrics.lost.labels(stream.key).inc(count)

    def _reject(self, stream: _Stream, entry_id: str, fields: dict[bytes, bytes], why: Exception) -> None:
        log.error(
            "entry %s of %s cannot be read (%s): set aside in %s",
            entry_id,
            stream.key,
            why,
            self.rejected_stream,
        )
        kept: dict[FieldT, EncodableT] = {"stream": stream.key, "id": entry_id}
        kept.update({k: v for k, v in fields.items()})
        self.client.xadd(self.rejected_stream, kept, maxlen=REJECTED_MAXLEN, approximate=True)
        self.metrics.rejected.labels(stream.key).inc()

    # -- trimming and lag ---------------------------------------------------------------------------

    def trim(self) -> dict[str, int]:
        """Trim each stream below its oldest entry not yet written; returns the entries removed.

        The bound is the group's oldest pending entry, or the entry after its last-delivered id when
        nothing is pending. The last-delivered id is read before the pending list: an entry delivered
        (to any consumer) between the two reads is above the first, so it is never trimmed.
        Also sets the lag gauge of each stream.
        """
        removed: dict[str, int] = {}
        for stream in self.streams:
            group = self._group_info(stream)
            if group is None:
                continue
            last_delivered = _text(cast(bytes, group["last-delivered-id"]))
            pending = cast(dict[str, object], self.client.xpending(stream.key, self.group))
            bound = _next_id(last_delivered)
            if pending["pending"] and pending["min"] is not None:
                oldest = _text(cast(bytes, pending["min"]))
                bound = min(bound, oldest, key=_id_key)
            removed[stream.key] = (
                int(cast(int, self.client.xtrim(stream.key, minid=bound, approximate=False)))
                if last_delivered != "0-0"
                else 0
            )
            self.metrics.lag.labels(stream.key).set(self._lag(stream, group))
        return removed

    def lag(self) -> dict[str, int]:
        """Entries of each stream not yet written: never delivered to the group, or pending."""
        return {s.key: self._lag(s, self._group_info(s)) for s in self.streams}

    def _group_info(self, stream: _Stream) -> dict[str, object] | None:
        groups = cast(list[dict[str, object]], self.client.xinfo_groups(stream.key))
        return next((g for g in groups if _text(cast(bytes, g["name"])) == self.group), None)

    def _lag(self, stream: _Stream, group: dict[str, object] | None) -> int:
        if group is None:
            return int(cast(int, self.client.xlen(stream.key)))
        undelivered = group.get("lag")
        if undelivered is None:
            # Redis cannot tell (entries deleted in the middle of the stream): count them
            start = "(" + _text(cast(bytes, group["last-delivered-id"]))
            undelivered = len(cast(list[_Entry], self.client.xrange(stream.key, min=start)))
        return int(cast(int, undelivered)) + int(cast(int, group["pending"]))

    def _forget_dead_consumers(self) -> None:
        """Remove consumers idle for `forget_idle_ms` with nothing pending (each run of a sink has its
        own name, so a restarted sink leaves its old one behind); at most once a minute."""
        now = time.monotonic()
        if now - self._last_forget < 60:
            return
        self._last_forget = now
        for stream in self.streams:
            consumers = cast(list[dict[str, object]], self.client.xinfo_consumers(stream.key, self.group))
            for consumer in consumers:
                name = _text(cast(bytes, consumer["name"]))
                idle = int(cast(int, consumer["idle"]))
                if name != self.consumer and not consumer["pending"] and idle > self.forget_idle_ms:
                    self.client.xgroup_delconsumer(stream.key, self.group, name)

    # -- running ------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Write batches until `stop` is set; the batch in hand is finished first. A failing store or
        Redis is retried with a pause that doubles up to MAX_BACKOFF_S (the batch stays pending)."""
        pause = 0.0
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # any failure of the store or of Redis: retry, never acknowledge
                if isinstance(exc, redis.ResponseError) and "NOGROUP" in str(exc):
                    # the stream or its group is gone (a Redis restarted without persistence, a stream
                    # deleted): create it again, and the new stream is written from its start
                    log.warning("the sink's consumer group is gone (%s): creating it again", exc)
                    with contextlib.suppress(redis.RedisError):
                        self.ensure_groups()
                        continue
                self.metrics.failures.inc()
                pause = min(max(pause * 2, 0.25), MAX_BACKOFF_S)
                log.exception("the sink's batch failed; retrying in %.2f s (its entries stay pending)", pause)
                stop.wait(pause)
            else:
                pause = 0.0


def _entries(reply: object) -> list[_Entry]:
    """The entries of a one-stream XREADGROUP reply (RESP2: [[stream, entries]]; None on timeout)."""
    if not reply:
        return []
    streams = cast(list[tuple[bytes, list[_Entry]]], reply)
    return list(streams[0][1])


def run_sink(
    redis_url: str,
    store_url: str,
    namespace: str = "af",
    batch: int = 1000,
    block_ms: int = 1000,
    consumer: str | None = None,
    claim_idle_ms: int = 60_000,
    metrics_port: int = 0,
    linger_ms: int = 1000,
) -> int:
    """`antifraud sink`: run a sink until SIGTERM or SIGINT, which finish the batch in hand; returns
    how many stream entries it acknowledged. `metrics_port` > 0 serves its Prometheus metrics."""
    from prometheus_client import start_http_server

    from antifraud.engine.monitor_job import start_monitor
    from antifraud.engine.review.feed import ConsoleFeed
    from antifraud.engine.settings import Settings
    from antifraud.engine.store import open_store
    from antifraud.engine.webhooks.config import Endpoints, outbox_of

    with stop_on_signals("the batch in hand") as stop:
        client = connect(redis_url)
        store = open_store(store_url)
        metrics = SinkMetrics()
        # the console's review queue and day figures, fed from every batch (ANTIFRAUD_REVIEW_* bounds)
        settings = dataclasses.replace(Settings(), namespace=namespace, store_url=store_url)
        outbox = outbox_of(client, Endpoints(settings.webhooks_file), namespace)  # ANTIFRAUD_WEBHOOKS
        feed = ConsoleFeed.from_settings(client, settings, outbox, metrics.registry, store)
        # model monitoring (ANTIFRAUD_MONITOR_*), a thread beside the batches: engine/monitor_job.py
        monitor = start_monitor(client, settings, stop)
        try:
            sink = Sink(
                client,
                store,
                namespace=namespace,
                batch=batch,
                block_ms=block_ms,
                consumer=consumer,
                claim_idle_ms=claim_idle_ms,
                linger_ms=linger_ms,
                metrics=metrics,
                after_write=feed.after_write,
            )
            if metrics_port:
                start_http_server(metrics_port, registry=sink.metrics.registry)
            log.info(
                "sink %s of group %s: %s -> %s",
                sink.consumer,
                sink.group,
                ", ".join(s.key for s in sink.streams),
                store.url,
            )
            sink.run(stop)
        finally:
            stop.set()  # a failed start must stop the monitor too
            if monitor is not None:
                monitor.join(timeout=30)  # a run in progress finishes (it closes its own store)
            store.close()
            client.close()
    log.info("sink %s stopped after %d entries", sink.consumer, sink.acknowledged)
    return sink.acknowledged
