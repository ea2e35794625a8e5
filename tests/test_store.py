"""The durable decision store (engine/store/): Parquet + DuckDB, and PostgreSQL, on real decisions.

The decisions are the pipeline's own: payments scored through the app on a real redis-server, read
back from its decision and feedback streams with their entry ids, as the sink will read them. Every
test runs on both backends; PostgreSQL's are skipped, saying why, when 127.0.0.1:5432 is unreachable.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from payloads import T0, logged_contributions, logged_decision, score_request
from test_export import tiny_model

from antifraud.engine.api import create_app
from antifraud.engine.decision_entry import FeatureLists, decision_of
from antifraud.engine.decision_record import ContributionsRecord, Decision, FeedbackRecord
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.store import DecisionQuery, Logged, Store, Written, open_store
from antifraud.engine.store.parquet import ParquetStore

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DAY = 1440  # minutes


def postgres_reachable() -> bool:
    """Whether a PostgreSQL server listens on 127.0.0.1:5432."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model the app serves."""
    return tiny_model(tmp_path_factory.mktemp("store") / "tiny-model")


@pytest.fixture(scope="module")
def logged(model_dir: Path, redis_server: Any) -> tuple[list[Logged], list[Logged]]:
    """Real decisions and feedback events with their stream ids: 30 payments over three days (cards,
    customers and merchants varied, some without a customer), and feedback about a few of them."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    os.environ.setdefault("ANTIFRAUD_PAN_SECRET", "test-secret-0123456789")
    settings = Settings(redis_url=None, model_dir=model_dir, rules_dir=ROOT / "rules", api_keys_file=None)
    with TestClient(create_app(settings, client=client)) as http:
        for i in range(30):
            body = score_request(
                f"tx-{i:02d}",
                (i // 10) * DAY + i,  # days 0, 1, 2 after T0
                card_id=f"card_{i % 4}",
                merchant_id=f"m_{i % 3}",
                customer_id=None if i % 5 == 0 else f"cust_{i % 6}",
                amount=10.0 + i,
                metadata={"order": f"o-{i}", "basket": i % 7},
            )
            assert http.post("/v1/score", json=body).status_code == 200, body
        for txid, kind, minute, extra in (
            ("tx-03", "outcome", 5, {"outcome": "declined", "decline_code": "05"}),
            ("tx-03", "label", 60, {"label": "legitimate"}),
            ("tx-03", "label", 50, {"label": "chargeback"}),
            ("tx-12", "refund", 70, {}),
        ):
            reported = (T0 + timedelta(minutes=minute)).isoformat()
            answer = http.post(
                "/v1/feedback", json={"transaction_id": txid, "kind": kind, "reported_at": reported, **extra}
            )
            assert answer.status_code == 202, answer.text

    def entries(stream: str, field: bytes, read: Callable[[bytes], Any]) -> list[Logged]:
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
        # the decisions' stream also holds contributions (field "c"), which the tests below build
        return [Logged(entry.decode(), read(fields[field])) for entry, fields in rows if field in fields]

    lists = FeatureLists(client)  # a decision's features by name, as the sink reads them
    decisions = entries("af:decisions", b"d", lambda raw: decision_of(raw, lists.names))
    feedback = entries("af:feedback", b"e", orjson.loads)
    client.close()
    assert len(decisions) == 30 and len(feedback) == 4
    return decisions, feedback


@pytest.fixture(params=["parquet", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store of each backend (PostgreSQL: a schema of its own, dropped after the test)."""
    if request.param == "parquet":
        opened = open_store(str(tmp_path / "store"))
        yield opened
        opened.close()
        return
    if not postgres_reachable():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (CI runs one; the Parquet backend is tested)")
    import psycopg

    schema = f"store_test_{uuid.uuid4().hex[:10]}"
    opened = open_store(f"{PG_URL}?schema={schema}")
    try:
        yield opened
    finally:
        opened.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"drop schema if exists {schema} cascade")


def as_logged(record: Decision | FeedbackRecord | ContributionsRecord) -> Any:
    """A record as the JSON log holds it (NaN features are null)."""
    return orjson.loads(orjson.dumps(record))


