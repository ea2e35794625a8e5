"""Durability: kill -9 redis-server right after a burst of acknowledged payments, restart it on the same
directory, and find every acknowledged decision, feedback event and counter again.

Redis runs with `appendonly yes` and `appendfsync always` (the production recommendation, see
docs/reliability.md): every write is in the AOF, fsynced, before Redis answers it. The same burst is
also run with `appendfsync everysec` to measure what `always` costs, and a control run without
persistence shows that the check can fail: there, kill -9 loses everything.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import redis

from antifraud.engine.decisions import DecisionStore
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
    redis_stalls,
    replay,
    stored_decisions,
    stream_entries,
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
            stored = stored_decisions(client, list(acked))
            lost = [t for t in acked if stored[t] is None]
            changed = [
                t
                for t, a in acked.items()
                if stored[t] is not None
                and (stored[t]["verdict"], stored[t]["score"], stored[t]["model_version"])
                != (a["verdict"], a["score"], a["model_version"])
            ]
            stream = Counter(d["transaction_id"] for d in stream_entries(client, "af:decisions", "d"))
            fb_stream = Counter(
                (e["transaction_id"], e["kind"]) for e in stream_entries(client, "af:feedback", "e")
            )
            fb_lost = [e for e in fb_acked if (e["transaction_id"], e["kind"]) not in fb_stream]
            after = _entity_state(client, entities)
        finally:
            client.close()
        counters_differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        FIGURES.add(
            SECTION,
            "after restart: acknowledged decisions lost / changed; missing from the decision stream",
            f"{len(lost)} / {len(changed)}; {sum(1 for t in acked if t not in stream)}",
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "after restart: feedback events lost; counter keys compared (20 cards, 5 merchants) / differing",
            f"{len(fb_lost)}; {len(before):,} / {len(counters_differ)}",
            COMMAND,
        )
        assert not lost and not changed, (lost[:5], changed[:5])
        assert all(stream[t] == 1 for t in acked)
        assert not fb_lost, fb_lost[:5]
        assert len(before) > 50 and not counters_differ, counters_differ[:5]


def test_control_without_persistence_kill_9_loses_everything() -> None:
    """The same kill -9 on a redis-server without AOF (EmbeddedRedis's default, `--save ""`)."""
    with EmbeddedRedis(appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        store = DecisionStore(client)
        for i in range(1000):
            store.put({"transaction_id": f"ctl-{i}", "verdict": "allow", "payload": json.dumps([i])})
        assert server.process is not None
        server.process.kill()
        server.process.wait(timeout=10)
        server.start()
        found = sum(1 for i in range(1000) if store.get(f"ctl-{i}") is not None)
        client.close()
    FIGURES.add(SECTION, "control, no AOF: decisions surviving kill -9", f"{found} of 1,000", COMMAND)
    assert found == 0


def test_cost_of_appendfsync_always() -> None:
    """What `appendfsync always` costs per write on this machine: 2,000 decision-log writes (a real
    decision's size) one after the other under each policy, and the disk's own fsync for context."""
    import os
    import tempfile

    decision = {
        "transaction_id": "x",
        "features": {f"f{i}": i * 1.000001 for i in range(87)},
        "pad": "x" * 800,
    }
    figures = {}
    with EmbeddedRedis(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        store = DecisionStore(client)
        for policy in ("no", "everysec", "always"):
            client.config_set("appendfsync", policy)
            times = []
            for i in range(2000):
                started = time.perf_counter()
                store.put({**decision, "transaction_id": f"{policy}-{i}"})
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
    FIGURES.add(SECTION, "decision-log write (SET NX + XADD script) by appendfsync policy", figures, COMMAND)
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
        real_put = DecisionStore.put
        calls = {"n": 0}

        def failing_put(self: DecisionStore, decision: dict[str, Any]) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise redis.ConnectionError("Connection closed by server.")
            return real_put(self, decision)

        monkeypatch.setattr(DecisionStore, "put", failing_put)
        payment = Payments.make(1, "unlogged", T0_MS, 1)[0]
        with TestClient(app) as http:
            answer = http.post("/v1/score", json=payment).json()
        logged = DecisionStore(client).get(payment["transaction_id"])
        client.close()
    FIGURES.add(
        SECTION,
        "decision-log write failing after the features call: answer degraded / decision logged",
        f"{answer['degraded']} / {logged is not None}",
        COMMAND,
    )
    assert answer["degraded"] or logged is not None
