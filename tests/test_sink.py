"""The decision sink (engine/sink.py) on a real redis-server and the real stores: every decision and
feedback event logged through `DecisionLog` reaches the store once, through store failures, kill -9
of `antifraud sink`, and two sinks sharing the work; the stream is trimmed, never below an unwritten
entry. PostgreSQL runs where a server is reachable on 127.0.0.1:5432, and says why it skips otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import cast

import orjson
import pyarrow.parquet as pq
import pytest
import redis
from payloads import T0, log_decision, logged_decision
from sinks import PG_ADMIN, require_postgres

from antifraud.engine.decision_record import Decision, FeedbackRecord
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.sink import Sink
from antifraud.engine.store import open_store
from antifraud.engine.store.parquet import ParquetStore
from antifraud.features.spec import load_spec

FEATURES = load_spec().feature_names


def decision(i: int, day: int = 0) -> Decision:
    """A decision as the pipeline logs it, with every feature of the spec (a realistic size)."""
    moment = T0 + timedelta(days=day, seconds=i)
    return cast(
        Decision,
        logged_decision(
            f"tx-{i}",
            i,
            {name: (None if (i + k) % 11 == 0 else float(i + k)) for k, name in enumerate(FEATURES)},
            verdict=("allow", "review", "block", "challenge")[i % 4],
            timestamp=moment.isoformat(),
            decided_at=(moment + timedelta(milliseconds=3)).isoformat(),
            payment={"card_id": f"card_{i % 50}", "merchant_id": f"m_{i % 7}", "channel": "ecom"},
            amount=float(i % 500) + 0.5,
        ),
    )


def feedback(i: int) -> FeedbackRecord:
    """A feedback event about decision `i`, as the API logs it."""
    return {
        "transaction_id": f"tx-{i}",
        "kind": "label",
        "label": "fraud" if i % 2 else "legitimate",
        "outcome": None,
        "decline_code": None,
        "reported_at": (T0 + timedelta(days=1, seconds=i)).isoformat(),
        "received_at": (T0 + timedelta(days=1, seconds=i, milliseconds=5)).isoformat(),
    }


def log_decisions(log: DecisionLog, ids: range) -> None:
    """Log decisions through the real `DecisionLog.put` (the scoring path's own write)."""
    for i in ids:
        assert log_decision(log, decision(i)) == "logged"


# -- the stores ---------------------------------------------------------------------------------------


def stored_counts(url: str) -> tuple[int, int, int, int]:
    """Rows of decisions, distinct transaction ids, rows of feedback, distinct stream ids: read from
    the store's own files or tables, beside its API, so duplicates would show."""
    if url.startswith("postgresql://"):
        import psycopg

        from antifraud.engine.store.postgres import split_url

        conninfo, schema = split_url(url)
        with psycopg.connect(conninfo) as conn:
            d = conn.execute(
                f"select count(*), count(distinct transaction_id) from {schema}.decisions"
            ).fetchone()
            f = conn.execute(f"select count(*), count(distinct stream_id) from {schema}.feedback").fetchone()
            assert d is not None and f is not None
            return int(d[0]), int(d[1]), int(f[0]), int(f[1])
    root = Path(url)
    counts: list[int] = []
    for kind, key in (("decisions", "transaction_id"), ("feedback", "stream_id")):
        values: list[str] = []
        for path in sorted(root.glob(f"{kind}/day=*/*.parquet")):
            values += pq.read_table(path, columns=[key]).column(key).to_pylist()
        counts += [len(values), len(set(values))]
    return counts[0], counts[1], counts[2], counts[3]


# -- Redis ------------------------------------------------------------------------------------------


def pending(client: redis.Redis, stream: str = "af:decisions") -> int:
    """Entries delivered to the sink's group and not acknowledged."""
    return int(cast(dict[str, int], client.xpending(stream, "sink"))["pending"])


def drain(sink: Sink) -> int:
    """Run batches until one finds nothing."""
    total = 0
    while handled := sink.run_once():
        total += handled
    return total


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    """Poll `condition` until it holds (a test failure after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


# -- tests --------------------------------------------------------------------------------------------


def test_logged_decisions_and_feedback_reach_the_store_once(
    redis_client: redis.Redis, store_url: str
) -> None:
    """Decisions logged before the sink's first run (the group starts at the stream's beginning),
    a retried payment (logged once), feedback events: each is in the store once, read back as logged;
    delivering the whole stream again adds nothing."""
    log = DecisionLog(redis_client)
    log_decisions(log, range(300))
    # a retry: answered from the idempotency record, not logged again
    assert isinstance(log_decision(log, decision(7)), dict)
    for i in range(0, 300, 3):
        log.add_feedback(feedback(i))
    log.add_feedback(feedback(0))  # a second event about one payment is a second event
    store = open_store(store_url)
    try:
        sink = Sink(redis_client, store, batch=128, block_ms=10, linger_ms=0)
        assert drain(sink) == 300 + 101
        assert stored_counts(store_url) == (300, 300, 101, 101)
        assert store.decision("tx-42") == decision(42)
        assert store.feedback_for("tx-0") == [feedback(0), feedback(0)]
        assert store.feedback_for("tx-3") == [feedback(3)]
        # every entry written and acknowledged: the streams are trimmed to nothing
        assert redis_client.xlen("af:decisions") == 0 and redis_client.xlen("af:feedback") == 0
        assert sink.lag() == {"af:decisions": 0, "af:feedback": 0, "af:audit": 0}

        # the same entries delivered again (as after a crash between the write and the ack)
        log_decisions(log, range(300, 310))
        redis_client.xgroup_setid("af:decisions", "sink", "0")
        written = sink.metrics.written.labels("decisions")._value.get()
        assert drain(sink) == 10
        assert stored_counts(store_url) == (310, 310, 101, 101)
        assert sink.metrics.written.labels("decisions")._value.get() == written + 10
    finally:
        store.close()


def test_entries_left_pending_are_written_by_the_next_run(redis_client: redis.Redis, tmp_path: Path) -> None:
    """A sink that read a batch and died before writing it: a new sink under the same name takes its
    own pending entries first; under another name it claims them once they are idle long enough."""
    log = DecisionLog(redis_client)
    log_decisions(log, range(100))
    store = ParquetStore(tmp_path / "store")
    # read 40 entries as a sink would, and never write them
    redis_client.xgroup_create("af:decisions", "sink", id="0", mkstream=True)
    redis_client.xreadgroup("sink", "host-1", {"af:decisions": ">"}, count=40)
    assert pending(redis_client) == 40

    other = Sink(
        redis_client, store, consumer="host-2", batch=1000, block_ms=10, claim_idle_ms=400, linger_ms=0
    )
    assert drain(other) == 60  # the new entries; host-1's are not idle long enough to be taken
    assert pending(redis_client) == 40
    assert redis_client.xlen("af:decisions") == 100  # nothing trimmed below host-1's unwritten entries
    time.sleep(0.5)
    assert drain(other) == 40  # claimed (XAUTOCLAIM) and written
    assert pending(redis_client) == 0 and redis_client.xlen("af:decisions") == 0
    assert stored_counts(str(store.root)) == (100, 100, 0, 0)

    redis_client.xreadgroup("sink", "host-3", {"af:decisions": ">"}, count=10)
    log_decisions(log, range(100, 110))
    same = Sink(redis_client, store, consumer="host-3", batch=1000, block_ms=10, linger_ms=0)
    assert drain(same) == 10  # host-3's own pending entries, at once
    assert stored_counts(str(store.root)) == (110, 110, 0, 0)
    store.close()


def test_the_stream_is_trimmed_after_writes_never_below_an_unwritten_entry(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Trimming follows the writes: below the group's oldest pending entry, and never past what was
    delivered (entries logged meanwhile stay)."""
    log = DecisionLog(redis_client)
    log_decisions(log, range(50))
    store = ParquetStore(tmp_path / "store")
    slow = Sink(redis_client, store, consumer="slow", batch=10, block_ms=10, linger_ms=0)
    fast = Sink(redis_client, store, consumer="fast", batch=10, block_ms=10, linger_ms=0)
    redis_client.xreadgroup("sink", "slow", {"af:decisions": ">"}, count=10)  # slow holds tx-0..9
    assert fast.run_once() == 10  # tx-10..19, written
    assert fast.trim() == {"af:decisions": 0, "af:feedback": 0, "af:audit": 0}  # tx-0 is still unwritten
    assert redis_client.xlen("af:decisions") == 50
    assert fast.lag()["af:decisions"] == 40  # 10 pending, 30 never delivered

    assert slow.run_once() == 10  # its own pending tx-0..9: written; now all up to tx-19 is
    assert redis_client.xlen("af:decisions") == 30
    oldest = redis_client.xrange("af:decisions", count=1)[0][1][b"d"]
    assert b'"tx-20"' in oldest
    assert drain(fast) == 30
    assert redis_client.xlen("af:decisions") == 0
    assert stored_counts(str(store.root)) == (50, 50, 0, 0)
    store.close()


