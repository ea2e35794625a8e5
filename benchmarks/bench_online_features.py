"""Online features against a real redis-server on loopback: time per payment, next to a bare EVALSHA.

Prints p50/p99 of `OnlineFeatures.score` (one EVALSHA over every entity block, plus the Python
around it) and of a bare EVALSHA round trip measured in the same run, and Redis memory per active
card. A figure, not a test.  Run: .venv/bin/python benchmarks/bench_online_features.py
"""

from __future__ import annotations

import time

import numpy as np
import redis

from engine.redis_server import EmbeddedRedis
from features.online import OnlineFeatures
from features.stream import payment_record
from training.simulator import simulate


def percentiles(samples: list[float]) -> str:
    us = np.array(samples) * 1e6
    return f"p50 {np.percentile(us, 50):7.1f} us   p99 {np.percentile(us, 99):7.1f} us"


def main() -> None:
    history = simulate(days=30, cards=2000, merchants=100, seed=5)
    history = history.sort_values("timestamp", kind="stable").reset_index(drop=True)
    warm, measured = history.iloc[: len(history) - 3000], history.iloc[len(history) - 3000 :]
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        online = OnlineFeatures(client)
        online.backfill(warm)
        bare = client.register_script("return 1")
        bare_times, feature_times = [], []
        for row in range(len(measured)):
            record = payment_record(measured, row)
            t0 = time.perf_counter()
            bare(keys=["k"], args=[])
            t1 = time.perf_counter()
            online.score(record)
            t2 = time.perf_counter()
            bare_times.append(t1 - t0)
            feature_times.append(t2 - t1)
        cards = history["card_id"].nunique()
        used = int(client.info("memory")["used_memory"]) - int(client.info("memory")["used_memory_startup"])
        calls = client.info("commandstats").get("cmdstat_evalsha", {})
    print(f"payments: {len(history):,} ({len(warm):,} loaded first), active cards: {cards:,}")
    print(f"bare EVALSHA round trip        {percentiles(bare_times)}")
    print(f"features for one payment       {percentiles(feature_times)}")
    ratio = np.median(feature_times) / np.median(bare_times)
    print(f"ratio of medians               {ratio:.2f}x (aim: within 1.5x)")
    if calls:
        print(f"Redis CPU per EVALSHA          {calls['usec_per_call']:.1f} us (INFO commandstats)")
    print(f"Redis memory per active card   {used / cards:,.0f} bytes (all entities' state / cards)")


if __name__ == "__main__":
    main()