def test_open_store_picks_the_backend_by_url(tmp_path: Path) -> None:
    """A plain path and parquet:// open the Parquet store on that directory."""
    for url in (str(tmp_path / "a"), f"parquet://{tmp_path / 'b'}"):
        opened = open_store(url)
        assert isinstance(opened, ParquetStore) and opened.root.name in ("a", "b")
        opened.close()


def test_round_trip_is_exact(store: Store, logged: tuple[list[Logged], list[Logged]]) -> None:
    """Every decision reads back key for key as it was logged, NaN features as null; feedback too."""
    decisions, feedback = logged
    first = cast(Decision, orjson.loads(orjson.dumps(decisions[0].record)))
    names = list(first["features"])[:3]
    for name in names:
        first["features"][name] = math.nan  # as the pipeline holds a missing feature in memory
    decisions = [Logged(decisions[0].stream_id, first), *decisions[1:]]

    assert store.write(decisions, feedback) == Written(30, 4)
    for item in decisions:
        read = store.decision(item.record["transaction_id"])
        assert read == as_logged(item.record)
        assert orjson.dumps(read) == orjson.dumps(item.record)  # the same keys in the same order
    assert all(store.decision("tx-00")["features"][n] is None for n in names)  # type: ignore[index]
    assert store.decision("tx-unknown") is None
    assert store.feedback_for("tx-03") == [as_logged(f.record) for f in feedback[:3]]
    assert store.feedback_for("tx-12") == [as_logged(feedback[3].record)]
    assert store.feedback_for("tx-00") == []


def test_writes_are_idempotent(store: Store, logged: tuple[list[Logged], list[Logged]]) -> None:
    """The same batch twice, overlapping batches and duplicates within a batch add each record once."""
    decisions, feedback = logged
    assert store.write(decisions[:12], feedback[:2]) == Written(12, 2)
    assert store.write(decisions[:12], feedback[:2]) == Written(0, 0)
    # overlapping, with duplicates inside the batch (a redelivered entry read twice)
    batch = decisions[8:20] + decisions[15:18] + decisions[8:9]
    assert store.write(batch, feedback[1:] + feedback[3:]) == Written(8, 2)
    assert store.write(decisions, feedback) == Written(10, 0)
    assert store.write(decisions, feedback) == Written(0, 0)
    found = store.search(DecisionQuery(limit=1000))
    assert sorted(d["transaction_id"] for d in found) == sorted(d.record["transaction_id"] for d in decisions)
    assert len(store.feedback_for("tx-03")) == 3


def test_search(store: Store, logged: tuple[list[Logged], list[Logged]]) -> None:
    """By card, customer, merchant, verdict and time range; newest payment first; at most `limit`."""
    decisions, feedback = logged
    store.write(decisions, feedback)
    records = [cast(Decision, as_logged(d.record)) for d in decisions]

    def expected(keep: Any, limit: int = 100) -> list[str]:
        chosen = [d for d in records if keep(d)]
        chosen.sort(key=lambda d: (datetime.fromisoformat(d["timestamp"]), d["transaction_id"]), reverse=True)
        return [d["transaction_id"] for d in chosen][:limit]

    def ids(query: DecisionQuery) -> list[str]:
        return [d["transaction_id"] for d in store.search(query)]

    assert ids(DecisionQuery()) == expected(lambda d: True)
    assert ids(DecisionQuery(limit=7)) == expected(lambda d: True, 7)
    assert ids(DecisionQuery(card_id="card_1")) == expected(lambda d: d["payment"].get("card_id") == "card_1")
    assert ids(DecisionQuery(customer_id="cust_2")) == expected(
        lambda d: d["payment"].get("customer_id") == "cust_2"
    )
    assert ids(DecisionQuery(merchant_id="m_2", card_id="card_2")) == expected(
        lambda d: d["payment"].get("merchant_id") == "m_2" and d["payment"].get("card_id") == "card_2"
    )
    verdicts = {d["verdict"] for d in records}
    for verdict in verdicts:
        assert ids(DecisionQuery(verdict=verdict)) == expected(lambda d, v=verdict: d["verdict"] == v)
    start, end = T0 + timedelta(minutes=DAY + 3), T0 + timedelta(minutes=2 * DAY + 5)

    def within(d: Decision) -> bool:
        return start <= datetime.fromisoformat(d["timestamp"]) < end

    assert ids(DecisionQuery(start=start, end=end)) == expected(within)
    assert ids(DecisionQuery(start=start, end=end, merchant_id="m_0", limit=2)) == expected(
        lambda d: within(d) and d["payment"].get("merchant_id") == "m_0", 2
    )
    assert ids(DecisionQuery(card_id="card_none")) == []


