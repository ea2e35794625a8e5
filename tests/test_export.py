"""`antifraud export-decisions` (engine/export.py): the decision store and its feedback as Parquet.

Decisions reach the store the way they do in production: scored through the app (or logged with
`DecisionLog`), then moved by the real sink (`Sink.run_once` until its lag is 0). Each test runs on
the Parquet store and on PostgreSQL where a server is reachable on 127.0.0.1:5432 (otherwise those
cases skip and say why).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from payloads import T0, log_decision, score_request
from payloads import logged_decision as logged
from sinks import drain
from typer.testing import CliRunner

from antifraud.engine import cli
from antifraud.engine.api import create_app
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.export import (
    DECISIONS_FILE,
    FEEDBACK_FILE,
    JOINED_FILE,
    SUMMARY_FIELDS,
    ExportError,
    export,
)
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.store import open_store
from antifraud.engine.vocabulary import ENTITY_FIELDS
from antifraud.features.spec import load_spec

PAN = "4111111111111111"


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """A small real LightGBM model on the spec's features, trained on noise in a fraction of a second."""
    names = load_spec().feature_names
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1000, len(names)))
    y = (x[:, 0] + rng.normal(size=1000) > 1.5).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=10)
    directory.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(directory / "model.txt"))
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model the app serves in these tests."""
    return tiny_model(tmp_path_factory.mktemp("export") / "tiny-model")


@pytest.fixture
def http(
    model_dir: Path, redis_client: redis.Redis, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """The scoring service, in process, on the test Redis and the test's store, without authentication."""
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", "test-secret-0123456789")
    settings = Settings(
        redis_url=None, model_dir=model_dir, rules_dir=ROOT / "rules", api_keys_file=None, store_url=store_url
    )
    with TestClient(create_app(settings, client=redis_client)) as client:
        yield client


def payment(txid: str, minute: int = 0, **overrides: Any) -> dict[str, Any]:
    """A score request body with an email (the export must carry every entity field)."""
    return score_request(txid, minute, **{"email": "someone@example.com", **overrides})


def feedback(txid: str, kind: str, minute: int, **fields: Any) -> dict[str, Any]:
    """A feedback request body."""
    reported = (T0 + timedelta(minutes=minute)).isoformat()
    return {"transaction_id": txid, "kind": kind, "reported_at": reported, **fields}


def event(txid: str, kind: str, minute: int, **fields: Any) -> dict[str, Any]:
    """A feedback event as the API stores it."""
    record = {"label": None, "outcome": None, "decline_code": None, **fields}
    return {
        **feedback(txid, kind, minute, **record),
        "received_at": (T0 + timedelta(days=1)).isoformat(),
    }


def read(directory: Path, name: str) -> list[dict[str, Any]]:
    """The rows of one exported file."""
    return pq.read_table(directory / name).to_pylist()


def strings(table: pa.Table) -> Iterator[str]:
    """Every text value of a table, list elements included, and its column names."""
    yield from table.column_names
    for row in table.to_pylist():
        for value in row.values():
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    yield str(item)


