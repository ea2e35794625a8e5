"""Failover drill: a Redis Cluster primary is SIGKILLed while payments flow at a steady rate.

3 primaries, each with a replica, node timeout 1 s (`LocalCluster`), AOF on; `antifraud serve` with
2 workers on `redis+cluster://...` and ANTIFRAUD_REDIS_WAIT_REPLICAS=1 (each decision and feedback
event is confirmed by a replica before it is acknowledged). The primary killed is the one holding
the decision log's slot, the worst case: the decision log and a third of the feature state go down.

Checked: every request is answered (degraded answers counted by cause), within a bound; the
service recovers by itself (the replica is promoted, the clients reload the slot map, the breaker
closes); afterwards every decision answered as logged, and every feedback event accepted, is in the
buffer or the store: none acknowledged is lost. Figures: the answers' latency before, during and after,
the time to recover, and what WAIT costs per decision (measured on the same cluster).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import numpy as np
from payloads import entry_and_record, logged_decision
from redis.crc import key_slot

from antifraud.engine.decision_entry import FeatureLists
from antifraud.engine.decisions import NOT_REPLICATED, DecisionLog, Replication
from antifraud.engine.redis_server import LocalCluster
from antifraud.engine.redis_url import connect

from .helpers import BUDGET_MS, FIGURES, Payments, Service, http_request, pct, read_log, replay

SECTION = (
    "cluster failover (3 primaries + 3 replicas, node timeout 1 s, SIGKILL of the decision log's primary)"
)
COMMAND = "pytest -q -s tests/reliability/test_cluster_failover.py"
RATE = 100.0  # payments/s, steady
SECONDS = 16.0
KILL_AT_S = 3.0
RESTART_AFTER_S = 3.0  # a supervisor restarting the killed node
T0_MS = 1_780_000_000_000


def _decision_log_port(cluster: LocalCluster) -> int:
    """The primary that holds the decisions stream's slot (and so the whole decision log)."""
    client = connect(cluster.url)
    try:
        node = client.get_node_from_key("af:decisions")  # type: ignore[attr-defined]
        return int(node.port)
    finally:
        client.close()


def _send_feedback(
    service: Service, txids: list[str], start: float, accepted: list[str], stop: threading.Event
) -> None:
    """Label earlier payments as fraud, one every 100 ms through the failover; note the accepted ones."""
    with service.http(service.scorer_key, timeout=5.0) as http:
        for i, tx in enumerate(txids):
            if stop.is_set():
                return
            time.sleep(max(0.0, start + 1.0 + i * 0.1 - time.perf_counter()))
            try:
                answer = http.post(
                    "/v1/feedback",
                    json={
                        "transaction_id": tx,
                        "kind": "label",
                        "label": "fraud",
                        "reported_at": "2026-06-01T00:00:00Z",
                    },
                )
            except httpx.HTTPError:
                continue
            if answer.status_code == 202:
                accepted.append(tx)