@contextmanager
def unwritable(root: Path) -> Iterator[None]:
    """The store's directory made unwritable for real: immutable (chattr +i, which binds root too)
    when this runs as root, read-only permissions otherwise; restored on exit."""
    root.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    if as_root:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a directory unwritable")
        done = subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
    else:
        for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            directory.chmod(0o555)
    try:
        yield
    finally:
        if as_root:
            subprocess.run(["chattr", "-R", "-i", str(root)], check=True)
        else:
            for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
                directory.chmod(0o755)


def test_a_failing_store_leaves_the_batch_pending_until_it_is_writable(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The store's directory unwritable: every write fails, nothing is acknowledged or trimmed, the
    sink retries; once writable again the backlog lands, once."""
    root = tmp_path / "store"
    log = DecisionLog(redis_client)
    log_decisions(log, range(20))
    store = ParquetStore(root)
    sink = Sink(redis_client, store, batch=50, block_ms=20, linger_ms=0)
    assert drain(sink) == 20  # the store works: its directories exist before they are locked
    stop = threading.Event()
    worker = threading.Thread(target=sink.run, args=(stop,))
    try:
        with unwritable(root):
            worker.start()
            log_decisions(log, range(20, 120))
            for i in range(0, 40):
                log.add_feedback(feedback(i))
            wait_until(lambda: sink.metrics.failures._value.get() >= 3, what="three failed writes")
            assert stored_counts(str(root)) == (20, 20, 0, 0)
            assert redis_client.xlen("af:decisions") == 100  # none trimmed
            assert pending(redis_client) + pending(redis_client, "af:feedback") > 0
            assert sink.lag() == {"af:decisions": 100, "af:feedback": 40, "af:audit": 0}
        wait_until(lambda: sum(sink.lag().values()) == 0, what="the backlog to drain")
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert stored_counts(str(root)) == (120, 120, 40, 40)
    assert redis_client.xlen("af:decisions") == 0 and redis_client.xlen("af:feedback") == 0
    store.close()


def _sink_process(redis_url: str, store_url: str, *extra: str) -> subprocess.Popen[bytes]:
    """`antifraud sink` as its own process."""
    command = [
        sys.executable,
        "-m",
        "antifraud.engine.cli",
        "sink",
        "--redis",
        redis_url,
        "--store",
        store_url,
    ]
    return subprocess.Popen([*command, "--block-ms", "100", *extra], stderr=subprocess.PIPE)


def test_kill_9_mid_backlog_then_restart_writes_every_decision_once(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, store_url: str
) -> None:
    """`antifraud sink` killed with SIGKILL twice in the middle of a large backlog, each time restarted
    (a new consumer, claiming what the dead one held): every decision in the store exactly once;
    SIGTERM ends the last one with exit status 0."""
    total = 6000
    log = DecisionLog(redis_client)
    log_decisions(log, range(total))

    def delivered() -> int:
        groups = cast(list[dict[str, object]], redis_client.xinfo_groups("af:decisions"))
        return int(cast(int, groups[0]["entries-read"] or 0)) if groups else 0

    for fraction in (0.2, 0.5):
        sink = _sink_process(redis_server.url, store_url, "--batch", "250", "--claim-idle-ms", "500")
        try:
            wait_until(lambda f=fraction: delivered() >= total * f, timeout=120, what="part of the backlog")
        finally:
            sink.send_signal(signal.SIGKILL)
            sink.wait()
        assert sink.returncode == -signal.SIGKILL
    assert redis_client.xlen("af:decisions") > 0
    last = _sink_process(redis_server.url, store_url, "--batch", "250", "--claim-idle-ms", "500")
    try:
        wait_until(
            lambda: redis_client.xlen("af:decisions") == 0 and pending(redis_client) == 0,
            timeout=180,
            what="the backlog to drain",
        )
    finally:
        last.send_signal(signal.SIGTERM)
        _, stderr = last.communicate(timeout=30)
    assert last.returncode == 0, stderr.decode()
    assert stored_counts(store_url)[:2] == (total, total)


def test_two_sinks_split_the_work_without_duplicates(redis_client: redis.Redis, tmp_path: Path) -> None:
    """Two consumers of the group, running while decisions keep coming: each writes a share, every
    decision is written once."""
    root = tmp_path / "store"
    log = DecisionLog(redis_client)
    log_decisions(log, range(1000))
    stores = [ParquetStore(root), ParquetStore(root)]  # two writers of one directory (its lock)
    sinks = [
        Sink(redis_client, s, consumer=f"sink-{n}", batch=50, block_ms=20, linger_ms=0)
        for n, s in enumerate(stores)
    ]
    stop = threading.Event()
    workers = [threading.Thread(target=s.run, args=(stop,)) for s in sinks]
    for worker in workers:
        worker.start()
    try:
        log_decisions(log, range(1000, 2000))
        wait_until(lambda: sum(s.acknowledged for s in sinks) == 2000, what="every decision written")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert all(s.acknowledged > 0 for s in sinks), [s.acknowledged for s in sinks]
    assert sum(s.metrics.failures._value.get() for s in sinks) == 0
    assert stored_counts(str(root)) == (2000, 2000, 0, 0)
    for store in stores:
        store.close()


def test_entries_deleted_before_they_were_written_are_counted_and_do_not_block(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A stream trimmed by its MAXLEN bound under an unwritten, delivered entry (the sink fell that far
    behind): the sink counts the entry lost, acknowledges it and goes on; an entry that is not JSON,
    or whose feature list Redis does not name, is set aside in `af:sink:rejected`."""
    log = DecisionLog(redis_client)
    log_decisions(log, range(10))
    store = ParquetStore(tmp_path / "store")
    sink = Sink(redis_client, store, consumer="a", batch=1000, block_ms=10, linger_ms=0)
    redis_client.xreadgroup("sink", "a", {"af:decisions": ">"}, count=4)
    first_six = [e[0] for e in redis_client.xrange("af:decisions", count=6)]
    redis_client.xtrim("af:decisions", minid=first_six[-1], approximate=False)  # tx-0..4 deleted
    redis_client.xadd("af:decisions", {"d": b"{not json"})
    unnamed = {**decision(99), "feature_list": "no-such-list", "features": [1.0]}
    redis_client.xadd("af:decisions", {"d": orjson.dumps(unnamed)})
    # 4 delivered then deleted (tx-4 deleted undelivered), 5 left, 1 not JSON, 1 of an unknown list
    assert drain(sink) == 4 + 5 + 2
    assert sink.metrics.lost.labels("af:decisions")._value.get() == 4
    assert sink.metrics.rejected.labels("af:decisions")._value.get() == 2
    assert redis_client.xlen("af:sink:rejected") == 2
    assert stored_counts(str(store.root)) == (5, 5, 0, 0)
    assert pending(redis_client) == 0
    store.close()


def test_sink_throughput(redis_client: redis.Redis, store_url: str) -> None:
    """A figure, not a gate: decisions per second from a 20,000-entry backlog (87 features each) into
    the store, batches of 1,000 (`pytest -s` prints it)."""
    total = 20_000
    log = DecisionLog(redis_client)
    # spread over 4 payment days: a batch writes one file per day it holds
    pipe_batch = 2000
    for start in range(0, total, pipe_batch):
        for i in range(start, start + pipe_batch):
            log_decision(log, decision(i, day=i % 4))
    store = open_store(store_url)
    try:
        sink = Sink(redis_client, store, batch=1000, block_ms=10, linger_ms=0)
        started = time.perf_counter()
        assert drain(sink) == total
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    backend = "postgres" if store_url.startswith("postgresql://") else "parquet"
    print(f"\nsink throughput ({backend}): {total:,} decisions in {elapsed:.2f} s = {total / elapsed:,.0f}/s")
    assert stored_counts(store_url)[:2] == (total, total)


def test_postgres_refusing_connections_leaves_the_batch_pending_until_it_returns(
    redis_client: redis.Redis,
) -> None:
    """The store's database closed to connections and its sessions terminated (what the sink sees of a
    stopped server): every write fails, nothing is acknowledged or trimmed; reopened, the backlog lands
    once. A database of its own, so no other test's sessions are touched."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
    require_postgres()
    name = f"sink_{uuid.uuid4().hex[:12]}"
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"create database {name}")  # a name made above: no quoting needed
    log = DecisionLog(redis_client)
    store = open_store(url)
    sink = Sink(redis_client, store, batch=100, block_ms=20, linger_ms=0)
    stop = threading.Event()
    worker = threading.Thread(target=sink.run, args=(stop,))
    try:
        log_decisions(log, range(50))
        assert drain(sink) == 50
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"alter database {name} allow_connections false")
            admin.execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", [name])
            worker.start()
            log_decisions(log, range(50, 550))
            wait_until(lambda: sink.metrics.failures._value.get() >= 3, what="three failed writes")
            assert redis_client.xlen("af:decisions") == 500  # nothing written, nothing trimmed
            assert sink.lag()["af:decisions"] == 500
            admin.execute(f"alter database {name} allow_connections true")
        wait_until(lambda: sum(sink.lag().values()) == 0, timeout=120, what="the backlog to drain")
        assert stored_counts(url)[:2] == (550, 550)
        assert redis_client.xlen("af:decisions") == 0
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(timeout=60)
        store.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"alter database {name} allow_connections true")
            admin.execute(f"drop database if exists {name} with (force)")


def test_a_trickle_of_payments_is_written_in_one_batch(redis_client: redis.Redis, tmp_path: Path) -> None:
    """Decisions arriving one by one within `linger_ms` of the first make one write (one file), not
    one each."""
    log = DecisionLog(redis_client)
    store = ParquetStore(tmp_path / "store")
    sink = Sink(redis_client, store, batch=100, block_ms=1000, linger_ms=1500)

    def trickle() -> None:
        for i in range(10):
            log_decisions(log, range(i, i + 1))
            time.sleep(0.03)

    feeder = threading.Thread(target=trickle)
    feeder.start()
    assert sink.run_once() == 10
    feeder.join()
    assert len(list(store.root.glob("decisions/day=*/*.parquet"))) == 1

    log_decisions(log, range(10, 110))
    assert sink.run_once() == 100
    store.close()


def test_a_stream_deleted_under_the_sink_gets_its_group_again(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The streams gone (a Redis restarted without persistence): the sink creates its groups again and
    writes what is logged next."""
    log = DecisionLog(redis_client)
    store = ParquetStore(tmp_path / "store")
    sink = Sink(redis_client, store, batch=100, block_ms=20, linger_ms=0)
    stop = threading.Event()
    worker = threading.Thread(target=sink.run, args=(stop,))
    worker.start()
    try:
        log_decisions(log, range(10))
        wait_until(lambda: sink.acknowledged == 10, what="the first decisions")
        redis_client.delete("af:decisions", "af:feedback")
        time.sleep(0.1)  # the sink reads the missing group at least once
        log_decisions(log, range(10, 20))
        wait_until(lambda: sink.acknowledged == 20, what="the decisions logged after")
    finally:
        stop.set()
        worker.join(timeout=30)
    assert stored_counts(str(store.root)) == (20, 20, 0, 0)
    store.close()


def test_consumers_long_idle_with_nothing_pending_are_forgotten(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Each run of a sink has its own name: the names of runs long gone leave the group, those still
    holding entries stay."""
    log = DecisionLog(redis_client)
    log_decisions(log, range(5))
    redis_client.xgroup_create("af:decisions", "sink", id="0", mkstream=True)
    redis_client.xreadgroup("sink", "gone-empty", {"af:decisions": ">"}, count=1)
    redis_client.xack("af:decisions", "sink", redis_client.xrange("af:decisions", count=1)[0][0])
    redis_client.xreadgroup("sink", "gone-holding", {"af:decisions": ">"}, count=1)
    time.sleep(0.2)
    store = ParquetStore(tmp_path / "store")
    sink = Sink(redis_client, store, consumer="live", block_ms=10, linger_ms=0, forget_idle_ms=100)
    assert sink.run_once() == 3
    names = {c["name"] for c in redis_client.xinfo_consumers("af:decisions", "sink")}
    assert names == {b"gone-holding", b"live"}
    store.close()
