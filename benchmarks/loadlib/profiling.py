"""A py-spy profile of each worker while the service takes a fixed rate, and where its samples fall."""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from antifraud.engine.loadgen.client import run_async, run_cell
from antifraud.engine.loadgen.cpu import wait_quiet
from antifraud.engine.loadgen.replay import Replay, RequestSource
from antifraud.engine.loadgen.stats import fmt, summarize
from antifraud.engine.settings import ROOT

from .runs import KEY_NAME, load_stack

REPORTS = ROOT / "reports"


def profile(args: argparse.Namespace, replay: Replay, rdb: Path) -> None:
    """py-spy record of each worker while the service takes `--profile` payments/s; prints the top."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy (not a project dependency)")
    rate = args.profile
    workers = args.workers[0]
    with load_stack(rdb, workers, args.tcp_redis) as stack:
        source = RequestSource(replay, "127.0.0.1", stack.port, stack.keys[KEY_NAME], "profile")
        pids = {**stack.cpu_pids(), "client": [os.getpid()]}
        warm = source.take(int(rate * 2))
        run_async(run_cell(stack.port, warm, rate, 0, args.connections, args.drain, pids))
        others = wait_quiet([p for role in pids.values() for p in role], args.quiet_cores, args.quiet_wait)
        print(f"others use {others:.2f} cores before the profile")
        out_dir = REPORTS / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        spies = []
        for pid in pids["server"]:
            raw = out_dir / f"worker-{workers}w-{rate}rps-{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
            command += ["--duration", str(int(args.duration)), "--nonblocking", "--output", str(raw)]
            spies.append(
                (raw, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            )
        time.sleep(1.0)  # py-spy attaching
        requests = source.take(int(rate * args.duration))
        cell, first, last = run_async(
            run_cell(stack.port, requests, rate, 0, args.connections, args.drain, pids)
        )
        result = summarize(cell, first, last, workers, 0, [])
        for _, spy in spies:
            spy.wait(timeout=60)
    print(
        f"profiled {workers} worker(s) at {rate}/s: achieved {result.achieved:,.0f}/s p50 {fmt(result.p50)} "
        f"p99 {fmt(result.p99)} ms, server CPU {result.cpu_util['server']:.2f} cores "
        f"({result.cpu_us_per_request['server']:.0f} us/request)"
    )
    for raw, _ in spies:
        if raw.exists():
            print(f"\n{raw.relative_to(ROOT)}\n")
            print(profile_summary(raw))
        else:
            print(f"\npy-spy wrote no {raw.name}: can it ptrace the worker (root or CAP_SYS_PTRACE)?")


# Inclusive share of samples whose stack passes through a frame matching each pattern (first match
# wins per category, checked in this order on each stack). Patterns name public methods and
# libraries' modules, so they keep matching while the private helpers they call change.
PROFILE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("decision log: orjson + SET/XADD script", r"put \(engine/decisions"),
    # after the decision log: the Redis calls left are the features' (and rare duplicate lookups)
    ("features: Redis EVALSHA (socket wait incl.)", r"\(redis/"),
    ("features: Python around it (args, derive)", r"score \(features/online"),
    ("model: LightGBM predict_one", r"predict_one \(engine/model"),
    ("rules: decide + env", r"decide \(|_rule_env"),
    ("scorer: the rest (model_dump, decision dict)", r"score \(engine/pipeline"),
    ("metrics: prometheus observe", r"observe \(engine/metrics"),
    ("request: body read + model_validate_json", r"body \(starlette/requests|model_validate_json"),
    ("response: Response + send (orjson itself is in the route's own time)", r"\(starlette/responses"),
    ("auth: API key check", r"authenticate \(engine/auth"),
    ("HTTP protocol (httptools/uvicorn)", r"httptools_impl|h11_impl"),
)


def profile_summary(raw: Path, top: int = 25) -> str:
    """Categories (inclusive) and hottest functions (own time) of a py-spy raw (collapsed) profile."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack and samples.isdigit():
            stacks.append((stack.split(";"), int(samples)))
    total = sum(c for _, c in stacks) or 1
    patterns = [(name, re.compile(p)) for name, p in PROFILE_CATEGORIES]
    category: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        for name, pattern in patterns:
            if any(pattern.search(f) for f in frames):
                category[name] += count
                break
        else:
            category["other (event loop, ASGI/Starlette/FastAPI routing, GC...)"] += count
        own[_short(frames[-1])] += count
    lines = [f"{total:,} samples (active Python time only)", "", "| where | share |", "|---|---:|"]
    lines += [f"| {name} | {100 * c / total:.1f} % |" for name, c in category.most_common()]
    lines += ["", "| own time, top functions | share |", "|---|---:|"]
    lines += [f"| `{name}` | {100 * c / total:.1f} % |" for name, c in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    where = re.sub(r".*/site-packages/", "", where)
    where = re.sub(r".*/lib/python3\.\d+/", "", where)
    where = where.replace(str(ROOT) + "/", "")
    where = re.sub(r":\d+$", "", where)
    return f"{name} ({where})"
