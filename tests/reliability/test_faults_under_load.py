"""Faults under load: Redis stopped and paused, model swapped, rules reloaded 50 times, at 200 payments/s.

`antifraud serve --workers 2` runs on a real redis-server over TCP (AOF on, default `everysec`), and
payments are replayed at a fixed rate for 70 s (open loop: a slow answer does not slow the sender).
Meanwhile a fault thread, on a fixed schedule:

    t = 10 s   redis-server stopped (SIGTERM), started again at t = 20 s on the same directory and port
    t = 26 s   redis-server paused (SIGSTOP) for 2 s, then SIGCONT
    t = 33 s   a second model copied over the live model directory, then POST /admin/reload-model
    t = 3..52  the rules reloaded 50 times: POST /admin/reload-rules, in-place and atomic file edits,
               two broken edits (refused, the previous rules keep serving), a final valid edit

and a feedback thread sends 10 events/s, retrying every 503 (allowed only while Redis is down).

Asserted (wide margins: 2 shared cores):
- every payment answered HTTP 200 (no 5xx, nothing unanswered);
- while Redis is healthy (model swap and rule reloads included): latency from the due time p99 within
  BUDGET + 1 s and max within BUDGET + 3 s, the scorer's own time p99 within BUDGET + 250 ms; the
  same for every payment, faults included (no answer computes TreeSHAP contributions);
- degraded answers come from the Redis faults (or from bounded noise episodes, see
  test_degraded_only_during_redis_faults_and_recovered_after) and stop within 2 s of each fault;
- after the swaps, every answer carries the new model version and the final rules version;
- counters consistent after recovery (see test_counters_are_consistent_after_recovery);
- every feedback event answered 202 is logged (the feedback buffer stream or the store the service's
  sink moves it to, read after the sink drained it), and none twice;
- every non-degraded answer outside the fault windows is in the decision log (buffer or store), and
  the store holds no transaction twice;
- antifraud_degraded_total counts exactly the degraded answers.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .helpers import (
    BUDGET_MS,
    FIGURES,
    MachineLoad,
    Payments,
    Run,
    Service,
    entity_members,
    http_request,
    metric_value,
    model_version,
    ms_of,
    pct,
    read_log,
    redis_stalls,
    replay,
    rules_version,
    wait_drained,
)

RATE = 200.0
DURATION_S = 70.0
T0_MS = ms_of("2026-03-10T12:00:00Z")
STEP_MS = 5  # event time between payments: the whole run spans 70 s of event time, inside every window
# Wide margins: the VM has 2 cores shared with the load generator and with other people's runs.
LATENCY_LIMIT_MS = BUDGET_MS + 3000.0  # every answer, from its due time (client side)
LATENCY_P99_MS = BUDGET_MS + 1000.0  # p99 of answers outside Redis faults, from the due time
SCORER_LIMIT_MS = BUDGET_MS + 250.0  # the scorer's own time (timings.total_ms + log_ms)
GRACE_S = 2.0  # degraded answers are allowed this long after a Redis fault ends
NOISE_SHARE = 0.05  # at most this share of answers outside faults may be degraded (see below)
SECTION = "2. faults under load"
COMMAND = ".venv/bin/pytest -q -s tests/reliability/test_faults_under_load.py"

RULE_FILE = "default.yaml"
RULE_LINE = "when: ip_card_country_mismatch == 1 and amount > 500 and not authenticated"


@dataclass
class Event:
    name: str
    start: float
    end: float = 0.0
    detail: str = ""


@dataclass
class FaultLog:
    events: list[Event] = field(default_factory=list)
    admin_status: Counter[int] = field(default_factory=Counter)
    rule_ops: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    final_rules_at: float = 0.0
    model_swapped_at: float = 0.0


def _edit_rules(directory: Path, threshold: str, atomic: bool) -> None:
    path = directory / RULE_FILE
    text = (
        (directory.parent / "rules.orig").read_text().replace(RULE_LINE, RULE_LINE.replace("500", threshold))
    )
    assert text != (directory.parent / "rules.orig").read_text() or threshold == "500"
    if atomic:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        with open(path, "w") as handle:  # as an editor that writes in place would
            handle.write(text)


def _faults(service: Service, swap_model: Path, start: float, log: FaultLog, stop: threading.Event) -> None:
    """The fault schedule, on its own thread; every step bounded in time."""
    canary = service.dir / "canary-escape"
    schedule: list[tuple[float, str, Any]] = []
    for k in range(50):
        schedule.append((3.0 + k * 1.0, f"rules-{k}", k))
    schedule += [(10.0, "redis-stop", None), (20.0, "redis-start", None)]
    schedule += [(26.0, "redis-sigstop", None), (28.0, "redis-sigcont", None)]
    schedule += [(33.0, "model-swap", None)]
    schedule.sort(key=lambda s: s[0])
    events: dict[str, Event] = {}
    with service.http(service.admin_key, timeout=10) as admin:
        for at, name, arg in schedule:
            delay = start + at - time.perf_counter()
            if delay > 0 and stop.wait(delay):
                return
            now = time.perf_counter()
            try:
                if name == "redis-stop":
                    events["redis-down"] = Event("redis down (stopped)", now)
                    service.stop_redis()
                elif name == "redis-start":
                    service.start_redis()  # returns once Redis answers PING (the AOF is loaded)
                    events["redis-down"].end = time.perf_counter()
                    events["redis-down"].detail = f"restart took {events['redis-down'].end - now:.2f} s"
                elif name == "redis-sigstop":
                    service.signal_redis(signal.SIGSTOP)
                    events["redis-paused"] = Event("redis paused (SIGSTOP)", now)
                elif name == "redis-sigcont":
                    service.signal_redis(signal.SIGCONT)
                    events["redis-paused"].end = time.perf_counter()
                elif name == "model-swap":
                    for part in ("model.txt", "metadata.json"):  # copied over, file by file
                        shutil.copyfile(swap_model / part, service.model_dir / part)
                    response = admin.post("/admin/reload-model")
                    log.admin_status[response.status_code] += 1
                    log.model_swapped_at = time.perf_counter()
                    events["model-swap"] = Event("model swap", now, log.model_swapped_at, response.text[:200])
                else:
                    _rules_op(service, admin, arg, log, canary)
            except Exception as exc:  # recorded and asserted on by the test
                log.errors.append(f"{name}: {type(exc).__name__}: {exc}")
    log.events = list(events.values())
    if canary.exists():
        log.errors.append("a rule expression created a file: the rule language was escaped")


def _rules_op(service: Service, admin: httpx.Client, k: int, log: FaultLog, canary: Path) -> None:
    directory = service.rules_dir
    if k in (20, 21):  # broken edits: refused by the watcher and by the admin call
        text = (directory.parent / "rules.orig").read_text()
        broken = (
            RULE_LINE.replace("amount > 500", "amount >")
            if k == 20
            else f"when: __import__('os').system('touch {canary}') == 0"
        )
        (directory / RULE_FILE).write_text(text.replace(RULE_LINE, broken))
        response = admin.post("/admin/reload-rules")
        log.admin_status[response.status_code] += 1
        log.rule_ops["broken edit + POST (expect 422)"] += 1
        if response.status_code != 422:
            log.errors.append(f"broken rule set answered {response.status_code}: {response.text[:200]}")
        return
    kind = k % 3 if k < 49 else 2
    if kind == 0:
        response = admin.post("/admin/reload-rules")
        log.admin_status[response.status_code] += 1
        log.rule_ops["POST /admin/reload-rules"] += 1
    elif kind == 1:
        _edit_rules(directory, str(501 + k), atomic=False)
        log.rule_ops["in-place file edit (watcher)"] += 1
    else:
        _edit_rules(directory, str(501 + k), atomic=True)
        response = admin.post("/admin/reload-rules")
        log.admin_status[response.status_code] += 1
        log.rule_ops["atomic file edit + POST"] += 1
    if k == 49:
        log.final_rules_at = time.perf_counter()


@dataclass
class FeedbackLog:
    accepted: list[dict[str, Any]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    retried_events: int = 0
    attempts_max: int = 0
    gave_up: list[dict[str, Any]] = field(default_factory=list)


def _feedback(
    service: Service, payments: list[dict[str, Any]], start: float, log: FeedbackLog, stop: threading.Event
) -> None:
    """10 feedback events a second about payments sent at least 2 s earlier; 503s retried (bounded)."""
    rng = random.Random(7)
    kinds: list[dict[str, Any]] = [
        {"kind": "label", "label": "fraud"},
        {"kind": "outcome", "outcome": "declined", "decline_code": "05"},
        {"kind": "refund"},
        {"kind": "cancel"},
        {"kind": "label", "label": "legitimate"},
        {"kind": "outcome", "outcome": "approved"},
    ]
    with service.http(service.scorer_key, timeout=5) as http:
        for n in range(int((DURATION_S - 8) * 10)):
            if stop.wait(max(0.0, start + 2.0 + n * 0.1 - time.perf_counter())):
                return
            due = int((time.perf_counter() - start - 2.0) * RATE)
            if rng.random() < 0.1 or due <= 0:
                txid, t_ms = f"unknown-{n}", T0_MS
            else:
                payment = payments[rng.randrange(min(due, len(payments)))]
                txid, t_ms = payment["transaction_id"], ms_of(payment["timestamp"])
            event = {"transaction_id": txid, "reported_at": _iso(t_ms + 1000 + n), **kinds[n % len(kinds)]}
            for attempt in range(1, 151):  # bounded: 150 attempts, 0.2 s apart (30 s)
                try:
                    status = http.post("/v1/feedback", json=event).status_code
                except httpx.TransportError:
                    status = -1
                log.statuses[status] += 1
                if status == 202:
                    log.accepted.append(event)
                    log.retried_events += attempt > 1
                    log.attempts_max = max(log.attempts_max, attempt)
                    break
                if status not in (503, -1) or stop.wait(0.2):
                    log.gave_up.append({**event, "status": status})
                    break
            else:
                log.gave_up.append({**event, "status": "retries exhausted"})


def _iso(ms: int) -> str:
    from .helpers import iso_ms

    return iso_ms(ms)


# --------------------------------------------------------------------------------------------------
# The run (once per module) and what it left in Redis, read before the service stops


@dataclass
class FaultRun:
    payments: list[dict[str, Any]]
    txids: list[str]
    run: Run
    answers: list[dict[str, Any]]
    faults: FaultLog
    feedback: FeedbackLog
    old_model: str
    new_model: str
    final_rules: str
    stored: dict[str, Any]
    by_card: dict[str, list[int]]
    members: dict[str, set[str]]
    probe_ids: list[tuple[str, str]]
    probes: list[dict[str, Any] | None]
    probe_resent: int
    probe_stored: dict[str, Any]
    streamed: Counter[tuple[str, str, int]]
    stalls: list[tuple[str, float, int]]
    redis_info: dict[str, Any]
    metrics: str
    log: str

    @property
    def t0(self) -> float:
        return float(self.run.sched[0])

    @property
    def windows(self) -> list[tuple[float, float]]:
        return [(e.start, e.end) for e in self.faults.events if e.name.startswith("redis")]

    @property
    def degraded(self) -> list[int]:
        return [i for i, a in enumerate(self.answers) if a["degraded"]]

    def sched_in(self, lo: float, hi: float) -> np.ndarray:
        return (self.run.sched >= lo) & (self.run.sched <= hi)

    def fault_of(self, i: int) -> int | None:
        """The Redis fault window that explains answer i (answered during it or GRACE_S after)."""
        done = self.run.done[i]
        return next((k for k, (s, e) in enumerate(self.windows) if s <= done <= e + GRACE_S), None)

    @property
    def noise_episodes(self) -> list[list[int]]:
        """Degraded answers outside the fault windows, grouped when less than 1 s apart."""
        noise = sorted((i for i in self.degraded if self.fault_of(i) is None), key=lambda i: self.run.done[i])
        episodes: list[list[int]] = []
        for i in noise:
            if episodes and self.run.done[i] - self.run.done[episodes[-1][-1]] < 1.0:
                episodes[-1].append(i)
            else:
                episodes.append([i])
        return episodes

    @property
    def healthy(self) -> np.ndarray:
        """Payments due while Redis was healthy: outside each fault and noise episode, and 5 s after."""
        spans = [(s - 0.1, e + 5.0) for s, e in self.windows]
        spans += [(self.run.done[ep[0]] - 0.6, self.run.done[ep[-1]] + 5.0) for ep in self.noise_episodes]
        mask = np.ones(len(self.run.sched), dtype=bool)
        for lo, hi in spans:
            mask &= ~self.sched_in(lo, hi)
        return mask


@pytest.fixture(scope="module")
def fault_run(swap_model: Path) -> FaultRun:
    n = int(RATE * DURATION_S)
    payments = Payments.make(n, "flt", T0_MS, STEP_MS)
    txids = [p["transaction_id"] for p in payments]
    started = time.perf_counter()
    with Service("faults", workers=2, tcp=True, appendonly=True) as service:
        shutil.copyfile(service.rules_dir / RULE_FILE, service.dir / "rules.orig")
        old_model = model_version(service.model_dir, "live")
        new_model = model_version(swap_model, "live")
        assert old_model != new_model
        requests = [http_request(service.port, service.scorer_key, "/v1/score", p) for p in payments]
        faults, feedback, stop = FaultLog(), FeedbackLog(), threading.Event()
        load = MachineLoad(service)
        start = time.perf_counter() + 0.3  # the replayer starts its clock ~0.05-0.3 s later
        threads = [
            threading.Thread(target=_faults, args=(service, swap_model, start, faults, stop), daemon=True),
            threading.Thread(target=_feedback, args=(service, payments, start, feedback, stop), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            run = replay(service.port, requests, RATE, connections=64, drain_s=30)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        machine = load.summary()
        assert not faults.errors, faults.errors
        final_rules = rules_version(service.rules_dir)
        time.sleep(1.5)  # the watchers poll every second
        answers = [a if a is not None else {"degraded": ["unanswered"]} for a in run.answers()]
        client = service.client()
        try:
            # every decision logged (buffer + store), read after the sink has written the buffers
            drained_s = wait_drained(client, 60)
            logged = read_log(client, service.store_url)
            stored = {t: logged.decision(t) for t in txids}
            logged_twice = [t for t in txids if logged.times_logged(t) > 1]
            stored_twice = [t for t, c in logged.store_decision_rows.items() if c > 1]
            by_card: dict[str, list[int]] = defaultdict(list)
            for i, p in enumerate(payments):
                by_card[p["card_id"]].append(i)
            members = entity_members(client, "card", list(by_card), txids)
            # one probe per card, after recovery, timed an hour after the run: it reads the counters
            probe_ids, probe_requests = [], []
            for j, card in enumerate(by_card):
                body = dict(payments[by_card[card][0]])
                body.update(transaction_id=f"flt-probe-{j}", timestamp=_iso(T0_MS + 3_600_000 + j))
                probe_ids.append((card, body["transaction_id"]))
                probe_requests.append(http_request(service.port, service.scorer_key, "/v1/score", body))
            probes, probe_resent = _send_until_full(service, probe_requests, 300.0)
            probe_log = read_log(client, service.store_url)
            probe_stored = {t: probe_log.decision(t) for _, t in probe_ids}
            stalls = redis_stalls(client, service.latency_offset)
            info = {**client.info("persistence"), **client.info("stats")}
            redis_info = {k: info.get(k) for k in ("aof_rewrites", "total_forks", "latest_fork_usec")}
            streamed = Counter(
                (e["transaction_id"], e["kind"], ms_of(e["reported_at"])) for e in probe_log.feedback.values()
            )
            streamed_rows_twice = sum(1 for c in probe_log.store_feedback_rows.values() if c > 1)
        finally:
            client.close()
        FIGURES.add(
            SECTION,
            "decision log after the sink drained it (s): transactions logged twice (a retry whose "
            "record a fault lost) / store rows twice: decisions, feedback",
            f"{drained_s:.1f}: {len(logged_twice)} / {len(stored_twice)}, {streamed_rows_twice}",
            COMMAND,
        )
        assert not stored_twice and not streamed_rows_twice, stored_twice[:5]
        with service.http() as http:
            metrics = http.get("/metrics").text
        log = service.log_text()
    FIGURES.add(SECTION, "machine load over the 70 s of load", machine, COMMAND)
    FIGURES.add(
        SECTION,
        "wall time of the scenario (start, 70 s of load, probes, stop)",
        f"{time.perf_counter() - started:.0f} s",
        COMMAND,
    )
    result = FaultRun(
        payments, txids, run, answers, faults, feedback, old_model, new_model, final_rules, stored,
        by_card, members, probe_ids, probes, probe_resent, probe_stored, streamed, stalls, redis_info,
        metrics, log,
    )  # fmt: skip
    _print_figures(result)
    return result


def _print_figures(r: FaultRun) -> None:
    for e in r.faults.events:
        detail = f" ({e.detail})" if e.detail and not e.name.startswith("model") else ""
        FIGURES.add(
            SECTION, f"fault: {e.name}", f"{e.start - r.t0:.1f} s -> {e.end - r.t0:.1f} s{detail}", COMMAND
        )
    status = Counter(int(s) for s in r.run.status)
    FIGURES.add(
        SECTION, "payments sent (200/s for 70 s, 2 workers, Redis over TCP)", len(r.payments), COMMAND
    )
    FIGURES.add(SECTION, "HTTP statuses (-1 = connection lost, 0 = unanswered)", dict(status), COMMAND)
    latency = r.run.latency_ms
    FIGURES.add(
        SECTION,
        "latency from due time, all payments: p50 / p99 / p99.9 / max (ms)",
        f"{pct(latency, 50):.1f} / {pct(latency, 99):.1f} / {pct(latency, 99.9):.1f} / {latency.max():.1f}",
        COMMAND,
    )
    reasons = Counter(x.split("(")[-1].rstrip(")") for i in r.degraded for x in r.answers[i]["degraded"])
    FIGURES.add(SECTION, "degraded answers (by cause)", f"{len(r.degraded):,} {dict(reasons)}", COMMAND)
    for e in r.faults.events:
        inside = r.sched_in(e.start, e.end + 1.0)
        lat = latency[inside]
        n_deg = sum(1 for i in np.nonzero(inside)[0] if r.answers[i]["degraded"])
        FIGURES.add(
            SECTION,
            f"during '{e.name}' + 1 s: payments / degraded / p99 / max latency (ms)",
            f"{int(inside.sum()):,} / {n_deg:,} / {pct(lat, 99):.1f} / {lat.max() if len(lat) else 0:.1f}",
            COMMAND,
        )
    FIGURES.add(
        SECTION, "Redis after the restart: AOF rewrites / forks / last fork (us)", r.redis_info, COMMAND
    )
    stalls = [(name, round(at - r.t0, 1), ms) for name, at, ms in r.stalls]
    FIGURES.add(
        SECTION, "Redis stalls >= 10 ms after the restart (LATENCY HISTORY: event, s, ms)", stalls, COMMAND
    )
    slices = [
        f"{lo:.0f}s:{pct(latency[r.sched_in(r.t0 + lo, r.t0 + lo + 5.0)], 99):.0f}"
        for lo in np.arange(0.0, DURATION_S, 5.0)
    ]
    FIGURES.add(SECTION, "latency p99 (ms) by 5 s of the run", " ".join(slices), COMMAND)
    healthy = r.healthy
    FIGURES.add(
        SECTION,
        "latency while Redis is healthy (outside faults and noise episodes, +5 s): n / p50 / p99 / max (ms)",
        f"{int(healthy.sum()):,} / {pct(latency[healthy], 50):.1f} / {pct(latency[healthy], 99):.1f} / "
        f"{latency[healthy].max():.1f}",
        COMMAND,
    )
    for label, pick in (("full", False), ("degraded", True)):
        rows = [a for a in r.answers if bool(a["degraded"]) == pick and "timings" in a]
        if rows:
            total = np.array([a["timings"]["total_ms"] for a in rows])
            shap = sum(1 for a in rows if a["reasons"]["model"])
            FIGURES.add(
                SECTION,
                f"{label} answers: scorer total_ms p50 / p99 / max; with TreeSHAP contributions",
                f"{pct(total, 50):.2f} / {pct(total, 99):.2f} / {total.max():.2f}; {shap:,} of {len(rows):,}",
                COMMAND,
            )


def _send_until_full(
    service: Service, requests: list[bytes], rate: float, rounds: int = 5
) -> tuple[list[dict[str, Any] | None], int]:
    """Send requests; re-send (same transaction id, as a client would) any answered degraded or not
    200, up to `rounds` times, 1 s apart. Returns the final answers and how many were re-sent."""
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    todo, resent = list(range(len(requests))), 0
    for attempt in range(rounds):
        if attempt:
            time.sleep(1.0)
            resent += len(todo)
        run = replay(service.port, [requests[i] for i in todo], rate, connections=16, drain_s=30)
        for i, answer in zip(todo, run.answers(), strict=True):
            answers[i] = answer
        todo = [i for i in todo if answers[i] is None or answers[i]["degraded"]]  # type: ignore[index]
        if not todo:
            break
    return answers, resent


# --------------------------------------------------------------------------------------------------
# What must hold


def test_every_payment_is_answered_200(fault_run: FaultRun) -> None:
    status = Counter(int(s) for s in fault_run.run.status)
    assert status == Counter({200: len(fault_run.payments)}), status


def test_latency_while_redis_is_healthy_is_within_budget_and_margin(fault_run: FaultRun) -> None:
    """Payments due outside the Redis faults and noise episodes (and 5 s after each): the model swap
    and the 50 rule reloads happen in this time."""
    healthy = fault_run.healthy
    latency = fault_run.run.latency_ms[healthy]
    assert healthy.sum() > 5000
    assert pct(latency, 99) <= LATENCY_P99_MS, f"p99 {pct(latency, 99):.0f} ms"
    assert latency.max() <= LATENCY_LIMIT_MS, f"slowest answer {latency.max():.0f} ms"
    scorer = np.array([a["timings"]["total_ms"] + a["timings"]["log_ms"] for a in fault_run.answers])
    assert pct(scorer[healthy], 99) <= SCORER_LIMIT_MS, pct(scorer[healthy], 99)


def test_latency_during_redis_faults_is_within_budget_and_margin(fault_run: FaultRun) -> None:
    degraded = [fault_run.answers[i] for i in fault_run.degraded]
    with_shap = [a for a in degraded if a["reasons"]["model"]]
    assert not with_shap, f"{len(with_shap)} of {len(degraded)} degraded answers paid for TreeSHAP"
    latency = fault_run.run.latency_ms
    assert latency.max() <= LATENCY_LIMIT_MS, f"slowest answer {latency.max():.0f} ms"
    scorer = np.array([a["timings"]["total_ms"] + a["timings"]["log_ms"] for a in fault_run.answers])
    assert pct(scorer, 99) <= SCORER_LIMIT_MS, pct(scorer, 99)
    lengths = [fault_run.run.done[ep[-1]] - fault_run.run.done[ep[0]] for ep in fault_run.noise_episodes]
    assert max(lengths, default=0.0) <= 1.0, (
        f"a 0.5 s breaker pause degraded answers for {max(lengths):.1f} s"
    )


def test_degraded_only_during_redis_faults_and_recovered_after(fault_run: FaultRun) -> None:
    """Degraded answers come from the Redis faults and stop within GRACE_S of each fault's end.

    Outside the faults, one Redis call slower than its timeout (0.6 x budget = 30 ms: a fork for an
    AOF rewrite, or the VM's cores busy with other work) opens that worker's circuit breaker for
    0.5 s, which degrades about 50 answers. Such noise episodes are printed and bounded: at most
    NOISE_SHARE of the answers outside faults, and in every 5 s from 3 s after the last fault at
    least half the answers are full (a Redis that did not recover would degrade them all)."""
    r = fault_run
    assert r.degraded, "the faults degraded nothing: the scenario did not run as planned"
    done = r.run.done
    for k, (s, e) in enumerate(r.windows):
        caused = [i for i in r.degraded if r.fault_of(i) == k]
        name = next(ev.name for ev in r.faults.events if ev.start == s)
        last = max((done[i] for i in caused), default=e)
        FIGURES.add(
            SECTION,
            f"'{name}': degraded answers / last one after the fault ended (s)",
            f"{len(caused):,} / {last - e:.2f}",
            COMMAND,
        )
    redis_up = next(ev.end for ev in r.faults.events if ev.name.startswith("redis down"))
    after = [done[i] for i in range(len(r.answers)) if done[i] > redis_up and not r.answers[i]["degraded"]]
    FIGURES.add(
        SECTION, "first full answer after Redis restarted (s)", round(min(after) - redis_up, 3), COMMAND
    )

    episodes = r.noise_episodes
    noise = sum(len(ep) for ep in episodes)
    outside = sum(
        1 for i in range(len(r.answers)) if not any(s <= done[i] <= e + GRACE_S for s, e in r.windows)
    )
    described = [
        (
            round(done[ep[0]] - r.t0, 1),
            len(ep),
            round(done[ep[-1]] - done[ep[0]], 2),
            dict(Counter(x.split("(")[-1].rstrip(")") for i in ep for x in r.answers[i]["degraded"])),
        )
        for ep in episodes
    ]
    FIGURES.add(
        SECTION,
        "degraded outside faults: answers / share; episodes (at s, answers, length s, causes)",
        f"{noise} / {noise / max(1, outside):.2%}; {described}",
        COMMAND,
    )
    assert noise <= NOISE_SHARE * outside, described
    last_fault_end = max(e for _, e in r.windows)
    recovered = np.nonzero(r.run.sched > last_fault_end + 3.0)[0]
    assert len(recovered) > 5000
    for lo in np.arange(r.run.sched[recovered[0]], r.run.sched[recovered[-1]], 5.0):
        part = [i for i in recovered if lo <= r.run.sched[i] < lo + 5.0]
        full = sum(1 for i in part if not r.answers[i]["degraded"])
        assert full >= 0.5 * len(part), f"{len(part) - full} of {len(part)} degraded from {lo - r.t0:.0f} s"


def test_after_the_swaps_every_answer_has_the_new_model_and_final_rules(fault_run: FaultRun) -> None:
    r = fault_run
    FIGURES.add(SECTION, "rule reloads (50), by kind", dict(r.faults.rule_ops), COMMAND)
    FIGURES.add(
        SECTION, "admin calls by status (422: broken rule sets refused)", dict(r.faults.admin_status), COMMAND
    )
    assert sum(r.faults.rule_ops.values()) == 50
    assert set(r.faults.admin_status) <= {200, 422} and r.faults.admin_status[422] == 2, r.faults.admin_status
    settled = np.nonzero(r.run.sched > max(r.faults.final_rules_at, r.faults.model_swapped_at) + 3.0)[0]
    versions = Counter((r.answers[i]["model_version"], r.answers[i]["rules_version"]) for i in settled)
    FIGURES.add(SECTION, "answers 3 s after the last swap: (model, rules) versions", dict(versions), COMMAND)
    assert len(settled) > 1000 and set(versions) == {(r.new_model, r.final_rules)}, versions
    models = Counter(a.get("model_version") for a in r.answers)
    rules = Counter(a.get("rules_version") for a in r.answers)
    FIGURES.add(
        SECTION,
        "distinct model / rules versions served over the run",
        f"{len(models)} / {len(rules)}",
        COMMAND,
    )
    assert set(models) == {r.old_model, r.new_model}, models
    # the sink (started by `serve`) logs each failed batch with its traceback while Redis is down, and
    # retries: expected here; any other traceback is a bug
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )", r.log)
    sink_failures = [x for x in records if " antifraud.sink: the sink's batch failed" in x]
    others = [x for x in records if x not in sink_failures and "Traceback" in x]
    FIGURES.add(
        SECTION,
        "sink batches failed and retried (Redis down) / other tracebacks",
        f"{len(sink_failures)} / {len(others)}",
        COMMAND,
    )
    assert not others, others[:2]


def test_every_full_answer_outside_fault_windows_is_in_the_decision_log(fault_run: FaultRun) -> None:
    r = fault_run
    full = [i for i, a in enumerate(r.answers) if not a["degraded"]]
    missing = [i for i in full if r.stored[r.txids[i]] is None]
    near = [i for i in missing if any(s - 1.0 <= r.run.sched[i] <= e + 1.0 for s, e in r.windows)]
    FIGURES.add(
        SECTION,
        "non-degraded answers missing from the decision log: all / outside fault windows",
        f"{len(missing)} / {len(missing) - len(near)}",
        COMMAND,
    )
    logged = sum(1 for i in r.degraded if r.stored[r.txids[i]] is not None)
    FIGURES.add(SECTION, "degraded answers in the decision log", f"{logged} of {len(r.degraded)}", COMMAND)
    assert len(missing) == len(near), [r.answers[i] for i in missing if i not in near][:3]
    differ = [
        i for i in full if r.stored[r.txids[i]] and r.stored[r.txids[i]]["verdict"] != r.answers[i]["verdict"]
    ]
    assert not differ


def test_counters_are_consistent_after_recovery(fault_run: FaultRun) -> None:
    """Per card: S = the payments Redis recorded (the card's dedupe ring: the fingerprints of its
    last 64 transactions, fewer here); A = those answered non-degraded; U = those answered
    degraded because a Redis call failed or timed out (a timed-out script may still have run when
    Redis resumed; a 'circuit open' answer never reached Redis). Then A <= S <= A + U: nothing
    answered as fully scored is missing from the counters and nothing is counted that never
    reached Redis. And a probe payment per card, sent after recovery an hour later, reads
    card_count_24h == |S|."""
    r = fault_run
    lost, extra, unsure_recorded, unsure_total = [], [], 0, 0
    for card, rows in r.by_card.items():
        recorded = r.members[card] - {t for c, t in r.probe_ids if c == card}
        full = {r.txids[i] for i in rows if not r.answers[i]["degraded"]}
        unsure = {
            r.txids[i]
            for i in rows
            if r.answers[i]["degraded"] and not any("circuit open" in x for x in r.answers[i]["degraded"])
        }
        unsure_total += len(unsure)
        unsure_recorded += len(recorded & unsure)
        if not full <= recorded:
            lost.append((card, sorted(full - recorded)[:3]))
        if not recorded <= full | unsure:
            extra.append((card, sorted(recorded - full - unsure)[:3]))
    FIGURES.add(
        SECTION,
        "cards / payments recorded / degraded-by-error payments that Redis recorded anyway",
        f"{len(r.by_card):,} / {sum(len(m) for m in r.members.values()):,} / "
        f"{unsure_recorded} of {unsure_total}",
        COMMAND,
    )
    assert not lost, f"answered non-degraded but missing from the card's counters: {lost[:5]}"
    assert not extra, f"counted but never answered as having reached Redis: {extra[:5]}"

    FIGURES.add(
        SECTION,
        "probes re-sent because their answer was degraded (noise, see above)",
        r.probe_resent,
        COMMAND,
    )
    assert not [a for a in r.probes if a is None or a["degraded"]]
    wrong = []
    for card, txid in r.probe_ids:
        expected = len(r.members[card] - {txid})
        seen = r.probe_stored[txid]["features"]["card_count_24h"]
        if seen != expected:
            wrong.append((card, seen, expected))
    FIGURES.add(
        SECTION,
        "probes whose card_count_24h differs from the card's recorded payments",
        f"{len(wrong)} of {len(r.probe_ids):,}",
        COMMAND,
    )
    assert not wrong, wrong[:5]


def test_no_accepted_feedback_event_is_lost(fault_run: FaultRun) -> None:
    r = fault_run
    f = r.feedback
    accepted = [(e["transaction_id"], e["kind"], ms_of(e["reported_at"])) for e in f.accepted]
    lost = [a for a in accepted if a not in r.streamed]
    duplicates = sum(c - 1 for c in r.streamed.values() if c > 1)
    FIGURES.add(
        SECTION,
        "feedback: events / accepted (202) / answers by status / events retried / max attempts",
        f"{len(f.accepted) + len(f.gave_up)} / {len(f.accepted)} / {dict(f.statuses)} / "
        f"{f.retried_events} / {f.attempts_max}",
        COMMAND,
    )
    FIGURES.add(
        SECTION,
        "feedback: accepted events missing from the log (buffer + store) / duplicates in it",
        f"{len(lost)} / {duplicates}",
        COMMAND,
    )
    assert len(f.accepted) > 400 and f.retried_events > 0, "no feedback was sent while Redis was down"
    assert not f.gave_up, f.gave_up[:3]
    assert set(f.statuses) <= {202, 503}, f.statuses
    assert not lost, lost[:5]


def test_metrics_count_every_degraded_answer(fault_run: FaultRun) -> None:
    counted = metric_value(fault_run.metrics, "antifraud_degraded_total")
    FIGURES.add(
        SECTION,
        "antifraud_degraded_total (metrics) vs degraded answers (+ probes re-sent after a degraded answer)",
        f"{counted:.0f} vs {len(fault_run.degraded)} (+ {fault_run.probe_resent})",
        COMMAND,
    )
    # the metric also counts the probes' degraded answers (sent after the run, re-sent until full)
    assert len(fault_run.degraded) <= counted <= len(fault_run.degraded) + fault_run.probe_resent
