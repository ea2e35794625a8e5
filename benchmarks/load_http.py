"""Load benchmark of the scoring service over HTTP: open-loop fixed-rate replay of sample payments.

    .venv/bin/python benchmarks/load_http.py                      # the full matrix (about 5-9 min)
    .venv/bin/python benchmarks/load_http.py --quick              # one repeat, shorter cells
    .venv/bin/python benchmarks/load_http.py --self-test          # the load generator alone
    .venv/bin/python benchmarks/load_http.py --components 3000    # each step of a request, in-process
    .venv/bin/python benchmarks/load_http.py --sequential 3000 --workers 1 2   # one payment at a time
    .venv/bin/python benchmarks/load_http.py --workers 1 --profile 600   # py-spy, one worker at 600/s

What it does, all on loopback and stopping by itself:

1. loads the sample history and splits it: every payment and feedback event before the last
   `--replay-days` days is loaded into a real redis-server with `OnlineFeatures.backfill` (the
   Redis snapshot is cached in var/loadtest/ keyed by the sample, the feature spec and score.lua,
   so a second run skips the 80-110 s backfill; `--no-cache` rebuilds it);
2. for each repeat and worker count: a fresh redis-server restored from that snapshot, and
   `antifraud serve --workers N --redis URL --api-keys FILE` as a subprocess with a fresh key;
3. for each offered rate: the replay window's payments, in time order, re-stamped with unique
   transaction ids (never duplicates) and, when the window is replayed again, timestamps moved on
   by the window's length (time only moves forward, so velocity features stay realistic), sent at a
   FIXED RATE: request i is due at t0 + i/rate whatever happened to earlier ones (open loop), on
   `--connections` keep-alive connections; a due request waits for a free connection in a client
   queue. Latency is measured from the scheduled time, so queueing anywhere (client, kernel,
   server) is counted and coordinated omission is not hidden. Requests not answered by the end of
   the cell plus `--drain` seconds count as timeouts with infinite latency.

Each cell reports achieved throughput (200 answers completed inside the measured window / its
length), p50/p99/p99.9/max latency, errors and timeouts, where time goes per stage (from each
answer's `timings`: features, model, rules, the rest of the scorer, decision log; and "outside",
which is the client-observed service time minus the scorer's own stages: HTTP parsing, validation,
authentication, response serialization, metrics and event-loop waits), and CPU per request of the
client, the server workers and Redis, and the cores used meanwhile by every other process on the
machine (from /proc, so Linux only). On a shared machine each cell first waits, for at most
`--quiet-wait` seconds, until other processes use under `--quiet-cores`.

Saturation rate: the highest offered rate at which the median over repeats of the achieved
throughput is at least 95 % of the offered rate, p99 is within `--saturation-p99-ms` (default 50 ms,
the service's own time budget `ANTIFRAUD_BUDGET_MS`) and under 0.1 % of requests failed. The
highest rate meeting the latency aim (`--aim-p99-ms`, 5 ms) is reported beside it. Once a rate
delivers under 80 % of its target, higher rates are skipped for that worker count in that repeat.

The load generator is one Python process (uvloop, raw HTTP/1.1 on asyncio protocols, request bytes
built before each cell, answers parsed after it) sharing the machine's cores with the server and
Redis; `--self-test` measures what it can do against a null server, and each cell reports the
generator's own CPU per request and its dispatch lag (send time - scheduled time).
A figure, not a test. Results are also written as JSON to reports/ (`--out` to choose).
"""

# This file is the command line. The load generator, its CPU accounting and the figures of a cell
# are in `antifraud.engine.loadgen` (the reliability tests use them too), the service is started by
# `antifraud.engine.stack.ServiceStack`, and this benchmark's own steps are in `benchmarks/loadlib/` (found as
# `loadlib` because Python puts this script's directory first on sys.path).

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from loadlib.components import components
from loadlib.profiling import profile
from loadlib.report import machine, report, write_results
from loadlib.runs import matrix, self_test
from loadlib.sequential import sequential
from loadlib.snapshot import snapshot

from antifraud.engine.loadgen.replay import load_replay

DEFAULT_RATES = (250, 500, 1000, 1500, 2000, 2500, 3000)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--rates", type=int, nargs="+", default=list(DEFAULT_RATES), help="offered rates /s")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds at the rate first")
    parser.add_argument("--drain", type=float, default=3.0, help="seconds to wait for answers after a cell")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of rest between cells")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the matrix (medians reported)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument("--replay-days", type=int, default=7, help="last days of the sample to replay")
    parser.add_argument(
        "--tcp-redis", action="store_true", help="Redis over TCP 127.0.0.1, not a unix socket"
    )
    parser.add_argument(
        "--saturation-p99-ms", type=float, default=50.0, help="p99 bound of the saturation rate"
    )
    parser.add_argument("--aim-p99-ms", type=float, default=5.0, help="the latency aim")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="before each cell, wait until other processes use at most this many cores (default 0.3)",
    )
    parser.add_argument("--quiet-wait", type=float, default=5.0, help="... for at most this many seconds")
    parser.add_argument("--no-cache", action="store_true", help="rebuild the Redis snapshot")
    parser.add_argument("--quick", action="store_true", help="one repeat, 4 s cells")
    parser.add_argument("--self-test", action="store_true", help="run the generator against a null server")
    parser.add_argument(
        "--self-test-rates",
        type=int,
        nargs="+",
        default=[1000, 3000, 6000, 9000],
        help="rates for --self-test",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="py-spy profile the first --workers at this rate"
    )
    parser.add_argument(
        "--components", type=int, default=0, help="time each step in-process over this many payments"
    )
    parser.add_argument(
        "--sequential", type=int, default=0, help="send this many payments one at a time, per --workers"
    )
    parser.add_argument("--out", type=Path, help="JSON results file (default reports/load_http-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.warmup = 1, 4.0, 1.0
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine()
    print(
        f"machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, load {info['load_before']}"
    )
    print(f"code: {info['code']}")
    history, replay = load_replay(args.replay_days)
    print(f"replay window: last {args.replay_days} days of the sample, {len(replay.bodies):,} payments")
    started = time.perf_counter()
    if args.self_test:
        results = self_test(args, replay)
        write_results(args, info, results, "")
        return
    rdb = snapshot(history, replay, use_cache=not args.no_cache)
    del history
    if args.profile:
        profile(args, replay, rdb)
        return
    if args.components:
        components(args, replay, rdb)
        return
    if args.sequential:
        sequential(args, replay, rdb)
        return
    results = matrix(args, replay, rdb)
    text = report(results, args)
    print()
    print(text)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; command: {' '.join(sys.argv)}")
    write_results(args, info, results, text)


if __name__ == "__main__":
    main()
