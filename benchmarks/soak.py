"""Soak benchmark: the service at one steady open-loop rate for a long time; is anything growing?

    .venv/bin/python benchmarks/soak.py                         # 30 min at 500 payments/s, sink on
    .venv/bin/python benchmarks/soak.py --quick                 # 60 s at 300/s, a sample every 5 s
    .venv/bin/python benchmarks/soak.py --rate 1000 --duration 600 --workers 2   # the sink at 1,000/s
    .venv/bin/python benchmarks/soak.py --no-sink               # the streams fill, nothing drains them

The stack is load_http.py's (benchmarks/loadlib): a redis-server restored from the cached snapshot
of the sample before the replay window, `antifraud serve --workers N` with a fresh key, and here the
decision sink in its own process (ANTIFRAUD_SINK=1, its Parquet store in the stack's directory).
The replay's payments (unique transaction ids, time moving forward) are sent at `--rate` per second,
open loop, by the load generator of `antifraud.engine.loadgen`, one cell of `--interval` seconds
after another: between two cells the generator waits for the cell's last answers and reconnects,
so the rate actually offered is a little lower (printed at the end).

After each cell it prints one line: elapsed time, payments answered, Redis used_memory and key
count, the length of the decision and feedback streams, the sink group's lag (entries not yet
written: undelivered + pending; n/a without the group), the rate at which the sink wrote over the
cell (entries added to the decision stream minus its lag), the summed resident memory (RSS) of
the workers and of the sink, p50/p99 latency of the cell's payments (from their scheduled time),
its errors + timeouts and degraded answers, and the cores other processes of the machine used
meanwhile ("others": noise on a shared machine).

At the end: least-squares slopes over the second half of the run (Redis memory in MB/min and in
bytes per payment answered, worker and sink RSS in MB/min, p99 in ms/min) and the final sink lag;
then Redis memory by key family at the start and the end (a SCAN of every key, MEMORY USAGE of a
sample of `--sample` keys per family): the entity keys `af:{card:*}:...` per entity kind, the
per-transaction keys `af:{tx:*}:...`, the streams; bytes per active card (card keys' bytes / cards)
and per transaction key. Results are also written as JSON to reports/soak-<time>.json (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
from loadlib.report import REPORTS, _finite, machine
from loadlib.runs import KEY_NAME, load_stack
from loadlib.snapshot import snapshot
from loadlib.soak import Breakdown, RedisState, breakdown, read_state, rss, sink_pids, slope, streams

from antifraud.engine.loadgen.client import run_async, run_cell
from antifraud.engine.loadgen.replay import Replay, RequestSource, load_replay
from antifraud.engine.loadgen.stats import fmt, pct, summarize
from antifraud.engine.stack import ServiceStack

MB = 1024 * 1024


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=500, help="payments per second (default 500)")
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per sample (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--no-sink", action="store_true", help="leave the decision sink off")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument("--drain", type=float, default=3.0, help="seconds to wait for a cell's answers")
    parser.add_argument("--replay-days", type=int, default=7, help="last days of the sample to replay")
    parser.add_argument("--tcp-redis", action="store_true", help="Redis over TCP, not a unix socket")
    parser.add_argument("--sample", type=int, default=500, help="keys per family for MEMORY USAGE")
    parser.add_argument("--no-cache", action="store_true", help="rebuild the Redis snapshot")
    parser.add_argument("--quick", action="store_true", help="60 s at 300/s, a sample every 5 s")
    parser.add_argument("--out", type=Path, help="JSON results file (default reports/soak-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rate, args.interval = 60.0, 300, 5.0
    return args


@dataclass
class Sample:
    """One line of the run: the cell just finished and the state read right after it."""

    elapsed_s: float
    sent: int  # payments sent since the start
    answered: int  # ... answered 200
    p50_ms: float
    p99_ms: float
    errors: int  # this cell's non-200 answers, lost connections and timeouts
    degraded: int  # ... answers saying something was missing (e.g. "decision log: not stored")
    sink_per_s: float  # decision-stream entries the sink wrote per second during the cell
    worker_rss: int
    sink_rss: int | None
    cpu_cores: dict[
        str, float
    ]  # cores busy during the cell: server, sink, client, others (the machine's rest)
    redis: RedisState


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine()
    print(f"machine: {info['cpus']} CPUs ({info['cpu']}), load {info['load_before']}; code: {info['code']}")
    history, replay = load_replay(args.replay_days)
    rdb = snapshot(history, replay, use_cache=not args.no_cache)
    del history
    stack = load_stack(rdb, args.workers, args.tcp_redis)
    # the sink (or not) whatever this shell's environment or serve's default says (an explicit 0: the
    # default is on in newer trees); its store lives and dies with the stack
    stack.env.update({"ANTIFRAUD_SINK": "0" if args.no_sink else "1"})
    stack.env.update({"ANTIFRAUD_STORE": str(stack.dir / "decisions")})
    with stack, contextlib.closing(stack.redis_client()) as client:
        names = streams(os.environ.get("ANTIFRAUD_NAMESPACE", "af"))
        print(
            f"{args.workers} worker(s), sink {'off' if args.no_sink else 'on'}, {args.rate}/s for "
            f"{args.duration:.0f} s; Redis memory by key family at the start...",
            flush=True,
        )
        before = breakdown(client, args.sample)
        samples, latencies = soak(args, stack, replay, client, names)
        after = breakdown(client, args.sample)
    summary = summarize_run(samples, latencies, before, after, names)
    print()
    print(report(summary, before, after, samples[-1].answered if samples else 0))
    write(args, info, samples, summary, before, after)


def soak(
    args: argparse.Namespace, stack: ServiceStack, replay: Replay, client: redis.Redis, names: tuple[str, ...]
) -> tuple[list[Sample], list[np.ndarray]]:
    """Cells of `--interval` seconds at `--rate` until `--duration`; one printed sample after each."""
    source = RequestSource(replay, "127.0.0.1", stack.port, stack.keys[KEY_NAME], "soak")
    samples: list[Sample] = []
    latencies: list[np.ndarray] = []
    sent = answered = 0
    previous = read_state(client, names)
    started = last = time.perf_counter()
    print(
        f"{'elapsed s':>9} {'answered':>9} {'redis MB':>9} {'keys':>9} {'xlen dec/fb':>13} "
        f"{'sink lag dec/fb':>15} {'sink/s':>7} {'workers MB':>10} {'sink MB':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'degr.':>6} {'others':>6}"
    )
    while (elapsed := time.perf_counter() - started) < args.duration - 0.5:
        requests = source.take(max(1, int(args.rate * min(args.interval, args.duration - elapsed))))
        server = stack.worker_pids()
        sink = sink_pids(client, names[0], stack.pids())
        workers = [p for p in server if p not in sink]
        pids = {"server": workers, "sink": sink, "client": [os.getpid()]}
        cell, first, end = run_async(
            run_cell(stack.port, requests, args.rate, 0, args.connections, args.drain, pids)
        )
        result = summarize(cell, first, end, args.workers, 0, [])
        latencies.append(np.where(np.isnan(cell.done), np.inf, (cell.done - cell.sched) * 1000))
        state = read_state(client, names)
        now = time.perf_counter()
        sent, answered = sent + len(requests), answered + result.ok
        written = _written(state, names[0]) - _written(previous, names[0])
        sample = Sample(
            elapsed_s=now - started,
            sent=sent,
            answered=answered,
            p50_ms=result.p50,
            p99_ms=result.p99,
            errors=result.errors + result.timeouts,
            degraded=result.degraded,
            sink_per_s=written / (now - last),
            worker_rss=rss(workers),
            sink_rss=rss(sink) if sink else None,
            cpu_cores=result.cpu_util,
            redis=state,
        )
        samples.append(sample)
        previous, last = state, now
        print(line(sample, names), flush=True)
    return samples, latencies


def _written(state: RedisState, stream: str) -> float:
    """Entries of a stream the sink has written: added - lag (NaN when either is unknown)."""
    added, lag = state.added[stream], state.lag[stream]
    return math.nan if added is None or lag is None else float(added - lag)


def line(s: Sample, names: tuple[str, ...]) -> str:
    """The printed line of one sample."""
    r = s.redis
    lags = "/".join("n/a" if r.lag[n] is None else f"{r.lag[n]:,}" for n in names)
    sink_mb = "n/a" if s.sink_rss is None else f"{s.sink_rss / MB:,.1f}"
    return (
        f"{s.elapsed_s:>9.0f} {s.answered:>9,} {r.used_memory / MB:>9.1f} {r.dbsize:>9,} "
        f"{'/'.join(f'{r.xlen[n]:,}' for n in names):>13} {lags:>15} {fmt(s.sink_per_s, 0):>7} "
        f"{s.worker_rss / MB:>10.1f} {sink_mb:>8} {fmt(s.p50_ms):>7} {fmt(s.p99_ms):>7} "
        f"{s.errors:>6} {s.degraded:>6} "
        f"{s.cpu_cores.get('others', 0.0):>6.2f}"
    )


def summarize_run(
    samples: list[Sample],
    latencies: list[np.ndarray],
    before: Breakdown,
    after: Breakdown,
    names: tuple[str, ...],
) -> dict[str, Any]:
    """The slopes over the second half of the run, the whole run's figures, and the key families."""
    if not samples:
        return {}
    end = samples[-1]
    late = [s for s in samples if s.elapsed_s >= end.elapsed_s / 2]
    minutes = [s.elapsed_s / 60 for s in late]
    every = np.concatenate(latencies)
    card_keys = after.kind_bytes("card")
    return {
        "elapsed_s": end.elapsed_s,
        "offered_per_s": end.sent / end.elapsed_s,
        "answered": end.answered,
        "errors": sum(s.errors for s in samples),
        "degraded": sum(s.degraded for s in samples),
        "p50_ms": pct(every, 50),
        "p99_ms": pct(every, 99),
        "p999_ms": pct(every, 99.9),
        "second_half_samples": len(late),
        "redis_mb_per_min": slope(minutes, [s.redis.used_memory / MB for s in late]),
        "redis_bytes_per_payment": slope(
            [float(s.answered) for s in late], [float(s.redis.used_memory) for s in late]
        ),
        "worker_rss_mb_per_min": slope(minutes, [s.worker_rss / MB for s in late]),
        "sink_rss_mb_per_min": slope(
            minutes, [math.nan if s.sink_rss is None else s.sink_rss / MB for s in late]
        ),
        "p99_ms_per_min": slope(minutes, [s.p99_ms for s in late]),
        "sink_per_s": float(np.nanmean([s.sink_per_s for s in samples])),
        "final_sink_lag": {n: end.redis.lag[n] for n in names},
        "redis_used_memory": {"start": samples[0].redis.used_memory, "end": end.redis.used_memory},
        "cards": after.entities.get("card", 0),
        "bytes_per_card": after.per_entity("card"),
        "card_keys_bytes": card_keys,
        "tx_keys": sum(f.keys for f in after.families.values() if f.kind == "tx"),
        "bytes_per_tx_key": after.kind_bytes("tx")
        / max(1, sum(f.keys for f in after.families.values() if f.kind == "tx")),
    }


