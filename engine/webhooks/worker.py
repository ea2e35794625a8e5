"""The webhook delivery worker: POSTs the outbox's events to the endpoints, off the scoring path.

It reads the outbox stream (`{ns}:hooks:outbox`, engine/webhooks/outbox.py) as the consumer group
`hooks`. One worker per Redis delivers: it holds `{ns}:hooks:lock` (renewed every `renew_s`); another
waits as a standby and takes over within the lock's life when the first stops or dies.

Each event goes to every endpoint that wants it (engine/webhooks/config.py), signed
(engine/webhooks/signing.py). A 2xx answer is done; a 410 (the receiver says the endpoint is gone) is a
dead letter at once; anything else (another status, a timeout, a refused connection) is retried after
`base_delay_s * 2^(n-1)`, at most `max_delay_s`, ±20 % jitter, until `max_attempts`, then a dead letter.
Due times are kept in the zset `{ns}:hooks:retry` and attempt counts in the hash `{ns}:hooks:attempts`
(`<endpoint>|<outbox id>`), finished deliveries of an entry still pending in `{ns}:hooks:done`, so a
restarted worker resumes where the last one stopped.

**Order per transaction**: an event is not sent to an endpoint while an earlier event of the same
transaction waits for that endpoint (a lane per (endpoint, transaction), in memory, rebuilt at start from
the group's pending entries in id order); other transactions flow on, and a dead letter frees the next.
An entry is acknowledged once every endpoint is done with it, then trimmed below the oldest entry still
pending, as the decision sink trims. Dead letters go to `{ns}:hooks:dead` (the newest DEAD_MAXLEN),
where the console lists them and an admin can send one again (`retry_dead`).

Its Prometheus metrics (engine/webhooks/metrics.py, a registry of its own) count deliveries by outcome,
attempts by result and dead letters by reason, and give the outbox's backlog and the latencies;
`antifraud hooks --metrics-port` serves them.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, cast

import httpx
import orjson
import redis

from antifraud.engine.daemon import stop_on_signals
from antifraud.engine.decisions import append_bounded
from antifraud.engine.redis_url import connect
from antifraud.engine.webhooks.config import Endpoint, Endpoints
from antifraud.engine.webhooks.metrics import HookMetrics, attempt_result
from antifraud.engine.webhooks.outbox import DEAD_MAXLEN, FIELD, OUTBOX_BOUND, HookEvent
from antifraud.engine.webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger("antifraud.webhooks")

GROUP: Final = "hooks"
#: the one consumer name: only the lock's holder reads, and a new holder finds the pending entries its own
CONSUMER: Final = "worker"
#: an outbox entry sent again from the dead letters to one endpoint: {"endpoint": name, "event": {...}}
RETRY_FIELD: Final = b"r"
#: entries read from the outbox at a time
READ_COUNT: Final = 100

# renew the lock only while it is ours. KEYS: lock. ARGV: holder, ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# release the lock only if it is ours. KEYS: lock. ARGV: holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_Entry = tuple[bytes, dict[bytes, bytes]]
_STREAM_ID = re.compile(r"^[0-9]+-[0-9]+$")


@dataclass
class _Pending:
    """An outbox entry in hand: its event, the body POSTed, and the endpoints not yet done with it."""

    event: HookEvent
    body: bytes
    waiting: set[str]
    finished: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Outcome:
    """One POST's result: the HTTP status (None when no answer came), the error's text, how long."""

    status: int | None
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class _Dead:
    """Why a delivery is given up (a DEAD_REASONS label), the last status (None: no answer), the text."""

    reason: str
    status: int | None
    error: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def post(client: httpx.Client, endpoint: Endpoint, event: HookEvent, body: bytes) -> Outcome:
    """POST one event to one endpoint, signed; never raises."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "antifraud-webhooks",
        EVENT_HEADER: event["type"],
        DELIVERY_HEADER: event["id"],
        SIGNATURE_HEADER: sign(endpoint.secrets, body),
    }
    started = time.perf_counter()
    try:
        answer = client.post(endpoint.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:500], time.perf_counter() - started)
    error = "" if answer.is_success else answer.text[:500]
    return Outcome(answer.status_code, error, time.perf_counter() - started)