def test_retention_deletes_whole_days(store: Store, logged: tuple[list[Logged], list[Logged]]) -> None:
    """Decisions of the days before `before`'s day go (by payment day), feedback by received day."""
    decisions, feedback = logged
    store.write(decisions, feedback)

    def received_before(moment: datetime) -> int:
        day = moment.date()
        return sum(
            datetime.fromisoformat(cast(FeedbackRecord, f.record)["received_at"]).date() < day
            for f in feedback
        )

    # the middle of day 1: day 0's ten decisions go, day 1's stay whole (day granularity)
    cutoff = T0 + timedelta(minutes=DAY + 120)
    assert store.apply_retention(cutoff) == 10 + received_before(cutoff)
    kept = store.search(DecisionQuery(limit=1000))
    assert sorted(d["transaction_id"] for d in kept) == [f"tx-{i:02d}" for i in range(10, 30)]
    assert store.decision("tx-03") is None and store.decision("tx-10") is not None
    assert store.apply_retention(cutoff) == 0
    later = datetime.now(T0.tzinfo) + timedelta(days=2)
    assert store.apply_retention(later) == 20 + len(feedback) - received_before(cutoff)
    assert store.search(DecisionQuery()) == [] and store.feedback_for("tx-03") == []
    assert store.write(decisions[:3], []) == Written(3, 0)  # a store emptied by retention takes writes