def test_export_writes_decisions_feedback_and_their_join(
    http: TestClient, redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """Through the CLI: one row per decision with its features, every event, and the summary join."""
    for body in (
        payment("tx-1"),
        payment("tx-2", 1, card_id="card_b", ip="203.0.113.7"),  # deny-listed IP: a block rule
        payment("tx-3", 2, card_id="card_c", email=None),
        payment("tx-1"),  # a retry: still one decision
    ):
        assert http.post("/v1/score", json=body).status_code == 200
    for body in (
        feedback("tx-1", "outcome", 3, outcome="declined", decline_code="05"),
        feedback("tx-1", "label", 60, label="legitimate"),
        feedback("tx-1", "label", 50, label="chargeback"),  # received later, reported earlier
        feedback("tx-2", "refund", 70),
        feedback("tx-2", "cancel", 71),
        feedback("tx-2", "refund", 72),
        feedback("nobody", "label", 80, label="fraud"),
    ):
        assert http.post("/v1/feedback", json=body).status_code == 202

    drain(redis_client, store_url)
    out = tmp_path / "export"
    result = CliRunner().invoke(cli.app, ["export-decisions", "--out", str(out), "--store", store_url])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([DECISIONS_FILE, FEEDBACK_FILE, JOINED_FILE])

    decisions = read(out, DECISIONS_FILE)
    assert [d["transaction_id"] for d in decisions] == ["tx-1", "tx-2", "tx-3"]
    for row in decisions:
        stored = http.get(f"/v1/decisions/{row['transaction_id']}").json()
        for name in (
            "verdict",
            "score",
            "risk_score",
            "model_version",
            "rules_version",
            "amount",
            "currency",
        ):
            assert row[name] == stored[name], name
        assert row["timestamp"] == datetime.fromisoformat(stored["timestamp"])
        assert row["decided_at"] == datetime.fromisoformat(stored["decided_at"])
        assert row["degraded"] is None and row["other_features"] is None
        assert row["total_ms"] == stored["timings"]["total_ms"]
        assert row["rules_fired"] == [r["rule"] for r in stored["reasons"]["rules"]]
        for name in ENTITY_FIELDS:
            assert row[name] == stored["payment"].get(name), name
        features = {n: row[n] for n in stored["features"] if n != "amount"}
        assert features == {n: v for n, v in stored["features"].items() if n != "amount"}
        assert row["feature_amount"] == stored["features"]["amount"]
    assert decisions[1]["rules_fired"] == ["deny_listed_ip"] and decisions[1]["verdict"] == "block"
    assert decisions[1]["rule_reasons"] == ["DENY_LIST"]
    assert decisions[2]["email"] is None

    events = read(out, FEEDBACK_FILE)
    assert [(e["transaction_id"], e["kind"]) for e in events] == [
        ("tx-1", "outcome"),
        ("tx-1", "label"),
        ("tx-1", "label"),
        ("tx-2", "refund"),
        ("tx-2", "cancel"),
        ("tx-2", "refund"),
        ("nobody", "label"),
    ]
    assert events[0]["decline_code"] == "05" and events[0]["reported_at"] == T0 + timedelta(minutes=3)
    assert all(isinstance(e["received_at"], datetime) for e in events)

    joined = read(out, JOINED_FILE)
    assert [{k: r[k] for k in decisions[0]} for r in joined] == decisions
    summary = {r["transaction_id"]: {f.name: r[f.name] for f in SUMMARY_FIELDS} for r in joined}
    assert summary["tx-1"] == {
        "label": "legitimate",  # reported last, so it stands
        "is_fraud": False,
        "label_reported_at": T0 + timedelta(minutes=60),
        "bank_outcome": "declined",
        "decline_code": "05",
        "outcome_reported_at": T0 + timedelta(minutes=3),
        "refunded": False,
        "refunded_at": None,
        "cancelled": False,
        "cancelled_at": None,
        "feedback_events": 3,
    }
    assert summary["tx-2"]["refunded"] and summary["tx-2"]["refunded_at"] == T0 + timedelta(minutes=70)
    assert summary["tx-2"]["cancelled"] and summary["tx-2"]["label"] is None
    assert summary["tx-3"] == {f.name: None for f in SUMMARY_FIELDS} | {
        "refunded": False,
        "cancelled": False,
        "feedback_events": 0,
    }


def test_a_raw_pan_is_in_no_exported_file(
    http: TestClient, redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """A payment sent with a raw `pan`: the export holds its token, never the number or its prefix."""
    body = payment("tx-pan", pan=PAN, card_id=None)
    assert http.post("/v1/score", json=body).status_code == 200
    label = feedback("tx-pan", "label", 5, label="fraud")
    assert http.post("/v1/feedback", json=label).status_code == 202

    drain(redis_client, store_url)
    result = export(store_url, tmp_path)
    assert result.decisions == 1 and result.feedback == 1 and result.decisions_with_feedback == 1
    card = read(tmp_path, DECISIONS_FILE)[0]["card_id"]
    assert card.startswith("tok_")
    for name in (DECISIONS_FILE, FEEDBACK_FILE, JOINED_FILE):
        table = pq.read_table(tmp_path / name)
        assert table.num_rows == 1
        for text in strings(table):
            assert PAN not in text and PAN[:12] not in text, (name, text)
        assert PAN.encode() not in (tmp_path / name).read_bytes()


def test_the_latest_label_and_outcome_win_by_reported_at(
    redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """Events arriving out of order are summarized by when they were reported, refunds by the first."""
    store = DecisionLog(redis_client)
    log_decision(store, logged("a", 1))
    log_decision(store, logged("b", 2))
    for e in (
        event("a", "label", 30, label="chargeback"),
        event("a", "label", 10, label="legitimate"),  # older news, received later
        event("a", "outcome", 2, outcome="declined", decline_code="51"),
        event("a", "outcome", 4, outcome="approved"),  # a later approval has no decline code
        event("b", "cancel", 9),
        event("b", "cancel", 7),
        event("b", "label", 20, label="fraud"),
        event("b", "label", 20, label="legitimate"),  # same time: the one received last
    ):
        store.add_feedback(e)

    drain(redis_client, store_url)
    result = export(store_url, tmp_path)
    assert (result.decisions, result.feedback, result.decisions_with_feedback, result.unmatched_feedback) == (
        2,
        8,
        2,
        0,
    )
    a, b = read(tmp_path, JOINED_FILE)
    assert (a["label"], a["is_fraud"], a["label_reported_at"]) == (
        "chargeback",
        True,
        T0 + timedelta(minutes=30),
    )
    assert (a["bank_outcome"], a["decline_code"]) == ("approved", None)
    assert a["outcome_reported_at"] == T0 + timedelta(minutes=4)
    assert (b["cancelled"], b["cancelled_at"], b["refunded"]) == (True, T0 + timedelta(minutes=7), False)
    assert (b["label"], b["is_fraud"], b["feedback_events"]) == ("legitimate", False, 4)


def test_partitions_and_batches_do_not_change_the_output(
    redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """A spilled, many-partition join in tiny batches writes the same rows, in log order."""
    store = DecisionLog(redis_client)
    ids = [f"tx-{i:04d}" for i in range(300)]
    for i, txid in enumerate(ids):
        log_decision(store, logged(txid, i))
    for i, txid in enumerate(ids[::3]):
        store.add_feedback(event(txid, "label", i, label=("fraud", "legitimate")[i % 2]))
        if i % 4 == 0:
            store.add_feedback(event(txid, "refund", i + 1))
    store.add_feedback(event("unknown", "cancel", 1))

    drain(redis_client, store_url)
    whole = export(store_url, tmp_path / "whole")
    spilled = export(store_url, tmp_path / "spilled", batch=7, partition_rows=40, row_group_rows=25)
    assert whole.decisions == spilled.decisions == 300 and whole.unmatched_feedback == 1
    assert (whole.feedback, whole.decisions_with_feedback) == (
        spilled.feedback,
        spilled.decisions_with_feedback,
    )
    for name in (DECISIONS_FILE, FEEDBACK_FILE, JOINED_FILE):
        one, many = (pq.read_table(tmp_path / d / name) for d in ("whole", "spilled"))
        assert one.replace_schema_metadata().equals(many.replace_schema_metadata()), name
    assert pq.ParquetFile(tmp_path / "spilled" / JOINED_FILE).metadata.num_row_groups > 1
    joined = read(tmp_path / "spilled", JOINED_FILE)
    assert [r["transaction_id"] for r in joined] == ids
    labelled = {r["transaction_id"]: r["label"] for r in joined if r["label"] is not None}
    assert labelled == {txid: ("fraud", "legitimate")[i % 2] for i, txid in enumerate(ids[::3])}
    assert sum(r["refunded"] for r in joined) == len(ids[::3][::4])


def test_features_that_appear_later_go_to_other_features(
    redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """The feature columns come from the first batch; later new features are kept as JSON."""
    store = DecisionLog(redis_client)
    log_decision(store, logged("a", 1, {"f1": 1.0, "f2": None}))
    log_decision(store, logged("b", 2, {"f1": 2.0, "f2": 3.0}))
    log_decision(store, logged("c", 3, {"f1": 4.0, "f3": 5.0}))  # the spec changed
    drain(redis_client, store_url)
    export(store_url, tmp_path, batch=2)
    rows = read(tmp_path, DECISIONS_FILE)
    assert [(r["f1"], r["f2"]) for r in rows] == [(1.0, None), (2.0, 3.0), (4.0, None)]
    assert [r["other_features"] for r in rows] == [None, None, json.dumps({"f3": 5.0})]


def test_an_empty_log_gives_empty_files_with_their_columns(
    redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """Nothing stored yet (the store not even created): three readable files with no rows."""
    result = export(store_url, tmp_path / "out")
    assert (result.decisions, result.feedback) == (0, 0)
    for name in (DECISIONS_FILE, FEEDBACK_FILE, JOINED_FILE):
        assert pq.read_table(tmp_path / "out" / name).num_rows == 0
    assert "label" in pq.read_schema(tmp_path / "out" / JOINED_FILE).names


def test_decisions_come_in_payment_time_order_then_transaction_id(
    redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """Logged out of order, over several days: exported by payment time, ties by transaction id;
    feedback in the order it was received."""
    store = DecisionLog(redis_client)
    seconds = [3 * 86_400 + 5, 5, 86_400, 5, 2 * 86_400 - 1, 0]  # three UTC days, a tie at 5 s
    ids = ["z", "b", "y", "a", "x", "c"]
    for i, (txid, second) in enumerate(zip(ids, seconds, strict=True)):
        log_decision(store, logged(txid, i, timestamp=(T0 + timedelta(seconds=second)).isoformat()))
    for txid in ("y", "a", "z"):
        store.add_feedback(event(txid, "label", 1, label="fraud"))
    drain(redis_client, store_url)

    result = export(store_url, tmp_path, batch=2)
    assert (result.decisions, result.feedback) == (6, 3)
    assert [r["transaction_id"] for r in read(tmp_path, DECISIONS_FILE)] == ["c", "a", "b", "y", "x", "z"]
    assert [r["transaction_id"] for r in read(tmp_path, FEEDBACK_FILE)] == ["y", "a", "z"]
    assert [r["transaction_id"] for r in read(tmp_path, JOINED_FILE)] == ["c", "a", "b", "y", "x", "z"]


def test_start_and_end_select_payments_by_time(
    redis_client: redis.Redis, store_url: str, tmp_path: Path
) -> None:
    """[start, end) by payment time, through the CLI's dates (UTC days, the end excluded) and the
    function's times; feedback from a day before the start on, with no end."""
    store = DecisionLog(redis_client)
    day0 = datetime(2026, 3, 1, tzinfo=UTC)
    for d in range(4):  # 2026-03-01 .. 03-04, two payments a day
        for h in (0, 23):
            txid = f"d{d}h{h}"
            moment = day0 + timedelta(days=d, hours=h)
            log_decision(store, logged(txid, d * 2 + h, timestamp=moment.isoformat()))
            received = (day0 + timedelta(days=d + 1, hours=1)).isoformat()
            store.add_feedback({**event(txid, "label", 0, label="fraud"), "received_at": received})
    drain(redis_client, store_url)

    out = tmp_path / "cli"
    result = CliRunner().invoke(
        cli.app,
        [
            "export-decisions",
            "--out",
            str(out),
            "--store",
            store_url,
            "--start",
            "2026-03-02",
            "--end",
            "2026-03-04",
        ],
    )
    assert result.exit_code == 0, result.output
    assert [r["transaction_id"] for r in read(out, DECISIONS_FILE)] == ["d1h0", "d1h23", "d2h0", "d2h23"]
    # received from 03-01 on (a day before the start): all of them, the later ones included
    assert len(read(out, FEEDBACK_FILE)) == 8
    joined = read(out, JOINED_FILE)
    assert [r["label"] for r in joined] == ["fraud"] * 4
    metadata = pq.read_schema(out / DECISIONS_FILE).metadata
    assert metadata[b"antifraud.start"] == b"2026-03-02T00:00:00+00:00"
    assert metadata[b"antifraud.end"] == b"2026-03-04T00:00:00+00:00"

    within = export(
        store_url, tmp_path / "hours", day0 + timedelta(hours=23), day0 + timedelta(days=2, hours=1)
    )
    assert [r["transaction_id"] for r in read(tmp_path / "hours", DECISIONS_FILE)] == [
        "d0h23",
        "d1h0",
        "d1h23",
        "d2h0",
    ]
    assert (within.decisions_with_feedback, within.unmatched_feedback) == (4, 4)  # d3's, and d0h0's
    later = export(store_url, tmp_path / "later", start=day0 + timedelta(days=3))
    assert [r["transaction_id"] for r in read(tmp_path / "later", DECISIONS_FILE)] == ["d3h0", "d3h23"]
    assert later.feedback == 6  # received from 03-03 00:00 on: about d1, d2 and d3
    with pytest.raises(ExportError, match="not before the end"):
        export(store_url, tmp_path / "empty", day0, day0)


def test_the_store_gives_bounded_batches_in_order(redis_client: redis.Redis, store_url: str) -> None:
    """`iter_decisions` and `iter_feedback`: lists of at most `batch`, in order, each record once, and
    the Python memory of the iteration is the batch's, not the store's."""
    store = DecisionLog(redis_client)
    n = 1500
    for i in range(n):  # newest first, over two days
        moment = T0 + timedelta(minutes=2 * (n - i))
        log_decision(store, logged(f"tx-{i:05d}", i, timestamp=moment.isoformat()))
        if i % 2 == 0:
            store.add_feedback(event(f"tx-{i:05d}", "refund", i))
    drain(redis_client, store_url)

    opened = open_store(store_url)
    try:
        batches = list(opened.iter_decisions(batch=64))
        assert max(map(len, batches)) == 64 and sum(map(len, batches)) == n
        times = [(d["timestamp"], d["transaction_id"]) for b in batches for d in b]
        assert times == sorted(times) and len(set(times)) == n
        events = [e for b in opened.iter_feedback(batch=100) for e in b]
        assert [e["transaction_id"] for e in events] == [f"tx-{i:05d}" for i in range(0, n, 2)]

        def peak(batch: int) -> int:
            tracemalloc.start()
            try:
                for chunk in opened.iter_decisions(batch=batch):
                    del chunk
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        small, whole = peak(50), peak(n)
        assert small * 5 < whole, (small, whole)
    finally:
        opened.close()


def test_an_unreachable_store_is_an_export_error_and_leaves_no_file(tmp_path: Path) -> None:
    """No PostgreSQL behind the URL: a clear error, the password kept out of it, and no file."""
    with pytest.raises(ExportError, match="cannot read the decisions") as caught:
        export("postgresql://user:hunter2@127.0.0.1:1/none", tmp_path / "out")
    assert "hunter2" not in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []
