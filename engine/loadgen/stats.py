"""The figures of a cell: latency percentiles, throughput, time per stage, CPU; and the saturation test."""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass, field

import numpy as np

from antifraud.engine.loadgen.client import Cell
from antifraud.engine.loadgen.cpu import CpuMark

# Where a request's time goes, from each answer's `timings`: the scorer's stages, the decision log,
# and "outside" = the client-observed service time minus those (HTTP, validation, auth, metrics...).
STAGES = ("features", "model", "rules", "scorer_other", "log", "outside")


def pct(values: np.ndarray, q: float) -> float:
    """Percentile without interpolation (an infinite value - a timeout - stays infinite); NaN if empty."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(values, q, method="higher"))


@dataclass
class CellResult:
    """The figures of one cell (times in ms, rates per second)."""

    workers: int
    rate: float
    repeat: int
    measured: int
    achieved: float
    ok: int
    errors: int
    timeouts: int
    p50: float
    p99: float
    p999: float
    max: float
    service_p50: float  # from the request's send time, not its scheduled time
    service_p99: float
    lag_p50: float  # send - scheduled: the client's queue (all connections busy) and timer precision
    lag_p99: float
    stage_p50: dict[str, float] = field(default_factory=dict)
    stage_p99: dict[str, float] = field(default_factory=dict)
    stage_mean: dict[str, float] = field(default_factory=dict)
    total_allow_p50: float = math.nan  # the scorer's total for allowed payments
    total_flagged_p50: float = math.nan  # ... and for review/block
    verdicts: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    cpu_util: dict[str, float] = field(default_factory=dict)  # cores busy, by role
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    worker_share: list[float] = field(default_factory=list)  # CPU share of each worker
    reconnects: int = 0
    # of the requests slower than p99: the share that were review/block themselves, and the share
    # that were waiting or in flight while a review/block answer was being computed
    slow_flagged: float = math.nan
    slow_overlapping_flagged: float = math.nan
    redis_us_per_call: dict[str, float] = field(default_factory=dict)


def summarize(
    cell: Cell,
    first: CpuMark,
    last: CpuMark,
    workers: int,
    repeat: int,
    per_worker: list[float],
) -> CellResult:
    """Latency, throughput, stages and CPU of a finished cell (measured part only)."""
    m = slice(cell.measured_from, None)
    sched, sent, done, status = cell.sched[m], cell.sent[m], cell.done[m], cell.status[m]
    answered = ~np.isnan(done)
    latency = np.where(answered, (done - sched) * 1000, np.inf)
    service = (done - sent)[answered] * 1000
    lag = (sent - sched)[~np.isnan(sent)] * 1000
    ok_mask = status == 200
    window = last.wall - first.wall
    in_window = ok_mask & answered & (done >= first.wall) & (done <= last.wall)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    totals: dict[str, list[float]] = {"allow": [], "flagged": []}
    verdicts: collections.Counter[str] = collections.Counter()
    flagged = np.zeros(len(latency), dtype=bool)
    degraded = 0
    for k, body in enumerate(cell.bodies[m]):
        if body is None or status[k] != 200:
            continue
        answer = json.loads(body)
        t = answer["timings"]
        verdicts[answer["verdict"]] += 1
        degraded += bool(answer["degraded"])
        scorer = t["total_ms"] + t.get("log_ms", 0.0)
        stages["features"].append(t["features_ms"])
        stages["model"].append(t["model_ms"])
        stages["rules"].append(t["rules_ms"])
        stages["scorer_other"].append(t["total_ms"] - t["features_ms"] - t["model_ms"] - t["rules_ms"])
        stages["log"].append(t.get("log_ms", 0.0))
        stages["outside"].append((done[k] - sent[k]) * 1000 - scorer)
        totals["allow" if answer["verdict"] == "allow" else "flagged"].append(t["total_ms"])
        flagged[k] = answer["verdict"] != "allow"
    n_ok = int(ok_mask.sum())
    slow = _slow_attribution(latency, flagged, sched, sent, done)
    cpu = {role: last.cpu[role] - first.cpu[role] for role in last.cpu}
    # everything else running on the machine meanwhile (the noise of a shared VM)
    cpu["others"] = max(0.0, cpu.pop("machine") - sum(cpu.values()))
    return CellResult(
        workers=workers,
        rate=cell.rate,
        repeat=repeat,
        measured=len(latency),
        achieved=float(in_window.sum() / window) if window > 0 else math.nan,
        ok=n_ok,
        errors=int((answered & ~ok_mask).sum()),
        timeouts=int((~answered).sum()),
        p50=pct(latency, 50),
        p99=pct(latency, 99),
        p999=pct(latency, 99.9),
        max=float(latency.max()),
        service_p50=pct(service, 50),
        service_p99=pct(service, 99),
        lag_p50=pct(lag, 50),
        lag_p99=pct(lag, 99),
        stage_p50={s: pct(np.array(v), 50) for s, v in stages.items()},
        stage_p99={s: pct(np.array(v), 99) for s, v in stages.items()},
        stage_mean={s: float(np.mean(v)) if v else math.nan for s, v in stages.items()},
        total_allow_p50=pct(np.array(totals["allow"]), 50),
        total_flagged_p50=pct(np.array(totals["flagged"]), 50),
        verdicts=dict(verdicts),
        degraded=degraded,
        cpu_util={role: c / window for role, c in cpu.items()},
        cpu_us_per_request={role: c / max(1, in_window.sum()) * 1e6 for role, c in cpu.items()},
        worker_share=per_worker,
        reconnects=cell.reconnects,
        slow_flagged=slow[0],
        slow_overlapping_flagged=slow[1],
    )


def _slow_attribution(
    latency: np.ndarray, flagged: np.ndarray, sched: np.ndarray, sent: np.ndarray, done: np.ndarray
) -> tuple[float, float]:
    """How much of the slowest 1 % is review/block answers and what queued behind them."""
    slow = np.nonzero(latency >= pct(latency, 99))[0]
    if len(slow) == 0 or not np.isfinite(latency[slow]).any():
        return math.nan, math.nan
    starts, ends = sent[flagged], done[flagged]
    overlapping = [
        bool(np.any((starts < (done[j] if np.isfinite(done[j]) else np.inf)) & (ends > sched[j])))
        for j in slow
    ]
    return float(flagged[slow].mean()), float(np.mean(overlapping))


def median_of(results: list[CellResult], attr: str) -> float:
    """Median over repeats of one figure."""
    values = [getattr(r, attr) for r in results]
    return float(np.median(values)) if values else math.nan


def passes(cells: list[CellResult], p99_bound: float) -> bool:
    """The saturation criterion on the median of repeats: achieved >= 95 % of the offered rate,
    p99 within `p99_bound` ms and at most 0.1 % of requests failed."""
    if not cells:
        return False
    failed = sum(r.errors + r.timeouts for r in cells) / max(1, sum(r.measured for r in cells))
    return (
        median_of(cells, "achieved") >= 0.95 * cells[0].rate
        and median_of(cells, "p99") <= p99_bound
        and failed <= 0.001
    )


def fmt(value: float | None, digits: int = 2) -> str:
    """A figure for a table: '-' when missing, 'timeout' when infinite."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:,.{digits}f}"
