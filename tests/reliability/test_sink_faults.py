"""The decision sink's faults under load: the sink killed, the store unavailable, the buffer full.

Each test runs `antifraud serve --workers 2` (engine.stack via helpers.Service) on a real redis-server
and replays payments open loop at 300/s for 24 s, with feedback at 20/s about payments already
answered, while a fault thread breaks the sink's side of the decision log on a fixed schedule:

- the sink killed: kill -9 of the sink process `serve` started (t = 8 s; `serve` does not restart it),
  a standalone `antifraud sink` started at t = 16 s (it takes over the dead sink's unacknowledged
  batch after --claim-idle-ms). Store: PostgreSQL.
- the store unavailable: every table of the store's schema locked (LOCK TABLE ... ACCESS EXCLUSIVE in
  another session) from t = 8 s to t = 18 s: the sink's write hangs, the buffer grows. Store:
  PostgreSQL.
- the buffer full: no sink (ANTIFRAUD_SINK=0), the buffers bounded at 2,000 entries and 12 s of age
  (ANTIFRAUD_BUFFER_MAX_ENTRIES / _MAX_AGE_S): decisions fill the entry bound in a few seconds,
  feedback the age bound; then a standalone sink drains them into the stack's Parquet store, and
  logging resumes. Store: Parquet.

Asserted, for each: every payment answered 200; every decision logged (all of them, or with a full
buffer those not answered "decision log: buffer full") is in the store exactly once after the drain,
and every feedback event answered 202 too; scoring's own time (features to decision log) p99 during
the fault within the service budget. PostgreSQL runs where a server is reachable on 127.0.0.1:5432;
those tests skip saying why otherwise.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
import redis
from sinks import postgres_schema

from antifraud.engine.decisions import BUFFER_FULL

from .helpers import (
    BUDGET_MS,
    FIGURES,
    ROOT,
    Payments,
    Run,
    Service,
    buffer_lag,
    http_request,
    idempotency_records,
    iso_ms,
    ms_of,
    pct,
    read_log,
    redis_stalls,
    replay,
    slow_commands,
    store_rows,
    wait_drained,
)

RATE = 300.0
DURATION_S = 24.0
FEEDBACK_RATE = 20.0
STEP_MS = 50
SECTION = "6. sink faults"
COMMAND = ".venv/bin/pytest -q -s tests/reliability/test_sink_faults.py"


# --------------------------------------------------------------------------------------------------
# The store, the standalone sink


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A schema of its own on the local PostgreSQL server (dropped after), or a skip saying why."""
    with postgres_schema("rel_sink") as url:
        yield url


@contextlib.contextmanager
def standalone_sink(service: Service, store_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`antifraud sink` as its own process on the stack's Redis, stopped with SIGTERM (it finishes its
    batch); it takes over a dead sink's pending entries after 2 s instead of the default minute."""
    command = [sys.executable, "-m", "antifraud.engine.cli", "sink", "--redis", service.redis_url]
    command += ["--store", store_url, "--claim-idle-ms", "2000"]
    with open(service.dir / "sink.log", "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# The load, the feedback, the buffer's length, and a fault on a schedule


@dataclass
class Sent:
    """What a run sent and saw."""

    payments: list[dict[str, Any]]
    run: Run
    answers: list[dict[str, Any] | None]
    feedback: list[tuple[dict[str, Any], int, str | None, int]]  # event, status, Retry-After, attempts
    samples: list[tuple[float, int, int]]  # perf_counter time, decision buffer length, its lag
    fault: dict[str, float]  # named moments of the fault (perf_counter times)

    @property
    def peak_buffer(self) -> int:
        return max((n for _, n, _ in self.samples), default=0)

    def accepted_feedback(self) -> list[dict[str, Any]]:
        return [e for e, status, _, _ in self.feedback if status == 202]

    def resent_feedback(self) -> set[tuple[str, str, int]]:
        """Events sent again after a 503: the service logs an event before it updates the features,
        so a 503 from the update may leave a copy logged (at least once, docs/api.md)."""
        return {_event_key(e) for e, _, _, attempts in self.feedback if attempts > 1}

    def unlogged(self, start: float, end: float) -> list[dict[str, Any]]:
        """Answers due in [start, end] that say their decision was not logged."""
        return [
            a
            for sched, a in zip(self.run.sched, self.answers, strict=True)
            if a is not None and start <= sched <= end and _unlogged(a)
        ]

    def server_ms(self, start: float, end: float) -> list[float]:
        """Scoring's own time (features to decision log written) of the payments due in [start, end]."""
        out = []
        for sched, answer in zip(self.run.sched, self.answers, strict=True):
            if answer is not None and start <= sched <= end:
                timings = answer["timings"]
                out.append(timings["total_ms"] + timings.get("log_ms", 0.0))
        return out

    def answers_between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [a for t, a in zip(self.run.sched, self.answers, strict=True) if a and start <= t <= end]

    def latency_ms(self, start: float, end: float) -> list[float]:
        mask = (self.run.sched >= start) & (self.run.sched <= end)
        return [float(x) for x in self.run.latency_ms[mask]]


@dataclass
class _Shared:
    stop: threading.Event = field(default_factory=threading.Event)
    feedback: list[tuple[dict[str, Any], int, str | None, int]] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    fault: dict[str, float] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)


