"""The benchmark's cells: the matrix of worker counts x rates x repeats, and the generator's self-test."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from antifraud.engine.loadgen.client import run_async, run_cell
from antifraud.engine.loadgen.cpu import cpu_seconds, wait_quiet
from antifraud.engine.loadgen.replay import Replay, RequestSource
from antifraud.engine.loadgen.stats import CellResult, fmt, summarize
from antifraud.engine.settings import ROOT
from antifraud.engine.stack import ServiceStack, free_port

KEY_NAME = "loadtest"


def load_stack(rdb: Path, workers: int, tcp_redis: bool) -> ServiceStack:
    """redis-server restored from the snapshot and `antifraud serve` with N workers and a fresh key
    (stdout discarded, stderr in the stack's server.log); use it as a context manager."""
    return ServiceStack(
        workers=workers,
        tcp_redis=tcp_redis,
        rdb=rdb,
        keys={KEY_NAME: "scorer"},
        output="errors",
        prefix="antifraud-load-",
    )


def redis_command_stats(stack: ServiceStack, reset: bool = False) -> dict[str, float]:
    """usec_per_call of the scripts Redis ran since the last reset."""
    assert stack.redis is not None
    client = redis.Redis(unix_socket_path=str(stack.redis.socket))
    try:
        if reset:
            client.config_resetstat()
            return {}
        stats: dict[str, dict[str, float]] = client.info("commandstats")  # type: ignore[assignment]
        return {
            name.removeprefix("cmdstat_"): float(v["usec_per_call"])
            for name, v in stats.items()
            if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_set", "cmdstat_xadd")
        }
    finally:
        client.close()


def matrix(args: argparse.Namespace, replay: Replay, rdb: Path) -> list[CellResult]:
    """Every repeat x worker count x rate; prints each cell as it finishes.

    Worker counts are interleaved within each repeat, so slow drifts in the load of a shared machine
    touch them alike.
    """
    results: list[CellResult] = []
    for repeat, workers in ((r, w) for r in range(args.repeats) for w in args.workers):
        with load_stack(rdb, workers, args.tcp_redis) as stack:
            source = RequestSource(
                replay, "127.0.0.1", stack.port, stack.keys[KEY_NAME], f"r{repeat}w{workers}"
            )
            pids = {**stack.cpu_pids(), "client": [os.getpid()]}
            for rate in args.rates:
                warm = int(rate * args.warmup)
                requests = source.take(warm + int(rate * args.duration))
                ours = [p for role in pids.values() for p in role]
                others = wait_quiet(ours, args.quiet_cores, args.quiet_wait)
                if others > args.quiet_cores:
                    print(f"  the machine is busy: others use {others:.2f} cores; measuring anyway")
                redis_command_stats(stack, reset=True)
                workers_before = [cpu_seconds([p]) for p in pids["server"]]
                cell, first, last = run_async(
                    run_cell(stack.port, requests, rate, warm, args.connections, args.drain, pids)
                )
                spent = [cpu_seconds([p]) - b for p, b in zip(pids["server"], workers_before, strict=True)]
                shares = [s / max(1e-9, sum(spent)) for s in spent]
                result = summarize(cell, first, last, workers, repeat, shares)
                result.redis_us_per_call = redis_command_stats(stack)
                results.append(result)
                print(
                    f"repeat {repeat + 1} workers {workers} rate {rate:>5,}/s: achieved "
                    f"{result.achieved:7,.0f}/s  p50 {fmt(result.p50):>7}  p99 {fmt(result.p99):>7}  "
                    f"p99.9 {fmt(result.p999):>7} ms  errors {result.errors} timeouts {result.timeouts}  "
                    f"CPU server {result.cpu_util.get('server', 0):.2f} "
                    f"redis {result.cpu_util.get('redis', 0):.2f} "
                    f"client {result.cpu_util.get('client', 0):.2f} "
                    f"others {result.cpu_util.get('others', 0):.2f}",
                    flush=True,
                )
                time.sleep(args.pause)
                if result.achieved < 0.8 * rate:
                    print(f"  saturated: skipping higher rates for {workers} worker(s) in this repeat")
                    break
    return results


def self_test(args: argparse.Namespace, replay: Replay) -> list[CellResult]:
    """The generator against a null server (another process, same cores): what it can send."""
    port = free_port()
    command = [sys.executable, "-m", "antifraud.engine.loadgen.nullserver", str(port)]
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        source = RequestSource(replay, "127.0.0.1", port, "x", "selftest")
        pids = {"server": [server.pid], "client": [os.getpid()]}
        results = []
        for rate in args.self_test_rates:
            requests = source.take(int(rate * (args.warmup + args.duration)))
            cell, first, last = run_async(
                run_cell(port, requests, rate, int(rate * args.warmup), args.connections, args.drain, pids)
            )
            result = summarize(cell, first, last, 0, 0, [1.0])
            results.append(result)
            print(
                f"null server, rate {rate:>6,}/s: achieved {result.achieved:8,.0f}/s  p50 {fmt(result.p50)}  "
                f"p99 {fmt(result.p99)}  p99.9 {fmt(result.p999)} ms  lag p50/p99 {fmt(result.lag_p50)}/"
                f"{fmt(result.lag_p99)} ms  others {result.cpu_util['others']:.2f} cores, "
                f"client CPU {result.cpu_util['client']:.2f} cores "
                f"({result.cpu_us_per_request['client']:.0f} us/request), null server "
                f"{result.cpu_util['server']:.2f}",
                flush=True,
            )
        return results
    finally:
        server.terminate()
        server.wait()
