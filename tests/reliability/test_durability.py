"""Durability: kill -9 redis-server right after a burst of acknowledged payments, restart it on the same
directory, and find every acknowledged decision, feedback event and counter again.

Redis runs with `appendonly yes` and `appendfsync always` (the production recommendation, see
docs/reliability.md): every write is in the AOF, fsynced, before Redis answers it. The same burst is
also run with `appendfsync everysec` to measure what `always` costs, and a control run without
persistence shows that the check can fail: there, kill -9 loses everything.

The service's decision sink runs (`serve` starts it) and keeps moving the buffer streams into the
stack's Parquet store, before and after the kill: "logged" means in the buffer or in the store, and
every acknowledged decision and feedback event must be there exactly once (one stream entry, one
store row), after Redis restarted and the sink drained what was left.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, cast

import pytest
import redis

from antifraud.engine.decision_record import DecisionEntry, IdempotencyRecord
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.pipeline import idempotency_record
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.features.online import entity_prefix

from .helpers import (
    FIGURES,
    Payments,
    Run,
    Service,
    http_request,
    iso_ms,
    ms_of,
    pct,
    read_log,
    redis_stalls,
    replay,
    wait_drained,
)

N = 3000
RATE = 300.0
T0_MS = ms_of("2026-03-12T12:00:00Z")
SECTION = "3. durability"
COMMAND = ".venv/bin/pytest -q -s tests/reliability/test_durability.py"


def _burst(service: Service, tag: str) -> tuple[list[dict[str, Any]], Run, list[dict[str, Any]], Run]:
    """N payments at RATE/s, then a feedback event about every fifth one at 200/s."""
    payments = Payments.make(N, tag, T0_MS, 20)
    run = replay(
        service.port,
        [http_request(service.port, service.scorer_key, "/v1/score", p) for p in payments],
        RATE,
        connections=32,
    )
    events = [
        {
            "transaction_id": p["transaction_id"],
            "kind": "label" if i % 2 else "refund",
            **({"label": "fraud"} if i % 2 else {}),
            "reported_at": iso_ms(ms_of(p["timestamp"]) + 60_000),
        }
        for i, p in enumerate(payments[::5])
    ]
    requests = [http_request(service.port, service.scorer_key, "/v1/feedback", e) for e in events]
    feedback = replay(service.port, requests, 200.0, connections=16)
    for _ in range(5):  # a 503 (a Redis call timed out) is retried, as the client must; bounded
        pending = [i for i, s in enumerate(feedback.status) if s != 202]
        if not pending:
            break
        time.sleep(0.5)
        again = replay(service.port, [requests[i] for i in pending], 100.0, connections=4)
        for i, status, done in zip(pending, again.status, again.done, strict=True):
            feedback.status[i], feedback.done[i] = status, done
    return payments, run, events, feedback


def _stages(run: Run) -> str:
    degraded = sum(1 for a in run.answers() if a is None or a["degraded"])
    answers = [a for a in run.answers() if a is not None and not a["degraded"]]
    features = [a["timings"]["features_ms"] for a in answers]
    log = [a["timings"]["log_ms"] for a in answers]
    latency = run.latency_ms
    return (
        f"latency p50 {pct(latency, 50):.2f} / p99 {pct(latency, 99):.2f} ms; "
        f"features (EVALSHA) p50 {pct(features, 50):.2f} / p99 {pct(features, 99):.2f} ms; "
        f"decision log write p50 {pct(log, 50):.2f} / p99 {pct(log, 99):.2f} ms; degraded {degraded}"
    )


def _entity_state(client: redis.Redis, entities: list[tuple[str, str]]) -> dict[str, Any]:
    """Every counter key of each (entity, key) with its whole value, found by its entity's prefix
    (whatever the script's key layout: event log, state, profile, feedback), read pipelined."""
    prefixes = tuple(entity_prefix("af", entity, key) + ":" for entity, key in entities)
    keys = (raw.decode() for raw in client.scan_iter(match="af:{*", count=1000))
    names = sorted(name for name in keys if name.startswith(prefixes))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.type(name)
    kinds = [k.decode() for k in pipe.execute()]
    present = [(n, k) for n, k in zip(names, kinds, strict=True) if k != "none"]
    pipe = client.pipeline(transaction=False)
    for name, kind in present:
        if kind == "zset":
            pipe.zrange(name, 0, -1, withscores=True)
        elif kind == "hash":
            pipe.hgetall(name)
        else:
            pipe.dump(name)
        pipe.pttl(name)
    values = pipe.execute()
    return {
        name: (kind, sorted(value.items()) if isinstance(value, dict) else value, ttl > 0)
        for (name, kind), value, ttl in zip(present, values[::2], values[1::2], strict=True)
    }


@pytest.mark.timeout(600)
def test_kill_9_after_an_acknowledged_burst_loses_nothing() -> None:
    with Service("everysec", workers=2, tcp=False, appendonly=True) as service:
        _, run, _, _ = _burst(service, "dur-e")
        FIGURES.add(SECTION, "appendfsync everysec: 3,000 payments at 300/s", _stages(run), COMMAND)
        with service.client() as client:
            stalls = [(name, ms) for name, _, ms in redis_stalls(client, service.latency_offset)]
        FIGURES.add(SECTION, "appendfsync everysec: Redis stalls >= 10 ms (event, ms)", stalls, COMMAND)

    with Service("always", workers=2, tcp=False, appendonly=True, fsync_always=True) as service:
        payments, run, events, feedback = _burst(service, "dur-a")
        last_ack = float(max(run.done.max(), feedback.done.max()))
        client = service.client()
        cards = sorted({p["card_id"] for p in payments})[:20]
        merchants = sorted({p["merchant_id"] for p in payments})[:5]
        entities = [("card", c) for c in cards] + [("merchant", m) for m in merchants]
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        stalls = [(name, ms) for name, _, ms in redis_stalls(client, service.latency_offset)]
        before = _entity_state(client, entities)
        service.kill_redis()
        killed_after_ms = (time.perf_counter() - last_ack) * 1000
        client.close()
        FIGURES.add(SECTION, "appendfsync always: Redis stalls >= 10 ms (event, ms)", stalls, COMMAND)
        FIGURES.add(SECTION, "appendfsync always: 3,000 payments at 300/s", _stages(run), COMMAND)

        answers = run.answers()
        acked = {
            p["transaction_id"]: a for p, a in zip(payments, answers, strict=True) if a and not a["degraded"]
        }
        fb_acked = [e for e, s in zip(events, feedback.status, strict=True) if s == 202]
        FIGURES.add(
            SECTION,
            "acknowledged before kill -9: full decisions / feedback events (202)",
            f"{len(acked):,} of {N:,} / {len(fb_acked):,} of {len(events):,}",
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "kill -9 this long after the last acknowledgement (ms)",
            round(killed_after_ms, 1),
            COMMAND,
        )
        assert len(acked) >= N // 3 and len(fb_acked) == len(events)

        started = time.perf_counter()
        service.start_redis()
        FIGURES.add(
            SECTION,
            "redis-server restart on the same directory (AOF load) (s)",
            round(time.perf_counter() - started, 2),
            COMMAND,
        )
        client = service.client()
        try:
            after = _entity_state(client, entities)  # before the sink trims anything more
            # the sink lost Redis for a moment: it retries, then writes what is left to the store
            drained_s = wait_drained(client, 90)
            logged = read_log(client, service.store_url)
        finally:
            client.close()
        stored = {t: logged.decision(t) for t in acked}
        lost = [t for t in acked if stored[t] is None]
        changed = [
            t
            for t, a in acked.items()
            if (d := stored[t]) is not None
            and (d["verdict"], d["score"], d["model_version"])
            != (a["verdict"], a["score"], a["model_version"])
        ]
        not_once = [t for t in acked if logged.times_logged(t) != 1 or logged.store_decision_rows[t] != 1]
        fb_logged = Counter((e["transaction_id"], e["kind"]) for e in logged.feedback.values())
        fb_lost = [e for e in fb_acked if (e["transaction_id"], e["kind"]) not in fb_logged]
        fb_twice = sum(1 for c in logged.store_feedback_rows.values() if c > 1)
        FIGURES.add(
            SECTION,
            "after restart: sink drain (s); decisions in the store / still buffered",
            f"{drained_s:.1f}; {sum(logged.store_decision_rows.values()):,} / {logged.buffered_decisions}",
            COMMAND,
        )
        counters_differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        FIGURES.add(
            SECTION,
            "after restart: acknowledged decisions lost / changed; not in the store exactly once",
            f"{len(lost)} / {len(changed)}; {len(not_once)}",
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "after restart: feedback events lost / stored twice; counter keys compared (20 cards, "
            "5 merchants) / differing",
            f"{len(fb_lost)} / {fb_twice}; {len(before):,} / {len(counters_differ)}",
            COMMAND,
        )
        assert not lost and not changed, (lost[:5], changed[:5])
        assert not not_once, [
            (t, logged.times_logged(t), logged.store_decision_rows[t]) for t in not_once[:5]
        ]
        assert not fb_lost and not fb_twice, fb_lost[:5]
        # at least one key per entity compared, whatever the state's layout (a card: its state and profile)
        assert len(before) >= len(entities) and not counters_differ, counters_differ[:5]


def test_control_without_persistence_kill_9_loses_everything() -> None:
    """The same kill -9 on a redis-server without AOF (EmbeddedRedis's default, `--save ""`)."""
    with EmbeddedRedis(appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        log = DecisionLog(client)
        for i in range(1000):
            decision = _decision(log, f"ctl-{i}", i)
            assert log.put(decision, idempotency_record(decision)) == "logged"
        assert server.process is not None
        server.process.kill()
        server.process.wait(timeout=10)
        server.start()
        found = sum(1 for i in range(1000) if log.record(f"ctl-{i}") is not None)
        found += int(cast(int, client.xlen(log.decisions_stream)))
        client.close()
    FIGURES.add(SECTION, "control, no AOF: decisions surviving kill -9", f"{found} of 1,000", COMMAND)
    assert found == 0


def test_cost_of_appendfsync_always() -> None:
    """What `appendfsync always` costs per write on this machine: 2,000 decision-log writes (a real
    decision's size) one after the other under each policy, and the disk's own fsync for context."""
    import os
    import tempfile

    figures = {}
    with EmbeddedRedis(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        log = DecisionLog(client)
        for policy in ("no", "everysec", "always"):
            client.config_set("appendfsync", policy)
            times = []
            for i in range(2000):
                decision = _decision(log, f"{policy}-{i}", i)
                record = idempotency_record(decision)
                started = time.perf_counter()
                log.put(decision, record)
                times.append((time.perf_counter() - started) * 1e6)
            figures[policy] = f"p50 {pct(times, 50):.0f} / p99 {pct(times, 99):.0f} us"
        client.close()
    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR")) as handle:
        syncs = []
        for _ in range(300):
            handle.write(b"x" * 4096)
            handle.flush()
            started = time.perf_counter()
            os.fsync(handle.fileno())
            syncs.append((time.perf_counter() - started) * 1e6)
    FIGURES.add(
        SECTION, "decision-log write (record SET + XADD, one script) by appendfsync policy", figures, COMMAND
    )
    FIGURES.add(
        SECTION,
        "this disk's fsync of 4 KB: p50 / p99 (us)",
        f"{pct(syncs, 50):.0f} / {pct(syncs, 99):.0f}",
        COMMAND,
    )


def test_an_answer_whose_decision_was_not_logged_says_so(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails exactly between the two calls of a payment (simulated: the decision-log write
    raises ConnectionError once); the fault test sees this window only by chance."""
    from fastapi.testclient import TestClient

    from antifraud.engine.api import create_app
    from antifraud.engine.settings import ROOT, Settings

    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        app = create_app(
            Settings(redis_url=None, model_dir=ROOT / "models" / "default", api_keys_file=None), client=client
        )
        real_put = DecisionLog.put
        calls = {"n": 0}

        def failing_put(self: DecisionLog, decision: DecisionEntry, record: IdempotencyRecord) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise redis.ConnectionError("Connection closed by server.")
            return real_put(self, decision, record)

        monkeypatch.setattr(DecisionLog, "put", failing_put)
        payment = Payments.make(1, "unlogged", T0_MS, 1)[0]
        with TestClient(app) as http:
            answer = http.post("/v1/score", json=payment).json()
        # no sink runs here: a logged decision would still be in the buffer
        log = DecisionLog(client)
        record = log.record(payment["transaction_id"])
        stream_id = record["stream_id"] if record is not None else None
        logged = stream_id is not None and log.buffered(stream_id) is not None
        client.close()
    FIGURES.add(
        SECTION,
        "decision-log write failing after the features call: answer degraded / decision logged",
        f"{answer['degraded']} / {logged}",
        COMMAND,
    )
    assert answer["degraded"] or logged is not None


def _decision(log: DecisionLog, txid: str, i: int) -> DecisionEntry:
    """A decision of a real decision's size (87 features), as the scoring path logs it, for the log's
    own tests."""
    return {
        "transaction_id": txid,
        "verdict": "allow",
        "score": 0.01,
        "risk_score": 1,
        "reasons": {"rules": [], "shadow_rules": [], "skipped_rules": [], "model": []},
        "model_version": "live-test",
        "rules_version": "rules-test",
        "degraded": [],
        "timings": {"features_ms": 0.5, "model_ms": 0.2, "rules_ms": 0.1, "total_ms": 1.0},
        "test": False,
        "timestamp": iso_ms(T0_MS + i),
        "decided_at": iso_ms(T0_MS + i),
        "payment": {"card_id": f"card_{i % 97}", "merchant_id": f"m_{i % 13}", "channel": "ecom"},
        "amount": 10.0 + i,
        "currency": "EUR",
        "feature_list": log.feature_list([f"f{k}" for k in range(87)]),
        "features": [k * 1.000001 for k in range(87)],
    }
