"""Online features against a real redis-server on loopback: time per payment, next to a bare EVALSHA.

Prints p50/p99 of `OnlineFeatures.score` (one EVALSHA over every entity block, plus the Python
around it) and of a bare EVALSHA round trip measured in the same run, Redis's own time per scoring
EVALSHA and per entity block, and Redis memory per active card, in all and by key family (MEMORY
USAGE of a sample of each family, as benchmarks/soak.py reads it). A figure, not a test.
Run: .venv/bin/python benchmarks/bench_online_features.py

Redis time comes from SLOWLOG with a threshold of 0 (every command's execution time, in us): the
scoring EVALSHA of the measured payments, then the same number of later payments sent once per
entity block (each block is a complete script call on its own, as on a Redis Cluster), to say where
the time goes. The bare EVALSHA calls are left out of both.

Redis CPU per payment also comes from INFO commandstats (cmdstat_evalsha usec / calls: the time
Redis spends executing the script, without reading the request or writing the reply), reset with
CONFIG RESETSTAT before the measured loop; the bare EVALSHA calls interleaved there are taken out
with their own usec per call, measured alone in the same run, and the two are compared (issue 15:
at most 120 us per payment).

`--against DIR` runs an interleaved A/B instead: this checkout's `OnlineFeatures` against the one of
another checkout (DIR/features/online.py with its own score.lua, e.g. a worktree of main), each on
its own redis-server loaded with the same history, scoring the same payments in alternating
batches of 100, so that the load of a shared machine falls on both alike. It prints each side's
Redis time per payment (INFO commandstats) and Redis CPU per batch (INFO cpu), and memory per card.
Run: .venv/bin/python benchmarks/bench_online_features.py --against ../main-checkout
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import redis
from loadlib.soak import breakdown  # benchmarks/loadlib: the script's directory is on sys.path

from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.features.online import OnlineFeatures, to_ms
from antifraud.features.stream import payment_record
from antifraud.training.simulator import simulate

MEASURED = 3000  # payments timed with one EVALSHA each
BY_BLOCK = 1500  # later payments sent one EVALSHA per entity block
AB_BATCH = 100  # payments per turn of one side in the interleaved A/B


def percentiles(samples: list[float]) -> str:
    us = np.array(samples) * 1e6
    return f"p50 {np.percentile(us, 50):7.1f} us   p99 {np.percentile(us, 99):7.1f} us"


def _slowlog_start(client: redis.Redis) -> None:
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 200_000)
    client.slowlog_reset()


def _slowlog_scoring(client: redis.Redis, sha: str) -> list[tuple[str, float]]:
    """(entity of the first key, microseconds) of every scoring EVALSHA since the last reset."""
    out = []
    for entry in client.slowlog_get(200_000):
        command = entry["command"]
        args = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split(" ")
        if len(args) < 4 or args[0].upper() != "EVALSHA" or args[1] != sha:
            continue
        numkeys = int(args[2])
        if len(args) <= 3 + numkeys or args[3 + numkeys] != "score":
            continue
        entity = args[3].split("{", 1)[1].split(":", 1)[0]
        out.append((entity, float(entry["duration"])))
    return out


def _evalsha_usec(client: redis.Redis) -> tuple[float, int]:
    """Redis's usec executing EVALSHA and the number of calls since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0)), int(stats.get("calls", 0))


def _cpu_us(client: redis.Redis) -> float:
    info = client.info("cpu")
    return (float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])) * 1e6


def _history() -> Any:
    history = simulate(days=30, cards=2000, merchants=100, seed=5)
    return history.sort_values("timestamp", kind="stable").reset_index(drop=True)


class _Scoring(Protocol):
    def backfill(self, history: Any) -> int: ...

    def score(self, payment: Mapping[str, Any]) -> object: ...