def run_load(
    service: Service,
    tag: str,
    t0_ms: int,
    fault: Callable[[float, _Shared], None],
    retry_feedback: bool = True,
) -> Sent:
    """Payments at RATE for DURATION_S (open loop), feedback at FEEDBACK_RATE about payments answered a
    second earlier (each event unique by its reported_at), the decision buffer sampled every 100 ms,
    and `fault(start, shared)` in a thread of its own (`start`: when payment 0 is due, about)."""
    payments = Payments.make(int(RATE * DURATION_S), tag, t0_ms, STEP_MS)
    requests = [http_request(service.port, service.scorer_key, "/v1/score", p) for p in payments]
    shared = _Shared()
    start = time.perf_counter() + 0.3  # the replayer starts its clock ~0.05-0.3 s later

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the test, not lost in a thread
                shared.errors.append(exc)

        return run

    def send_feedback() -> None:
        kinds: list[dict[str, Any]] = [
            {"kind": "label", "label": "fraud"},
            {"kind": "outcome", "outcome": "approved"},
            {"kind": "refund"},
            {"kind": "label", "label": "legitimate"},
        ]
        with service.http(service.scorer_key, timeout=5) as http:
            for n in range(int((DURATION_S - 2) * FEEDBACK_RATE)):
                if shared.stop.wait(max(0.0, start + 1.0 + n / FEEDBACK_RATE - time.perf_counter())):
                    return
                due = int((time.perf_counter() - start - 1.0) * RATE)
                payment = payments[n * 7919 % max(1, min(due, len(payments)))]
                event = {
                    "transaction_id": payment["transaction_id"],
                    "reported_at": iso_ms(ms_of(payment["timestamp"]) + 1000 + n),
                    **kinds[n % len(kinds)],
                }
                attempts = 0
                while attempts < (10 if retry_feedback else 1):  # a 503 is retried, as a client must
                    attempts += 1
                    try:
                        response = http.post("/v1/feedback", json=event)
                        status, retry_after = response.status_code, response.headers.get("retry-after")
                    except httpx.TransportError:
                        status, retry_after = -1, None
                    if status != 503 or shared.stop.wait(0.2):
                        break
                shared.feedback.append((event, status, retry_after, attempts))

    def sample() -> None:
        with contextlib.closing(service.client()) as client:
            while not shared.stop.wait(0.1):
                with contextlib.suppress(redis.RedisError):
                    lag = buffer_lag(client)["af:decisions"]
                    length = int(cast(int, client.xlen("af:decisions")))
                    shared.samples.append((time.perf_counter(), length, lag))

    threads = [
        threading.Thread(target=guarded(send_feedback), daemon=True),
        threading.Thread(target=guarded(sample), daemon=True),
        threading.Thread(target=guarded(lambda: fault(start, shared)), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        run = replay(service.port, requests, RATE, connections=32, drain_s=30)
    finally:
        shared.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not shared.errors, shared.errors
    return Sent(payments, run, run.answers(), shared.feedback, shared.samples, shared.fault)


def _sleep_until(moment: float, shared: _Shared) -> bool:
    """Wait until `moment` (perf_counter); False when the load stopped first."""
    return not shared.stop.wait(max(0.0, moment - time.perf_counter()))


Rows = tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]


def _rows(store_url: str) -> Rows:
    """The store's own rows, decisions and feedback (read while the stack, and its directory, exist)."""
    return store_rows(store_url, "decisions"), store_rows(store_url, "feedback")


def _once_in_store(
    rows: Rows, txids: list[str], feedback: list[dict[str, Any]]
) -> tuple[list[str], list[str], list[Any], list[Any]]:
    """Decisions missing from the store / stored more than once; feedback events (by transaction,
    kind and reported_at) missing / stored more than once. Read from the store's own rows."""
    decisions = Counter(r["transaction_id"] for _, r in rows[0])
    events = Counter((r["transaction_id"], r["kind"], r["reported_at"]) for _, r in rows[1])
    wanted = [_event_key(e) for e in feedback]
    stored = Counter({(t, k, _norm(r)): c for (t, k, r), c in events.items()})
    return (
        [t for t in txids if decisions[t] == 0],
        [t for t in txids if decisions[t] > 1],
        [w for w in wanted if stored[w] == 0],
        [w for w in wanted if stored[w] > 1],
    )


def _unlogged(answer: dict[str, Any]) -> bool:
    return any(x.startswith("decision log") for x in answer["degraded"])


def _norm(iso: str) -> int:
    return ms_of(iso)


def _event_key(event: dict[str, Any]) -> tuple[str, str, int]:
    return event["transaction_id"], event["kind"], _norm(event["reported_at"])


def _statuses(sent: Sent) -> dict[int, int]:
    return dict(Counter(int(s) for s in sent.run.status))


# --------------------------------------------------------------------------------------------------
# a. the sink killed


@pytest.mark.timeout(600)
def test_sink_killed_mid_run_loses_nothing(pg_store: str) -> None:
    env = {"ANTIFRAUD_STORE": pg_store}
    with Service("sinkkill", workers=2, tcp=True, appendonly=False, env=env) as service:
        sinks = service.sink_pids()
        assert len(sinks) == 1, f"expected one sink process under `serve`, found {sinks}"
        with contextlib.ExitStack() as cleanup:

            def fault(start: float, shared: _Shared) -> None:
                if not _sleep_until(start + 8.0, shared):
                    return
                os.kill(sinks[0], signal.SIGKILL)
                shared.fault["killed"] = time.perf_counter()
                if not _sleep_until(start + 16.0, shared):
                    return
                with contextlib.closing(service.client()) as client:
                    shared.fault["backlog"] = buffer_lag(client)["af:decisions"]
                cleanup.enter_context(standalone_sink(service, pg_store))
                shared.fault["restarted"] = time.perf_counter()

            sent = run_load(service, "snk-kill", ms_of("2026-03-13T12:00:00Z"), fault)
            load_end = time.perf_counter()
            assert "restarted" in sent.fault, "the load ended before the standalone sink started"
            assert not service.sink_pids(), "`serve` restarted its sink: the test no longer kills it"
            with contextlib.closing(service.client()) as client:
                drained_s = wait_drained(client, 120)
                logged = read_log(client, pg_store)
                stalls = [(name, ms) for name, _, ms in redis_stalls(client, service.latency_offset)]
        killed, restarted = sent.fault["killed"], sent.fault["restarted"]
        catch_up = _catch_up_s(sent, restarted)

    answered = _logged_answers(sent)
    unlogged = len(sent.payments) - len(answered)
    accepted = sent.accepted_feedback()
    missing, twice, fb_missing, fb_twice = _once_in_store(_rows(pg_store), answered, accepted)
    server = sent.server_ms(killed, restarted)
    client_side = sent.latency_ms(killed, restarted)
    FIGURES.add(SECTION, "a. sink killed: HTTP statuses / feedback statuses", _fb_summary(sent), COMMAND)
    FIGURES.add(
        SECTION,
        "a. sink killed (kill -9 at 8 s, `antifraud sink` at 16 s): backlog at restart / peak buffer",
        f"{int(sent.fault['backlog']):,} / {sent.peak_buffer:,} entries",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "a. sink killed: catch-up after the restart (backlog under 1 s of payments) / drain after the "
        "load (s)",
        f"{catch_up:.1f} / {drained_s:.1f} (load ended {time.perf_counter() - load_end:.0f} s ago)",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "a. sink killed: during the fault, scoring p99 (server) / latency p99 from due time (ms); "
        "Redis's own stalls >= 10 ms over the run (event, ms)",
        f"{pct(server, 99):.2f} / {pct(client_side, 99):.2f}; {stalls}",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "a. sink killed: answers saying 'decision log: not stored' while the sink was dead / after its "
        "restart (Redis calls timed out during the catch-up); logged decisions missing from the store / "
        "stored twice; feedback (202) missing / twice",
        f"{len(sent.unlogged(killed, restarted))} / {unlogged}; {len(missing)} / {len(twice)}; "
        f"{len(fb_missing)} / {len(fb_twice)} of {len(accepted)}",
        COMMAND,
    )
    assert _statuses(sent) == {200: len(sent.payments)}, _statuses(sent)
    assert not missing and not twice, (missing[:5], twice[:5])
    assert all(logged.times_logged(t) == 1 for t in answered)
    # while the sink is dead nothing changes for scoring; the catch-up after the restart is reported
    assert not sent.unlogged(killed, restarted), sent.unlogged(killed, restarted)[:3]
    fb_twice = [k for k in fb_twice if k not in sent.resent_feedback()]
    assert len(accepted) > 300 and not fb_missing and not fb_twice, (fb_missing[:5], fb_twice[:5])
    assert pct(server, 99) < BUDGET_MS, server


def _logged_answers(sent: Sent) -> list[str]:
    """The transactions answered 200 whose answer does not say its decision went unlogged."""
    return [
        p["transaction_id"]
        for p, a in zip(sent.payments, sent.answers, strict=True)
        if a is not None and not any(x.startswith("decision log") for x in a["degraded"])
    ]


def _catch_up_s(sent: Sent, since: float) -> float:
    """Seconds from `since` until the decision buffer's lag first fell under one second of payments."""
    for t, _, lag in sent.samples:
        if t >= since and lag < RATE:
            return t - since
    return float("nan")


def _fb_summary(sent: Sent) -> str:
    feedback = dict(Counter(s for _, s, _, _ in sent.feedback))
    return f"{_statuses(sent)} / {feedback}, re-sent after a 503: {len(sent.resent_feedback())}"


# --------------------------------------------------------------------------------------------------
# b. the store unavailable


@pytest.mark.timeout(600)
def test_store_unavailable_for_10_s_then_the_backlog_drains(pg_store: str) -> None:
    import psycopg

    from antifraud.engine.store.postgres import split_url

    conninfo, schema = split_url(pg_store)
    env = {"ANTIFRAUD_STORE": pg_store}
    with Service("storedown", workers=2, tcp=True, appendonly=False, env=env) as service:

        def fault(start: float, shared: _Shared) -> None:
            if not _sleep_until(start + 8.0, shared):
                return
            # another session takes every table of the store: the sink's next write waits for it
            with psycopg.connect(conninfo, connect_timeout=5) as conn:
                tables = ", ".join(
                    f'"{schema}".{name}' for name in ("decisions", "feedback", "contributions")
                )
                conn.execute(f"lock table {tables} in access exclusive mode")
                shared.fault["locked"] = time.perf_counter()
                time.sleep(max(0.0, start + 18.0 - time.perf_counter()))
                conn.rollback()
                shared.fault["released"] = time.perf_counter()

        sent = run_load(service, "snk-down", ms_of("2026-03-13T13:00:00Z"), fault)
        with contextlib.closing(service.client()) as client:
            drained_s = wait_drained(client, 120)
            logged = read_log(client, pg_store)
            stalls = [(name, ms) for name, _, ms in redis_stalls(client, service.latency_offset)]
            slowest = slow_commands(client)
    locked, released = sent.fault["locked"], sent.fault["released"]
    during = [n for t, n, _ in sent.samples if locked <= t <= released]
    before = [n for t, n, _ in sent.samples if t < locked]
    catch_up = _catch_up_s(sent, released)
    answered = _logged_answers(sent)
    degraded = [a for a in sent.answers if a is not None and a["degraded"]]
    by_log = [a for a in degraded if any(x.startswith("decision log") for x in a["degraded"])]
    accepted = sent.accepted_feedback()
    missing, twice, fb_missing, fb_twice = _once_in_store(_rows(pg_store), answered, accepted)
    server = sent.server_ms(locked, released)
    client_side = sent.latency_ms(locked, released)
    FIGURES.add(SECTION, "b. store locked: HTTP statuses / feedback statuses", _fb_summary(sent), COMMAND)
    FIGURES.add(
        SECTION,
        "b. store locked 10 s (LOCK TABLE in another session): decision buffer before / peak during",
        f"{max(before, default=0):,} / {max(during, default=0):,} entries",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "b. store locked: catch-up after the store returned (backlog under 1 s of payments) / drain "
        "after the load (s)",
        f"{catch_up:.1f} / {drained_s:.1f}",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "b. store locked: during the fault, scoring p99 (server) / latency p99 from due time (ms); "
        "degraded answers while locked / over the run (all / by the decision log: after the release, "
        "Redis calls timed out during the catch-up); Redis's own stalls >= 10 ms; its slowest commands (µs)",
        f"{pct(server, 99):.2f} / {pct(client_side, 99):.2f}; "
        f"{sum(1 for a in sent.answers_between(locked, released) if a['degraded'])} / "
        f"{len(degraded)} / {len(by_log)}; {stalls}; {slowest}",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "b. store locked: decisions missing from the store / stored twice; feedback (202) missing / twice",
        f"{len(missing)} / {len(twice)}; {len(fb_missing)} / {len(fb_twice)} of {len(accepted)}",
        COMMAND,
    )
    assert _statuses(sent) == {200: len(sent.payments)}, _statuses(sent)
    # while the store is locked nothing changes for scoring; the catch-up after it is reported
    during_fault = [a for a in sent.answers_between(locked, released) if a["degraded"]]
    assert not during_fault, during_fault[:3]
    assert max(during, default=0) >= RATE * 10 * 0.6, "the buffer did not grow while the store was locked"
    assert all(logged.times_logged(t) == 1 for t in answered)
    assert not missing and not twice, (missing[:5], twice[:5])
    fb_twice = [k for k in fb_twice if k not in sent.resent_feedback()]
    assert len(accepted) > 300 and not fb_missing and not fb_twice, (fb_missing[:5], fb_twice[:5])
    assert pct(server, 99) < BUDGET_MS, server


# --------------------------------------------------------------------------------------------------
# c. the buffer full


NOT_STORED = "decision log: not stored"


@pytest.mark.timeout(600)
def test_buffer_full_answers_degraded_refuses_feedback_and_resumes() -> None:
    bound = 2000
    env = {
        "ANTIFRAUD_SINK": "0",  # no sink: nothing leaves the buffer until the standalone one runs
        "ANTIFRAUD_BUFFER_MAX_ENTRIES": str(bound),
        # the age bound fills the feedback buffer (20 events/s would take 100 s to reach 2,000)
        "ANTIFRAUD_BUFFER_MAX_AGE_S": "12",
    }
    with Service("bufferfull", workers=2, tcp=True, appendonly=False, env=env) as service:
        assert not service.sink_pids(), "ANTIFRAUD_SINK=0 but `serve` started a sink"

        def fault(start: float, shared: _Shared) -> None:
            """Nothing to do: the fault is the sink's absence; the moment the bound was hit is read
            from the answers."""

        sent = run_load(service, "snk-full", ms_of("2026-03-13T14:00:00Z"), fault, retry_feedback=False)
        client = service.client()
        try:
            at_bound = int(cast(int, client.xlen("af:decisions")))
            before_sink = read_log(client, service.store_url)
            txids = [p["transaction_id"] for p in sent.payments]
            records = idempotency_records(client, txids)
            with standalone_sink(service, service.store_url):
                drained_s = wait_drained(client, 120)
                # logging resumes: 2 s more of payments and a few feedback events, then drained again
                more = Payments.make(int(RATE * 2), "snk-full-after", ms_of("2026-03-13T14:30:00Z"), STEP_MS)
                requests = [http_request(service.port, service.scorer_key, "/v1/score", p) for p in more]
                after = replay(service.port, requests, RATE, connections=16)
                with service.http(service.scorer_key) as http:
                    events = [
                        {
                            "transaction_id": p["transaction_id"],
                            "kind": "refund",
                            "reported_at": iso_ms(ms_of(p["timestamp"]) + 5000),
                        }
                        for p in more[:20]
                    ]
                    after_fb = [http.post("/v1/feedback", json=e).status_code for e in events]
                wait_drained(client, 60)
            logged = read_log(client, service.store_url)
            rows = _rows(service.store_url)
        finally:
            client.close()

    answers = sent.answers
    full = [i for i, a in enumerate(answers) if a is not None and BUFFER_FULL in a["degraded"]]
    # an answer that says its log call failed ("decision log: not stored", a Redis timeout on a busy
    # machine) promised no entry: only the others must be in the buffer
    logged_ids = [
        txids[i]
        for i, a in enumerate(answers)
        if a is not None and BUFFER_FULL not in a["degraded"] and NOT_STORED not in a["degraded"]
    ]
    first_full = min(full, default=len(answers))
    in_buffer = set(before_sink.decisions)
    dropped = [t for t in logged_ids if t not in in_buffer]
    unexpected = [txids[i] for i in full if txids[i] in in_buffer]
    null_ids = [txids[i] for i in full if (r := records[txids[i]]) is None or r["stream_id"] is not None]
    refused = [(e, s, ra) for e, s, ra, _ in sent.feedback if s == 503]
    accepted = sent.accepted_feedback()
    missing, twice, fb_missing, fb_twice = _once_in_store(rows, logged_ids, accepted)
    more_ids = [p["transaction_id"] for p in more]
    more_answers = after.answers()
    resumed = [a for a in more_answers if a is not None and not a["degraded"]]
    more_missing, more_twice, more_fb_missing, _ = _once_in_store(
        rows, more_ids, [e for e, s in zip(events, after_fb, strict=True) if s == 202]
    )
    FIGURES.add(SECTION, "c. buffer full: HTTP statuses / feedback statuses", _fb_summary(sent), COMMAND)
    FIGURES.add(
        SECTION,
        f"c. buffer full (bound {bound:,} entries, 12 s): buffer length at the end (decisions + "
        "contributions) / decisions logged / answered 'buffer full' (first at payment #)",
        f"{at_bound:,} / {len(logged_ids):,} / {len(full):,} ({first_full:,})",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "c. buffer full: logged decisions dropped from the buffer / 'buffer full' ones in it / those "
        "whose idempotency record has a stream id",
        f"{len(dropped)} / {len(unexpected)} / {len(null_ids)}",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "c. buffer full: feedback refused 503 / with Retry-After (s)",
        f"{len(refused)} / {sorted({ra for _, _, ra in refused if ra is not None})}",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "c. buffer full: sink drain (s); decisions missing from the store / twice; feedback missing / twice",
        f"{drained_s:.1f}; {len(missing)} / {len(twice)}; {len(fb_missing)} / {len(fb_twice)}",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "c. after the drain: payments answered not degraded / logged to the store; feedback 202",
        f"{len(resumed)} of {len(more)} / {len(more) - len(more_missing)}; "
        f"{after_fb.count(202)} of {len(after_fb)}",
        COMMAND,
    )
    assert _statuses(sent) == {200: len(sent.payments)}, _statuses(sent)
    assert at_bound == bound, f"the buffer holds {at_bound} entries, its bound is {bound}"
    assert full and all(answers[i] is not None for i in range(first_full, len(answers)))
    assert not dropped and not unexpected and not null_ids, (dropped[:3], unexpected[:3], null_ids[:3])
    assert refused and all(ra is not None and int(ra) > 0 for _, _, ra in refused), refused[:3]
    assert {s for _, s, _, _ in sent.feedback} <= {202, 503}
    assert not missing and not twice and not fb_missing and not fb_twice
    assert all(logged.times_logged(t) == 1 for t in logged_ids)
    assert len(resumed) == len(more) and after_fb == [202] * len(after_fb)
    assert not more_missing and not more_twice and not more_fb_missing