def test_a_primary_killed_under_load_loses_no_acknowledged_decision_or_feedback() -> None:
    cluster = LocalCluster(3, replicas=1, node_timeout_ms=1000, appendonly=True).start()
    try:
        victim = _decision_log_port(cluster)
        env = {"ANTIFRAUD_REDIS_WAIT_REPLICAS": "1", "ANTIFRAUD_REDIS_WAIT_MS": "20"}
        with Service("cluster-failover", workers=2, redis_url=cluster.url, env=env) as service:
            n = int(RATE * SECONDS)
            payments = Payments.make(n, "cfo", T0_MS, 1000 / RATE)
            requests = [http_request(service.port, service.scorer_key, "/v1/score", p) for p in payments]
            accepted: list[str] = []
            stop = threading.Event()
            start = time.perf_counter()
            killed_at: list[float] = []
            restarted_at: list[float] = []

            def kill() -> None:
                time.sleep(max(0.0, start + KILL_AT_S - time.perf_counter()))
                cluster.kill(victim)
                killed_at.append(time.perf_counter())
                # its replica, promoted, has no replica of its own until a supervisor restarts the
                # node (it rejoins as that replica): until then WAIT 1 cannot be met
                time.sleep(RESTART_AFTER_S)
                cluster.restart(victim)
                restarted_at.append(time.perf_counter())

            threads = [
                threading.Thread(target=kill, daemon=True),
                threading.Thread(
                    target=_send_feedback,
                    args=(service, [p["transaction_id"] for p in payments[:80]], start, accepted, stop),
                    daemon=True,
                ),
            ]
            for thread in threads:
                thread.start()
            run = replay(service.port, requests, RATE, connections=32, drain_s=30)
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

            answers = run.answers()
            assert Counter(int(s) for s in run.status) == {200: n}, Counter(int(s) for s in run.status)
            latency = run.latency_ms
            causes: Counter[str] = Counter(d for a in answers if a for d in a["degraded"])
            degraded_at = [run.sched[i] - start for i, a in enumerate(answers) if a and a["degraded"]]
            recovered_s = (max(degraded_at) - (killed_at[0] - start)) if degraded_at else 0.0
            # the failover proper: answers without feature state or without a decision log
            down_at = [
                run.sched[i] - start
                for i, a in enumerate(answers)
                if a and any(d != NOT_REPLICATED for d in a["degraded"])
            ]
            down_s = (max(down_at) - (killed_at[0] - start)) if down_at else 0.0
            # when they fell, by whole second after the kill (the failover, then the restart's resync)
            down_by_second = Counter(int(t - (killed_at[0] - start)) for t in down_at)
            # recovered by itself: the last 3 s of payments are answered in full
            tail = [a for i, a in enumerate(answers) if a and run.sched[i] - start > SECONDS - 3]
            errors = [line for line in service.log_text().splitlines() if "Error" in line or "error" in line]
            assert tail and all(not a["degraded"] for a in tail), (
                Counter(d for a in tail for d in a["degraded"]),
                errors[-8:],
            )

            # nothing acknowledged is lost: wait for the sink to drain, then read buffer + store
            client = service.client()
            try:
                deadline = time.monotonic() + 60
                while True:
                    view = read_log(client, service.store_url)
                    if view.buffered_decisions == 0 and view.buffered_feedback == 0:
                        break
                    assert time.monotonic() < deadline, "the sink did not drain after the failover"
                    time.sleep(0.2)
            finally:
                client.close()
            logged_answers = [
                a for a in answers if a and not any(d.startswith("decision log") for d in a["degraded"])
            ]
            lost = [a["transaction_id"] for a in logged_answers if a["transaction_id"] not in view.decisions]
            stored_feedback = Counter(f["transaction_id"] for f in view.feedback.values())
            lost_feedback = [tx for tx in accepted if stored_feedback[tx] == 0]

        before = latency[run.sched - start < KILL_AT_S]
        during = latency[
            (run.sched - start >= KILL_AT_S) & (run.sched - start < KILL_AT_S + recovered_s + 0.5)
        ]
        after = latency[run.sched - start > SECONDS - 3]
        for name, part in (("before the kill", before), ("kill to recovery", during), ("last 3 s", after)):
            if len(part):
                FIGURES.add(
                    SECTION,
                    f"latency p50 / p99 / max, {name} (ms)",
                    f"{pct(part, 50):.1f} / {pct(part, 99):.1f} / {part.max():.1f}",
                    COMMAND,
                )
        FIGURES.add(
            SECTION,
            f"payments at {RATE:.0f}/s for {SECONDS:.0f} s: answered",
            f"{len(answers):,} of {n:,}, all 200",
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "degraded answers (by cause)",
            f"{sum(1 for a in answers if a and a['degraded'])} {dict(causes)}",
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "answers without state or log, by second after the kill",
            str(dict(sorted(down_by_second.items()))),
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "from the kill to the last answer without state or log / to the last one not replicated (s)",
            f"{down_s:.2f} / {recovered_s:.2f} (node back after {restarted_at[0] - killed_at[0]:.1f} s)",
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "acknowledged decisions lost / feedback events lost",
            f"{len(lost)} of {len(logged_answers)} / {len(lost_feedback)} of {len(accepted)}",
            COMMAND,
        )
        assert not lost, lost[:10]
        assert not lost_feedback, lost_feedback
        # the budget bounds each Redis call, not the queueing behind a stalled one: on this shared
        # 2-core machine answers during the failover took up to ~200 ms (docs/scale.md)
        assert latency.max() < 1000, f"an answer took {latency.max():.0f} ms (budget {BUDGET_MS:.0f} ms)"
    finally:
        cluster.stop()


def test_what_waiting_for_a_replica_costs_per_decision() -> None:
    """The decision log's write alone, 2,000 times each way on a fresh cluster: plain, and with WAIT 1."""
    cluster = LocalCluster(3, replicas=1, appendonly=True).start()
    try:
        client = connect(cluster.url)
        figures: dict[str, np.ndarray] = {}
        for name, replication in (("no WAIT", Replication(0)), ("WAIT 1", Replication(1, 20))):
            log = DecisionLog(client, "af", replication=replication)
            taken, outcomes = [], Counter[str]()
            for i in range(2_000):
                entry, record = entry_and_record(log, logged_decision(f"{name}-{i}", i))
                t = time.perf_counter()
                result = log.put(entry, record)
                taken.append((time.perf_counter() - t) * 1000)
                outcomes[str(result)] += 1
            figures[name] = np.array(taken[200:])  # after warm-up
            assert outcomes.get("logged", 0) >= 1_900, outcomes
            if replication.replicas:
                assert outcomes.get("not replicated", 0) < 100, f"{NOT_REPLICATED}: {outcomes}"
        for name, ms in figures.items():
            FIGURES.add(
                SECTION,
                f"decision log write, {name}: p50 / p99 (ms)",
                f"{pct(ms, 50):.3f} / {pct(ms, 99):.3f}",
                COMMAND,
            )
        assert FeatureLists(client).key.startswith("{af:decisions}")
        assert key_slot(FeatureLists(client).key.encode()) == key_slot(b"af:decisions")
        client.close()
    finally:
        cluster.stop()