class HookWorker:
    """Delivers the outbox's events while it holds the delivery lock (see the module's doc)."""

    def __init__(
        self,
        client: redis.Redis,
        endpoints: Endpoints,
        namespace: str = "af",
        max_attempts: int = 12,
        timeout_s: float = 5.0,
        base_delay_s: float = 1.0,
        max_delay_s: float = 3600.0,
        lock_ms: int = 30_000,
        renew_s: float = 10.0,
        threads: int = 8,
        holder: str | None = None,
        metrics: HookMetrics | None = None,
    ) -> None:
        self.client = client
        self.metrics = metrics or HookMetrics()
        self.endpoints = endpoints
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.lock_ms = lock_ms
        self.renew_s = renew_s
        self.holder = holder or f"{threading.get_native_id()}-{random.getrandbits(48):012x}"
        self.outbox = f"{namespace}:hooks:outbox"
        self.dead = f"{namespace}:hooks:dead"
        self.lock = f"{namespace}:hooks:lock"
        self.retry = f"{namespace}:hooks:retry"
        self.attempts = f"{namespace}:hooks:attempts"
        self.done = f"{namespace}:hooks:done"
        self.http = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="antifraud-hook")
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.holding = False
        self._renewed = 0.0
        self._reset()
        self.delivered = 0  # POSTs answered 2xx since this worker started
        self.dead_lettered = 0

    def _reset(self) -> None:
        self.pending: dict[str, _Pending] = {}
        self.lanes: dict[tuple[str, str], deque[str]] = {}  # (endpoint, transaction) -> entry ids
        self.due: dict[tuple[str, str], float] = {}  # (endpoint, entry) -> when to try again (epoch s)
        self.inflight: dict[Future[Outcome], tuple[str, str]] = {}  # -> (endpoint, entry)

    # -- the lock -----------------------------------------------------------------------------------

    def _hold_lock(self) -> bool:
        """Take the lock, or renew it when ours (every `renew_s`); whether this worker delivers."""
        now = time.monotonic()
        if self.holding:
            if now - self._renewed < self.renew_s:
                return True
            self.holding = bool(self._renew(keys=[self.lock], args=[self.holder, self.lock_ms]))
            if not self.holding:
                log.warning("the webhook delivery lock was lost: standing by")
                self._drain_inflight()
                self._reset()
            self._renewed = now
            self.metrics.holding.set(int(self.holding))
            return self.holding
        # taken, or still ours after a failed round (this worker starts over from Redis's state)
        if self.client.set(self.lock, self.holder, nx=True, px=self.lock_ms) or self._renew(
            keys=[self.lock], args=[self.holder, self.lock_ms]
        ):
            self.holding, self._renewed = True, now
            self._ensure_group()
            self._resume()
            log.info("webhook delivery lock taken: delivering (%d entries pending)", len(self.pending))
        self.metrics.holding.set(int(self.holding))
        return self.holding

    def release(self) -> None:
        """Finish the POSTs in flight and give the lock up, for a standby to take over at once."""
        self._drain_inflight()
        if self.holding:
            self._release(keys=[self.lock], args=[self.holder])
            self.holding = False
            self.metrics.holding.set(0)
        self._reset()

    def close(self) -> None:
        """Release the lock, the threads and the HTTP connections."""
        self.release()
        self.pool.shutdown(wait=True)
        self.http.close()

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.outbox, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- reading the outbox -------------------------------------------------------------------------

    def _resume(self) -> None:
        """Rebuild the lanes from the group's pending entries, in id order, and the due times."""
        self._reset()
        cursor = "0-0"
        while True:  # entries another consumer name left pending (a worker of an older version)
            reply = cast(
                list[object],
                self.client.xautoclaim(self.outbox, GROUP, CONSUMER, 0, start_id=cursor, count=READ_COUNT),
            )
            cursor = _text(cast(bytes, reply[0]))
            if cursor == "0-0":
                break
        after = "0"
        while True:
            got = self._read(after, None)
            if not got:
                break
            after = _text(got[-1][0])
        for member, score in cast(
            list[tuple[bytes, float]], self.client.zrange(self.retry, 0, -1, withscores=True)
        ):
            endpoint, _, entry = _text(member).partition("|")
            if entry in self.pending:
                self.due[(endpoint, entry)] = score / 1000
            else:  # its entry was acknowledged meanwhile
                self.client.zrem(self.retry, member)

    def _read(self, after: str, block_ms: int | None) -> list[_Entry]:
        """Read entries after `after` ("0": pending, ">": new) into the lanes; returns them."""
        reply = self.client.xreadgroup(
            GROUP, CONSUMER, {self.outbox: after}, count=READ_COUNT, block=block_ms
        )
        got: list[_Entry] = list(cast(list[tuple[bytes, list[_Entry]]], reply)[0][1]) if reply else []
        for raw_id, fields in got:
            self._take(_text(raw_id), fields)
        return got

    def _take(self, entry: str, fields: dict[bytes, bytes]) -> None:
        """Put one entry in the lanes of the endpoints that want it and are not yet done with it."""
        if not fields:  # deleted from the stream meanwhile
            self._acknowledge(entry, set())
            return
        names: list[str]
        if RETRY_FIELD in fields:
            again = orjson.loads(fields[RETRY_FIELD])
            event, names = cast(HookEvent, again["event"]), [again["endpoint"]]
        elif FIELD in fields:
            event = cast(HookEvent, orjson.loads(fields[FIELD]))
            names = [e.name for e in self.endpoints.targets(event["type"], event["data"])]
        else:
            self._acknowledge(entry, set())
            return
        # endpoints done with it before a restart
        states = (
            cast(list[bytes | None], self.client.hmget(self.done, [f"{n}|{entry}" for n in names]))
            if names
            else []
        )
        finished = {name for name, state in zip(names, states, strict=True) if state}
        waiting = set(names) - finished
        if not waiting:
            self._acknowledge(entry, finished)
            return
        body = orjson.dumps(
            {"id": event["id"], "type": event["type"], "created": event["created"], "data": event["data"]}
        )
        self.pending[entry] = _Pending(event, body, waiting, finished)
        for name in sorted(waiting):
            self.lanes.setdefault((name, event["transaction_id"]), deque()).append(entry)

    # -- delivering ---------------------------------------------------------------------------------

    def _start_due(self) -> None:
        """POST the head of every lane that is not in flight and is due."""
        busy = set(self.inflight.values())
        now = time.time()
        for (name, _tx), lane in list(self.lanes.items()):
            entry = lane[0]
            if (name, entry) in busy or self.due.get((name, entry), 0.0) > now:
                continue
            endpoint = self.endpoints.named(name)
            pending = self.pending[entry]
            if endpoint is None:
                self._finish(
                    name, entry, _Dead("endpoint_removed", None, "the endpoint is no longer configured")
                )
                continue
            future = self.pool.submit(post, self.http, endpoint, pending.event, pending.body)
            self.inflight[future] = (name, entry)

    def _collect(self, timeout: float) -> None:
        """Handle the POSTs that have finished, waiting up to `timeout` for the first."""
        if not self.inflight:
            return
        finished, _ = wait(list(self.inflight), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in finished:
            name, entry = self.inflight.pop(future)
            self._result(name, entry, future.result())

    def _drain_inflight(self) -> None:
        while self.inflight:
            self._collect(timeout=60)

    def _result(self, name: str, entry: str, outcome: Outcome) -> None:
        member = f"{name}|{entry}"
        self.metrics.attempts.labels(attempt_result(outcome.status)).inc()
        self.metrics.post_seconds.observe(outcome.seconds)
        if outcome.status is not None and 200 <= outcome.status < 300:
            self.delivered += 1
            created = datetime.fromisoformat(self.pending[entry].event["created"])
            self.metrics.delivery_seconds.observe(max(0.0, time.time() - created.timestamp()))
            self._finish(name, entry)
            return
        if outcome.status == 410:
            self._finish(
                name, entry, _Dead("gone", outcome.status, outcome.error or "410 Gone: the endpoint is gone")
            )
            return
        attempts = int(cast(int, self.client.hincrby(self.attempts, member, 1)))
        if attempts >= self.max_attempts:
            error = f"{attempts} attempts failed; last: {outcome.error}"
            self._finish(name, entry, _Dead("attempts", outcome.status, error))
            return
        delay = min(self.base_delay_s * 2 ** (attempts - 1), self.max_delay_s) * random.uniform(0.8, 1.2)
        due = time.time() + delay
        self.due[(name, entry)] = due
        self.client.zadd(self.retry, {member: int(due * 1000)})
        log.info(
            "webhook %s to %s: %s (attempt %d), again in %.2f s",
            entry,
            name,
            outcome.status or outcome.error,
            attempts,
            delay,
        )

    def _finish(self, name: str, entry: str, dead: _Dead | None = None) -> None:
        """The endpoint is done with the entry (delivered, or a dead letter): free its lane's next."""
        pending = self.pending[entry]
        member = f"{name}|{entry}"
        self.metrics.deliveries.labels("delivered" if dead is None else "dead_letter").inc()
        if dead is not None:
            status, error = dead.status, dead.error
            self.metrics.dead_letters.labels(dead.reason).inc()
            self.dead_lettered += 1
            event = orjson.dumps(pending.event)
            self.client.xadd(
                self.dead,
                {
                    "endpoint": name,
                    "event": event,
                    "status": "" if status is None else str(status),
                    "error": error,
                },
                maxlen=DEAD_MAXLEN,
                approximate=True,
            )
            log.warning("webhook %s to %s is a dead letter: %s", entry, name, error)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.done, member, "dead" if dead is not None else "ok")
        pipe.hdel(self.attempts, member)
        pipe.zrem(self.retry, member)
        pipe.execute()
        self.due.pop((name, entry), None)
        lane_key = (name, pending.event["transaction_id"])
        lane = self.lanes[lane_key]
        lane.popleft()
        if not lane:
            del self.lanes[lane_key]
        pending.waiting.discard(name)
        pending.finished.add(name)
        if not pending.waiting:
            del self.pending[entry]
            self._acknowledge(entry, pending.finished)

    def _acknowledge(self, entry: str, finished: set[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.outbox, GROUP, entry)
        if finished:
            pipe.hdel(self.done, *(f"{name}|{entry}" for name in finished))
        pipe.execute()

    def trim(self) -> int:
        """Trim the outbox below its oldest entry not yet acknowledged; how many entries went. Also
        sets the backlog gauge."""
        groups = cast(list[dict[str, object]], self.client.xinfo_groups(self.outbox))
        group = next((g for g in groups if _text(cast(bytes, g["name"])) == GROUP), None)
        self.metrics.backlog.set(self._backlog(group))
        if group is None:
            return 0
        last = _text(cast(bytes, group["last-delivered-id"]))
        if last == "0-0":
            return 0
        milliseconds, sequence = _id_key(last)
        bound = f"{milliseconds}-{sequence + 1}"
        summary = cast(dict[str, object], self.client.xpending(self.outbox, GROUP))
        if summary["pending"] and summary["min"] is not None:
            bound = min(bound, _text(cast(bytes, summary["min"])), key=_id_key)
        return int(cast(int, self.client.xtrim(self.outbox, minid=bound, approximate=False)))

    def _backlog(self, group: dict[str, object] | None) -> int:
        """Entries never read plus those read and not finished; the stream's length when Redis cannot
        tell what was read (no group yet, or entries deleted in the middle of the stream)."""
        unread = group.get("lag") if group is not None else None
        if group is None or unread is None:
            return int(cast(int, self.client.xlen(self.outbox)))
        return int(cast(int, unread)) + int(cast(int, group["pending"]))

    # -- running ------------------------------------------------------------------------------------

    def run_once(self, block_ms: int = 200) -> bool:
        """One round: hold the lock, read new entries, start what is due, collect what finished.
        Returns whether this worker holds the lock (a standby returns at once, after a short wait)."""
        if not self._hold_lock():
            time.sleep(block_ms / 1000)
            return False
        self._start_due()
        wait_s = self._next_wait(block_ms / 1000)
        # wait on the POSTs in flight when there are some, else on the stream
        self._collect(timeout=wait_s)
        got = self._read(">", None if self.inflight else max(1, int(wait_s * 1000)))
        if got or not self.inflight:
            self._start_due()
        self.trim()
        self.metrics.retrying.set(len(self.due))
        return True

    def _next_wait(self, longest: float) -> float:
        """How long a round may wait: until the next retry is due, at most `longest`."""
        busy = set(self.inflight.values())
        heads = [(name, lane[0]) for (name, _), lane in self.lanes.items() if (name, lane[0]) not in busy]
        if not heads:
            return longest
        soonest = min(self.due.get(head, 0.0) for head in heads)
        return max(0.0, min(longest, soonest - time.time()))

    def run(self, stop: threading.Event) -> None:
        """Deliver (or stand by) until `stop` is set; Redis failures are retried after a pause."""
        pause = 0.0
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                except redis.RedisError:
                    pause = min(max(pause * 2, 0.25), 30.0)
                    log.exception("the webhook worker's round failed; again in %.2f s", pause)
                    self.holding = False
                    self._drain_inflight()
                    self._reset()
                    stop.wait(pause)
                else:
                    pause = 0.0
        finally:
            self.close()


def retry_dead(client: redis.Redis, dead_id: str, namespace: str = "af") -> bool:
    """Send a dead letter again: back into the outbox (to its endpoint only, or to every endpoint that
    wants it when it never reached one: "outbox full"), and out of the dead letters. False when there is
    no such dead letter or the outbox is full."""
    dead = f"{namespace}:hooks:dead"
    found = cast(list[_Entry], client.xrange(dead, min=dead_id, max=dead_id))
    if not found:
        return False
    fields = found[0][1]
    event, endpoint = fields[b"event"], _text(fields.get(b"endpoint", b""))
    field_name, value = (
        (RETRY_FIELD, orjson.dumps({"endpoint": endpoint, "event": orjson.loads(event)}))
        if endpoint
        else (FIELD, event)
    )
    if append_bounded(client, f"{namespace}:hooks:outbox", OUTBOX_BOUND, field_name, value) is None:
        return False
    client.xdel(dead, dead_id)
    return True


def _letter(raw_id: bytes, fields: dict[bytes, bytes]) -> dict[str, str]:
    event = cast(HookEvent, orjson.loads(fields.get(b"event", b"{}")))
    return {
        "id": _text(raw_id),
        "endpoint": _text(fields.get(b"endpoint", b"")),
        "event": str(event.get("id", "")),
        "type": str(event.get("type", "")),
        "transaction_id": str(event.get("transaction_id", "")),
        "status": _text(fields.get(b"status", b"")),
        "error": _text(fields.get(b"error", b"")),
    }


def dead_letters(client: redis.Redis, namespace: str = "af", count: int = 100) -> list[dict[str, str]]:
    """The newest dead letters: id, endpoint, event id and type, transaction, status, error."""
    entries = cast(list[_Entry], client.xrevrange(f"{namespace}:hooks:dead", count=count))
    return [_letter(raw_id, fields) for raw_id, fields in entries]


def dead_letter(client: redis.Redis, dead_id: str, namespace: str = "af") -> dict[str, str] | None:
    """One dead letter (as `dead_letters` gives them), or None."""
    if not _STREAM_ID.match(dead_id):
        return None
    found = cast(list[_Entry], client.xrange(f"{namespace}:hooks:dead", min=dead_id, max=dead_id))
    return _letter(*found[0]) if found else None


def run_hooks(
    redis_url: str,
    endpoints_file: str,
    namespace: str = "af",
    max_attempts: int = 12,
    timeout_s: float = 5.0,
    metrics_port: int = 0,
) -> int:
    """`antifraud hooks`: deliver (or stand by) until SIGTERM or SIGINT, which let the POSTs in flight
    finish; returns how many deliveries succeeded. `metrics_port` > 0 serves its Prometheus metrics."""
    from pathlib import Path

    from prometheus_client import start_http_server

    with stop_on_signals("the deliveries in flight") as stop:
        client = connect(redis_url)
        worker = HookWorker(
            client, Endpoints(Path(endpoints_file)), namespace, max_attempts=max_attempts, timeout_s=timeout_s
        )
        try:
            if metrics_port:
                start_http_server(metrics_port, registry=worker.metrics.registry)
            log.info(
                "webhook worker %s: %s -> %d endpoint(s)",
                worker.holder,
                worker.outbox,
                len(worker.endpoints.current()),
            )
            worker.run(stop)
        finally:
            client.close()
    log.info("webhook worker stopped after %d deliveries", worker.delivered)
    return worker.delivered