def test_a_crashed_write_leaves_no_visible_file(
    tmp_path: Path, logged: tuple[list[Logged], list[Logged]]
) -> None:
    """A writer killed (SIGKILL) after writing its temporary file and before renaming it: readers never
    see the file, and the next write removes it and stores the batch."""
    decisions, _ = logged
    root = tmp_path / "store"
    batch = tmp_path / "batch.json"
    batch.write_bytes(orjson.dumps([[d.stream_id, d.record] for d in decisions]))
    script = textwrap.dedent(
        f"""
        import sys, time, orjson
        from antifraud.engine.store import Logged
        from antifraud.engine.store.parquet import ParquetStore, _Row
        store = ParquetStore({str(root)!r})
        items = [Logged(s, r) for s, r in orjson.loads(open({str(batch)!r}, "rb").read())]
        with store._locked():
            day = store._dir("decisions").joinpath("day=2026-03-01")
            rows = [_Row(i.stream_id, orjson.dumps(i.record), i.record) for i in items]
            tmp = store._write_temp(day, store._table("decisions", rows))
            print(tmp, flush=True)
            time.sleep(600)  # killed here, before the rename
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        tmp = Path(child.stdout.readline().strip())
        assert tmp.is_file() and pq.read_metadata(tmp).num_rows == 30  # a whole file, not yet visible
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store = ParquetStore(root)
    try:
        assert store.decision("tx-00") is None and store.search(DecisionQuery()) == []
        with store.connect() as db:  # nothing for a notebook either: no view, no file
            assert db.execute("select count(*) from duckdb_views() where not internal").fetchone() == (0,)
        assert store.write(decisions, []) == Written(30, 0)  # the lock was released by the kill
        assert not tmp.exists()
        assert store.decision("tx-00") == as_logged(decisions[0].record)
    finally:
        store.close()


def test_parquet_files_are_flat_for_analysts(
    tmp_path: Path, logged: tuple[list[Logged], list[Logged]]
) -> None:
    """One file per day written; flat columns (one per feature); the notebook one-liner reads them."""
    decisions, feedback = logged
    store = ParquetStore(tmp_path / "store")
    try:
        store.write(decisions, feedback)
        days = sorted(p.name for p in (tmp_path / "store" / "decisions").iterdir())
        assert days == ["day=2026-03-01", "day=2026-03-02", "day=2026-03-03"]
        glob = str(tmp_path / "store" / "decisions" / "*" / "*.parquet")
        frame = duckdb.sql(
            f"select * from read_parquet('{glob}', hive_partitioning=true, union_by_name=true)"
        ).fetchdf()
        first = cast(Decision, decisions[0].record)
        row = frame.set_index("transaction_id").loc["tx-00"]
        assert row["verdict"] == first["verdict"] and row["card_id"] == "card_0"
        assert row["stream_id"] == decisions[0].stream_id and str(row["day"]).startswith("2026-03-01")
        assert orjson.loads(row["metadata"]) == {"order": "o-0", "basket": 0}
        assert orjson.loads(row["payment_other"])["channel"] == "ecom"
        assert orjson.loads(row["reasons"]) == first["reasons"]
        for name, value in first["features"].items():
            column = f"feature_{name}" if name == "amount" else name
            assert (value is None and math.isnan(row[column])) or row[column] == value
        with store.connect() as db:
            assert db.execute("select count(*) from decisions").fetchone() == (30,)
            assert db.execute("select count(*) from feedback").fetchone() == (4,)
    finally:
        store.close()


def parquet_names(root: Path, kind: str = "decisions") -> dict[str, list[str]]:
    """The data file names of each day directory of a Parquet store."""
    return {
        day.name: sorted(p.name for p in day.glob("*.parquet")) for day in sorted((root / kind).glob("day=*"))
    }


def everything(store: Store, logged: tuple[list[Logged], list[Logged]]) -> tuple[object, ...]:
    """What the reads answer about every logged record."""
    decisions, feedback = logged
    ids = sorted({cast(Decision, d.record)["transaction_id"] for d in decisions})
    return (
        store.search(DecisionQuery(limit=1000)),
        [store.decision(txid) for txid in ids],
        [store.feedback_for(txid) for txid in ("tx-03", "tx-12")],
        len(feedback),
    )


def test_the_idempotency_check_reads_only_files_written_since_the_entries(
    tmp_path: Path, logged: tuple[list[Logged], list[Logged]]
) -> None:
    """A redelivered batch is skipped (its entries are older than every file that holds them); an
    entry whose id time is after every file of its day, by more than the clock margin, is not checked
    against them (the narrowed scope), and compaction keeps the first logged copy."""
    decisions, feedback = logged
    store = ParquetStore(tmp_path / "store", clock_margin_ms=1_000)
    try:
        for i in range(0, 30, 3):  # ten files over three days
            assert store.write(decisions[i : i + 3], feedback[i : i + 3]) == Written(
                3, len(feedback[i : i + 3])
            )
        assert store.write(decisions, feedback) == Written(0, 0)  # redelivered: every copy seen
        later = f"{int(datetime.now().timestamp() * 1000) + 3_600_000}-0"  # an hour after every file
        again = Logged(later, decisions[0].record)
        assert store.write([again], []) == Written(1, 0)  # files older than the margin were not read
        db = store.connect()
        assert db.execute("select count(*) from decisions where transaction_id = 'tx-00'").fetchone() == (2,)
        db.close()
        assert store.compact() == 12 + 1  # the decisions' files (two batches span two days), the copy
        assert store.decision("tx-00") == as_logged(decisions[0].record)
        db = store.connect()
        assert db.execute("select stream_id from decisions where transaction_id = 'tx-00'").fetchall() == [
            (decisions[0].stream_id,)
        ]
        db.close()
    finally:
        store.close()


def test_compaction_merges_each_day_into_one_sorted_file(
    tmp_path: Path, logged: tuple[list[Logged], list[Logged]]
) -> None:
    """Many small files per day become one per day, sorted by payment time; every read answers the
    same before and after; writes after it stay idempotent and visible, and the next compaction
    merges the compacted file with them."""
    decisions, feedback = logged
    root = tmp_path / "store"
    store = ParquetStore(root)
    try:
        for i in range(30):
            store.write([decisions[i]], [f for f in feedback if f.record["transaction_id"] == f"tx-{i:02d}"])
        before = everything(store, logged)
        assert [len(names) for names in parquet_names(root).values()] == [10, 10, 10]
        assert store.compact(datetime(2026, 3, 2).date()) == 10  # one day, decisions (no feedback that day)
        assert [len(names) for names in parquet_names(root).values()] == [10, 1, 10]
        assert store.compact() == 20  # every day before today: the other two days
        received = datetime.fromisoformat(cast(FeedbackRecord, feedback[0].record)["received_at"]).date()
        assert store.compact(received) == 2  # feedback, received today: only when asked by day
        assert store.compact() == 0  # nothing left to merge
        names = parquet_names(root)
        assert all(len(files) == 1 and files[0].startswith("compact-") for files in names.values())
        assert [len(files) for files in parquet_names(root, "feedback").values()] == [1]
        assert everything(store, logged) == before
        day = root / "decisions" / "day=2026-03-01" / names["day=2026-03-01"][0]
        stamps = pq.read_table(day, columns=["timestamp"]).column("timestamp").to_pylist()
        assert stamps == sorted(stamps) and len(stamps) == 10
        assert store.write(decisions, feedback) == Written(0, 0)  # the compacted files are checked
        late = cast(Decision, {**cast(Decision, decisions[1].record), "transaction_id": "tx-late"})
        assert store.write([Logged(decisions[-1].stream_id + "1", late)], []) == Written(1, 0)
        assert store.decision("tx-late") == as_logged(late)
        assert store.compact() == 2  # the compacted file and the late one
        assert [len(files) for files in parquet_names(root).values()] == [1, 1, 1]
        assert store.decision("tx-late") == as_logged(late)
        found = store.search(DecisionQuery(limit=1000))
        assert [d for d in found if d["transaction_id"] != "tx-late"] == before[0] and len(found) == 31
    finally:
        store.close()


def test_a_compaction_killed_between_its_two_steps_shows_no_record_twice(
    tmp_path: Path, logged: tuple[list[Logged], list[Logged]]
) -> None:
    """A compaction killed (SIGKILL) after publishing the merged file and before deleting its inputs:
    reads and the notebook view see each record once; the next write removes the inputs."""
    decisions, feedback = logged
    root = tmp_path / "store"
    store = ParquetStore(root)
    for i in range(0, 30, 2):
        store.write(decisions[i : i + 2], [])
    store.write([], feedback)
    before = everything(store, logged)
    store.close()
    script = textwrap.dedent(
        f"""
        import time
        from antifraud.engine.store.parquet import ParquetStore
        publish = ParquetStore._publish

        def stop_after_publishing(tmp):
            final = publish(tmp)
            print(final, flush=True)
            time.sleep(600)  # killed here, before the inputs are deleted
            return final

        ParquetStore._publish = staticmethod(stop_after_publishing)
        ParquetStore({str(root)!r}).compact()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        merged = Path(child.stdout.readline().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert merged.name.startswith("compact-") and merged.parent.name == "day=2026-03-01"
    assert len(parquet_names(root)["day=2026-03-01"]) == 1 + 5  # the merged file and its inputs
    store = ParquetStore(root)
    try:
        assert everything(store, logged) == before
        with store.connect() as db:
            assert db.execute(
                "select count(*), count(distinct transaction_id) from decisions"
            ).fetchone() == (30, 30)
        assert store.write([], []) == Written(0, 0)  # a writer's first lock deletes the replaced inputs
        assert parquet_names(root)["day=2026-03-01"] == [merged.name]
        assert store.compact() == 10  # the two other days (feedback, received today, is one file)
        assert everything(store, logged) == before
    finally:
        store.close()


def test_two_writers_at_once_store_each_record_once(
    store: Store, logged: tuple[list[Logged], list[Logged]]
) -> None:
    """Two stores on the same URL (two sinks, or two hosts on PostgreSQL) writing overlapping batches at
    the same time: every record stored once, and the two counts add up to the records."""
    decisions, feedback = logged
    other = open_store(store.url)
    results: list[Written] = []
    try:
        writers = [
            threading.Thread(target=lambda s=s, part=part: results.append(s.write(decisions[part], feedback)))
            for s, part in ((store, slice(0, 20)), (other, slice(10, 30)))
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    finally:
        other.close()
    assert len(results) == 2
    assert sum(r.decisions for r in results) == 30 and sum(r.feedback for r in results) == 4
    assert len(store.search(DecisionQuery(limit=1000))) == 30
    assert len(store.feedback_for("tx-03")) == 3


def test_postgres_reconnects_after_the_server_drops_the_connection(
    logged: tuple[list[Logged], list[Logged]],
) -> None:
    """The server ends the store's connection (as a restart would): the next read and write work."""
    if not postgres_reachable():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (CI runs one; the Parquet backend is tested)")
    import psycopg

    decisions, _ = logged
    schema = f"store_test_{uuid.uuid4().hex[:10]}"
    # application_name is libpq's own parameter: the store passes it on, and it finds the connection
    store = open_store(f"{PG_URL}?schema={schema}&application_name={schema}")
    try:
        assert store.write(decisions[:5], []) == Written(5, 0)
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            killed = admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s",
                [schema],
            ).fetchall()
            assert killed and all(row[0] for row in killed)
        assert store.decision("tx-00") == as_logged(decisions[0].record)
        assert store.write(decisions[:10], []) == Written(5, 0)
    finally:
        store.close()
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"drop schema if exists {schema} cascade")


def test_the_retention_command_keeps_the_days_asked_for(
    tmp_path: Path, logged: tuple[list[Logged], list[Logged]]
) -> None:
    """`antifraud store retention --days N` against the Parquet store: payments older than N days go."""
    from typer.testing import CliRunner

    from antifraud.engine.cli import app

    decisions, _ = logged
    root = tmp_path / "store"
    written = open_store(str(root))
    written.write(decisions, [])
    written.close()
    # the sample payments are days old (T0): a retention far longer keeps them, one day drops them
    age_days = (datetime.now(T0.tzinfo) - T0).days
    kept = CliRunner().invoke(app, ["store", "retention", "--store", str(root), "--days", str(age_days + 30)])
    assert kept.exit_code == 0, kept.output
    dropped = CliRunner().invoke(app, ["store", "retention", "--store", str(root), "--days", "1"])
    assert dropped.exit_code == 0, dropped.output
    reopened = open_store(str(root))
    try:
        assert reopened.search(DecisionQuery(limit=1000)) == []
    finally:
        reopened.close()
    assert CliRunner().invoke(app, ["store", "retention", "--store", str(root), "--days", "0"]).exit_code != 0


# --- contributions: a flagged decision's model contributions, logged after it ------------------------

#: stream entry ids of now: the Parquet store's idempotency check reads the files written since
BASE_MS = int(time.time() * 1000)
DAY_S = 86_400  # seconds


def entry(n: int, ahead_ms: int = 0) -> str:
    """A stream entry id as Redis names one, `ahead_ms` after the tests started."""
    return f"{BASE_MS + ahead_ms}-{n}"


def flagged() -> tuple[list[Logged], list[Logged]]:
    """Six decisions over two days (tx-c0..2 on 2026-03-01, tx-c3..5 on 2026-03-02) and the
    contributions of four: tx-c0's and tx-c3's are merged; tx-c1's were computed by another model
    version; tx-c2's decision already has contributions of its own; tx-c4 and tx-c5 have none."""
    own = [{"feature": "amount", "value": 1.0, "contribution": 0.1}]
    seconds = (0, 10, 20, DAY_S, DAY_S + 10, DAY_S + 20)
    decisions = [
        Logged(
            entry(n),
            cast(
                Decision,
                logged_decision(
                    f"tx-c{n}",
                    i,
                    reasons={
                        "rules": [],
                        "shadow_rules": [],
                        "skipped_rules": [],
                        "model": own if n == 2 else [],
                    },
                ),
            ),
        )
        for n, i in enumerate(seconds)
    ]
    contributions = [
        Logged(entry(100 + n), cast(Any, logged_contributions(f"tx-c{n}", seconds[n], model_version=version)))
        for n, version in ((0, "m-1"), (1, "m-0"), (2, "m-1"), (3, "m-1"))
    ]
    return decisions, contributions


def as_read(decisions: list[Logged], contributions: list[Logged]) -> dict[str, Decision]:
    """What every read must answer for each decision: as logged, `reasons.model` filled from the
    contributions where the decision's was empty and the model versions match (tx-c0, tx-c3)."""
    found = {c.record["transaction_id"]: c.record for c in contributions}
    out: dict[str, Decision] = {}
    for item in decisions:
        decision = cast(Decision, as_logged(item.record))
        extra = found.get(decision["transaction_id"])
        if decision["transaction_id"] in ("tx-c0", "tx-c3") and extra is not None:
            decision["reasons"]["model"] = as_logged(extra)["contributions"]
        out[decision["transaction_id"]] = decision
    return out


def every_read(store: Store, txids: list[str]) -> tuple[object, ...]:
    """The decisions as `decision`, `search` (newest first) and `iter_decisions` (oldest first) read them."""
    return (
        {txid: store.decision(txid) for txid in txids},
        store.search(DecisionQuery(limit=1000)),
        [d for batch in store.iter_decisions(batch=2) for d in batch],
    )


def expected_reads(want: dict[str, Decision]) -> tuple[object, ...]:
    """`every_read`'s answer for decisions that read back as `want`."""
    oldest = sorted(
        want.values(), key=lambda d: (datetime.fromisoformat(d["timestamp"]), d["transaction_id"])
    )
    return dict(want), oldest[::-1], oldest


def test_contributions_are_written_once_and_merged_into_every_read(store: Store) -> None:
    """Contributions are stored once per transaction (the first kept) and every read of a decision
    puts them into `reasons.model`, keys in the logged order, only where its own was empty and the
    model versions match; a decision without contributions reads back exactly as logged."""
    decisions, contributions = flagged()
    other = Logged(entry(200), cast(Any, logged_contributions("tx-c0", 0, contributions=[])))
    assert store.write(decisions, [], [*contributions, other]) == Written(6, 0, 4)  # `other`: a copy
    assert store.write(decisions, [], contributions) == Written(0, 0, 0)
    assert store.write([], [], [other]) == Written(0, 0, 0)
    want = as_read(decisions, contributions)
    assert (
        want["tx-c0"]["reasons"]["model"]
        == cast(ContributionsRecord, contributions[0].record)["contributions"]
    )
    assert want["tx-c1"] == as_logged(decisions[1].record)  # another model version: not merged
    assert want["tx-c2"] == as_logged(decisions[2].record)  # its own contributions stay
    txids = sorted(want)
    assert every_read(store, txids) == expected_reads(want)
    for txid in txids:
        assert orjson.dumps(store.decision(txid)) == orjson.dumps(want[txid])  # the same key order
    by_card = store.search(DecisionQuery(card_id=cast(str, want["tx-c0"]["payment"]["card_id"])))
    assert want["tx-c0"] in by_card


def test_contributions_logged_before_their_decision_are_merged_once_it_arrives(store: Store) -> None:
    """A batch can hold contributions whose decision comes in a later batch (two sinks, a retried
    batch): they are kept, and merged once the decision is written."""
    decisions, contributions = flagged()
    assert store.write([], [], contributions) == Written(0, 0, 4)
    assert store.decision("tx-c0") is None and store.search(DecisionQuery()) == []
    assert store.write(decisions[:1], [], []) == Written(1, 0, 0)
    assert store.decision("tx-c0") == as_read(decisions, contributions)["tx-c0"]
    assert store.write(decisions, [], contributions) == Written(5, 0, 0)
    assert every_read(store, sorted(as_read(decisions, contributions))) == expected_reads(
        as_read(decisions, contributions)
    )


def test_a_decision_read_with_its_payment_time(store: Store) -> None:
    """`decision(id, timestamp)` finds the decision of that UTC day, with its contributions, whatever
    the time's offset (a naive time is UTC); with a time of another day it finds nothing."""
    decisions, contributions = flagged()
    store.write(decisions, [], contributions)
    want = as_read(decisions, contributions)
    for txid in ("tx-c0", "tx-c3", "tx-c4"):
        paid = datetime.fromisoformat(want[txid]["timestamp"])
        assert store.decision(txid, paid) == want[txid]
        assert store.decision(txid, paid.replace(tzinfo=None) + timedelta(hours=11)) == want[txid]
        assert store.decision(txid, paid.astimezone(timezone(timedelta(hours=-5)))) == want[txid]
        assert store.decision(txid, paid + timedelta(days=1)) is None
        assert store.decision(txid, paid - timedelta(days=1)) is None
    assert store.decision("tx-unknown", T0) is None


def test_a_decision_read_with_its_payment_time_reads_only_that_day(tmp_path: Path) -> None:
    """The Parquet store reads that day's partitions alone: another day's unreadable files do not
    matter (a read without the time opens them and fails), and a decision of another day with the
    same id (which only the Parquet store can hold: it checks ids within a day) is not returned."""
    decisions, contributions = flagged()
    store = ParquetStore(tmp_path / "store")
    try:
        store.write(decisions, [], contributions)
        want = as_read(decisions, contributions)
        moved = cast(Decision, {**as_logged(decisions[0].record), "timestamp": "2026-03-02T12:00:00+00:00"})
        assert store.write([Logged(entry(300), moved)], [], []) == Written(1, 0, 0)
        for kind in ("decisions", "contributions"):
            other_day = tmp_path / "store" / kind / "day=2026-03-05"
            other_day.mkdir(parents=True)
            (other_day / f"part-{time.time_ns():020d}-000000000000.parquet").write_bytes(b"not parquet")
        with pytest.raises(duckdb.Error):
            store.decision("tx-c0")  # every day's files
        assert store.decision("tx-c0", T0) == want["tx-c0"]
        assert store.decision("tx-c0", datetime.fromisoformat(moved["timestamp"])) == moved  # not merged:
        # its day holds no contributions of tx-c0
        assert store.decision("tx-c3", T0 + timedelta(days=1)) == want["tx-c3"]
    finally:
        store.close()


def test_retention_deletes_the_contributions_of_the_days_it_deletes(store: Store) -> None:
    """Contributions go with the day of their payment, as decisions do."""
    decisions, contributions = flagged()
    store.write(decisions, [], contributions)
    assert store.apply_retention(T0 + timedelta(days=1, hours=2)) == 3 + 3  # day 1: three of each
    want = as_read(decisions, contributions)
    assert store.decision("tx-c0") is None and store.decision("tx-c3") == want["tx-c3"]
    assert store.write(decisions, [], contributions) == Written(3, 0, 3)  # day 1's came back as new
    assert every_read(store, sorted(want)) == expected_reads(want)


def test_compaction_merges_contributions_and_keeps_the_first_copy(tmp_path: Path) -> None:
    """A day's contribution files become one, sorted, one per transaction (the first logged copy);
    every read answers the same before and after, and the `contributions` view holds them once."""
    decisions, contributions = flagged()
    root = tmp_path / "store"
    store = ParquetStore(root, clock_margin_ms=1_000)
    try:
        store.write(decisions, [])
        for item in contributions:
            assert store.write([], [], [item]) == Written(0, 0, 1)
        # an hour after every file: the narrowed idempotency check does not read them, so a copy is
        # stored (as a clock difference beyond the margin would); reads still give the first
        late = Logged(
            entry(400, ahead_ms=3_600_000), cast(Any, logged_contributions("tx-c0", 0, contributions=[]))
        )
        assert store.write([], [], [late]) == Written(0, 0, 1)
        want = as_read(decisions, contributions)
        before = every_read(store, sorted(want))
        assert before == expected_reads(want)
        assert [len(files) for files in parquet_names(root, "contributions").values()] == [4, 1]
        assert store.compact() == 4  # day 1's contributions; each day's decisions are one file already
        names = parquet_names(root, "contributions")
        assert [len(files) for files in names.values()] == [1, 1]
        assert names["day=2026-03-01"][0].startswith("compact-")
        assert every_read(store, sorted(want)) == before
        with store.connect() as db:
            assert db.execute("select count(*) from contributions").fetchone() == (4,)
            assert db.execute(
                "select stream_id from contributions where transaction_id = 'tx-c0'"
            ).fetchall() == [(contributions[0].stream_id,)]
    finally:
        store.close()