def report(summary: dict[str, Any], before: Breakdown, after: Breakdown, answered: int) -> str:
    """The summary and the key-family table, as printed."""
    if not summary:
        return "no sample: the run was shorter than one cell"
    s = summary
    lag = ", ".join(f"{k} {'n/a' if v is None else f'{v:,}'}" for k, v in s["final_sink_lag"].items())
    lines = [
        f"{s['answered']:,} payments answered in {s['elapsed_s']:.0f} s "
        f"(offered {s['offered_per_s']:,.0f}/s), "
        f"{s['errors']} errors/timeouts, {s['degraded']} degraded answers; "
        f"p50 {fmt(s['p50_ms'])} p99 {fmt(s['p99_ms'])} "
        f"p99.9 {fmt(s['p999_ms'])} ms",
        f"slopes over the second half ({s['second_half_samples']} samples): Redis "
        f"{fmt(s['redis_mb_per_min'], 3)} MB/min = {fmt(s['redis_bytes_per_payment'], 0)} bytes per payment; "
        f"worker RSS {fmt(s['worker_rss_mb_per_min'], 3)} MB/min; sink RSS "
        f"{fmt(s['sink_rss_mb_per_min'], 3)} MB/min; p99 {fmt(s['p99_ms_per_min'], 3)} ms/min",
        f"sink: wrote {fmt(s['sink_per_s'], 0)} decisions/s on average; final lag: {lag}",
        f"bytes per active card {fmt(s['bytes_per_card'], 0)} ({s['cards']:,} cards, "
        f"{s['card_keys_bytes'] / MB:,.1f} MB); bytes per transaction key {fmt(s['bytes_per_tx_key'], 0)} "
        f"({s['tx_keys']:,} keys)",
        "",
        "Redis memory by key family (MEMORY USAGE of a sample x keys; dataset: "
        f"{before.used_memory_dataset / MB:,.1f} MB at the start, {after.used_memory_dataset / MB:,.1f} MB "
        "at the end):",
        "",
        "| family | keys start | keys end | MB start | MB end | bytes/key end | bytes per payment answered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pattern in sorted(after.families.keys() | before.families.keys(), key=lambda p: -_bytes(after, p)):
        b, a = before.families.get(pattern), after.families.get(pattern)
        keys_b, keys_a = (b.keys if b else 0), (a.keys if a else 0)
        bytes_b, bytes_a = _bytes(before, pattern), _bytes(after, pattern)
        lines.append(
            f"| `{pattern}` | {keys_b:,} | {keys_a:,} | {bytes_b / MB:,.2f} | {bytes_a / MB:,.2f} "
            f"| {fmt(bytes_a / keys_a if keys_a else None, 0)} "
            f"| {fmt((bytes_a - bytes_b) / max(1, answered), 1)} |"
        )
    lines += ["", "| entity kind | entities start | entities end | MB end | bytes per entity end |"]
    lines.append("|---|---:|---:|---:|---:|")
    for kind in sorted(after.entities, key=after.kind_bytes, reverse=True):
        lines.append(
            f"| {kind} | {before.entities.get(kind, 0):,} | {after.entities[kind]:,} "
            f"| {after.kind_bytes(kind) / MB:,.2f} | {fmt(after.per_entity(kind), 0)} |"
        )
    lines.append(f"\ncommand: {' '.join(sys.argv)}")
    return "\n".join(lines)


def _bytes(b: Breakdown, pattern: str) -> float:
    family = b.families.get(pattern)
    return family.bytes if family else 0.0


def write(
    args: argparse.Namespace,
    info: dict[str, Any],
    samples: list[Sample],
    summary: dict[str, Any],
    before: Breakdown,
    after: Breakdown,
) -> None:
    """Settings, machine, samples, summary and both breakdowns as JSON (`--out`, or reports/)."""
    out = args.out or REPORTS / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    families = {
        name: {
            "entities": b.entities,
            "used_memory_dataset": b.used_memory_dataset,
            "families": {
                p: {"keys": f.keys, "sampled": len(f.sampled), "bytes": f.bytes}
                for p, f in b.families.items()
            },
        }
        for name, b in (("start", before), ("end", after))
    }
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "machine": info,
        "args": settings,
        "samples": [asdict(s) for s in samples],
        "summary": summary,
        "redis_by_family": families,
    }
    out.write_text(json.dumps(_finite(document), indent=1, default=str))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