def _other_online(checkout: Path) -> type:
    """`OnlineFeatures` of another checkout (its features/online.py reads its own score.lua)."""
    spec = importlib.util.spec_from_file_location("online_other", checkout / "features" / "online.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no features/online.py under {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["online_other"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.OnlineFeatures


def against(checkout: Path, payments: int = 4000) -> None:
    """Interleaved A/B of Redis time per payment: this checkout against `checkout`."""
    history = _history()
    warm = history.iloc[: len(history) - payments]
    records = [payment_record(history, row) for row in range(len(history) - payments, len(history))]
    with EmbeddedRedis() as server_a, EmbeddedRedis() as server_b:
        sides: list[tuple[str, redis.Redis, _Scoring]] = []
        for name, server, cls in (
            ("this", server_a, OnlineFeatures),
            (str(checkout), server_b, _other_online(checkout)),
        ):
            client = redis.Redis.from_url(server.url)
            online: _Scoring = cls(client)
            online.backfill(warm)
            client.config_resetstat()
            sides.append((name, client, online))
        per_batch: dict[str, list[float]] = defaultdict(list)
        for turn, start in enumerate(range(0, payments, AB_BATCH)):
            for name, client, online in sides if turn % 2 == 0 else sides[::-1]:
                before = _cpu_us(client)
                for record in records[start : start + AB_BATCH]:
                    online.score(record)
                per_batch[name].append((_cpu_us(client) - before) / AB_BATCH)
        cards = history["card_id"].nunique()
        print(f"{payments:,} payments in batches of {AB_BATCH}, alternately; {cards:,} active cards")
        for name, client, _ in sides:
            usec, calls = _evalsha_usec(client)
            memory = client.info("memory")
            used = int(memory["used_memory"]) - int(memory["used_memory_startup"])
            cpu = np.array(per_batch[name])
            print(
                f"  {name}: Redis us per payment {usec / calls:6.1f} (commandstats);"
                f" Redis CPU per payment, median of batches {np.median(cpu):6.1f} (INFO cpu);"
                f" memory per card {used / cards:,.0f} B"
            )


def main() -> None:
    history = _history()
    n = len(history)
    warm = history.iloc[: n - MEASURED - BY_BLOCK]
    measured = history.iloc[n - MEASURED - BY_BLOCK : n - BY_BLOCK]
    later = history.iloc[n - BY_BLOCK :]
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        online = OnlineFeatures(client)
        online.backfill(warm)
        sha = online._script.sha
        bare = client.register_script("return 1")
        bare(keys=["k"], args=[])
        _slowlog_start(client)
        client.config_resetstat()
        bare_times, feature_times = [], []
        cpu_start = _cpu_us(client)
        for row in range(len(measured)):
            record = payment_record(measured, row)
            t0 = time.perf_counter()
            bare(keys=["k"], args=[])
            t1 = time.perf_counter()
            online.score(record)
            t2 = time.perf_counter()
            bare_times.append(t1 - t0)
            feature_times.append(t2 - t1)
        cpu_measured = _cpu_us(client) - cpu_start
        evalsha_usec, evalsha_calls = _evalsha_usec(client)
        whole = [us for _, us in _slowlog_scoring(client, sha)]
        client.slowlog_reset()
        # the same script, one call per entity block: Redis time by entity. Blocks are independent
        # (each touches its own entity's keys only), so each entity's blocks are sent in a run of
        # their own, and Redis's CPU time (INFO cpu, main thread) over the run is that block's.
        blocks: dict[str, list[tuple[list[str], list[str]]]] = defaultdict(list)
        for row in range(len(later)):
            record = payment_record(later, row)
            header, keys, args, _ = online._score_blocks(record, to_ms(record["timestamp"]))
            for key, block in zip(keys, args, strict=True):
                blocks[key.split("{", 1)[1].split(":", 1)[0]].append(([key], header + block))
        cpu: dict[str, float] = {}
        for entity, calls in blocks.items():
            before = _cpu_us(client)
            for call_keys, call_args in calls:
                online._script(keys=call_keys, args=call_args)
            cpu[entity] = (_cpu_us(client) - before) / len(later)
        client.config_resetstat()
        before = _cpu_us(client)
        for _ in range(len(later)):
            bare(keys=["k"], args=[])
        cpu_bare = (_cpu_us(client) - before) / len(later)
        bare_usec, bare_calls = _evalsha_usec(client)
        per_block: dict[str, list[float]] = defaultdict(list)
        for entity, us in _slowlog_scoring(client, sha):
            per_block[entity].append(us)
        client.config_set("slowlog-log-slower-than", 10_000)
        client.slowlog_reset()
        cards = history["card_id"].nunique()
        memory = client.info("memory")
        used = int(memory["used_memory"]) - int(memory["used_memory_startup"])
        families = breakdown(client, sample=2000)
    print(f"payments: {n:,} ({len(warm):,} loaded first), active cards: {cards:,}")
    print(f"bare EVALSHA round trip        {percentiles(bare_times)}")
    print(f"features for one payment       {percentiles(feature_times)}")
    ratio = np.median(feature_times) / np.median(bare_times)
    print(f"ratio of medians               {ratio:.2f}x (aim: within 1.5x)")
    print(
        f"Redis time per scoring EVALSHA mean {np.mean(whole):6.1f} us   p50 {np.median(whole):6.1f} us"
        f"   ({len(whole):,} calls, SLOWLOG)"
    )
    print(
        f"by entity block: {len(later):,} later payments, one EVALSHA per block, each entity in its own run"
    )
    print("  Redis CPU us per payment (INFO cpu, main thread) / p50 us of one call (SLOWLOG) / calls")
    total = 0.0
    for entity, us in cpu.items():
        total += us
        print(f"  {entity:14s} {us:6.1f} / {np.median(per_block[entity]):6.1f} / {len(per_block[entity]):,}")
    print(f"  {'all blocks':14s} {total:6.1f}   (a bare EVALSHA 'return 1': {cpu_bare:.1f} per call)")
    scoring_cpu = cpu_measured / len(measured) - cpu_bare
    print(
        f"Redis CPU per payment, one EVALSHA of all blocks: {scoring_cpu:.1f} us"
        " (INFO cpu, less the bare call)"
    )
    bare_per_call = bare_usec / bare_calls
    # the measured loop ran one bare EVALSHA beside each scoring one: take those out
    scoring_usec = (evalsha_usec - (evalsha_calls - len(measured)) * bare_per_call) / len(measured)
    print(
        f"Redis CPU per payment (INFO commandstats, cmdstat_evalsha usec / calls): {scoring_usec:.1f} us;"
        f" a bare EVALSHA {bare_per_call:.1f} us; ratio {scoring_usec / bare_per_call:.1f}x"
        " (aim: at most 120 us per payment)"
    )
    print(f"Redis memory per active card   {used / cards:,.0f} bytes (all entities' state / cards)")
    print("  by key family (MEMORY USAGE of up to 2,000 keys each, x keys): keys, bytes per key, per card")
    for family in sorted(families.families.values(), key=lambda f: -f.bytes):
        per_key = family.bytes / family.keys
        print(f"  {family.pattern:34s} {family.keys:>7,} {per_key:>8,.0f} {family.bytes / cards:>8,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout: interleaved A/B against it")
    options = parser.parse_args()
    if options.against:
        against(options.against.resolve())
    else:
        main()
