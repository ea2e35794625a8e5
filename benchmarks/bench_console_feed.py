"""The console's sink hook (engine/review/feed.py): what it adds to the decision sink per decision.

    .venv/bin/python benchmarks/bench_console_feed.py [--decisions 20000] [--rounds 3]

`ConsoleFeed.after_write` on batches of 1,000 decisions shaped as the service logs them (the spec's
features by name, reasons, timings), with the demo day's verdict mix (0.15 % review, 0.7 % block,
the rest allow or challenge), against a real redis-server: the statistics' pipeline per batch, the
review queue's script per review, and (second line) the webhook outbox's publish per review and
block with an endpoint subscribed to every event. Prints the sink's CPU per decision (process time;
Redis's own is not in it) and wall time, per round and the median. A figure, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis

from antifraud.engine.decision_record import Decision
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.review.feed import ConsoleFeed
from antifraud.engine.review.queue import ReviewQueue
from antifraud.engine.stats import Stats
from antifraud.engine.store import Logged
from antifraud.engine.webhooks.outbox import Outbox
from antifraud.features.spec import load_spec

BATCH = 1000


def decisions(count: int) -> list[Logged]:
    """`count` decisions: every 667th a review, every 143rd a block, every 50th a challenge."""
    names = load_spec().feature_names
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        verdict = (
            "review" if i % 667 == 0 else "block" if i % 143 == 0 else "challenge" if i % 50 == 0 else "allow"
        )
        fired = (
            [{"rule": "big_amount", "action": verdict, "reason": "BIG"}]
            if verdict in ("review", "block")
            else []
        )
        decision: dict[str, Any] = {
            "transaction_id": f"tx-{i}",
            "verdict": verdict,
            "score": 0.01,
            "risk_score": 60 if verdict == "review" else 10,
            "reasons": {"rules": fired, "shadow_rules": [], "skipped_rules": ["deny_listed_ip"], "model": []},
            "model_version": "m-1",
            "rules_version": "r-1",
            "degraded": [],
            "timings": {"features_ms": 0.4, "model_ms": 0.1, "rules_ms": 0.05, "total_ms": 0.8 + (i % 7) / 3},
            "test": False,
            "timestamp": (now - timedelta(seconds=count - i)).isoformat(),
            "decided_at": (now - timedelta(seconds=(count - i) / 500)).isoformat(),
            "payment": {"card_id": f"card_{i % 3000}", "merchant_id": f"m_{i % 300}", "channel": "ecom"},
            "amount": 42.5,
            "currency": "EUR",
            "features": {name: float(j) for j, name in enumerate(names)},
        }
        out.append(Logged(f"{i}-0", cast(Decision, decision)))
    return out


def one_round(client: redis.Redis, batch: list[Logged], outbox: bool) -> tuple[float, float]:
    """CPU and wall microseconds per decision of feeding every batch once, on an emptied Redis."""
    client.flushall()
    feed = ConsoleFeed(
        ReviewQueue(client), Stats(client), Outbox(client, lambda _t: True) if outbox else None
    )
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(batch), BATCH):
        feed.after_write(batch[start : start + BATCH], ())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / len(batch) * 1e6, wall / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batch = decisions(args.decisions)
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        for outbox in (False, True):
            label = "outbox on " if outbox else "outbox off"
            rounds = [one_round(client, batch, outbox) for _ in range(args.rounds)]
            for i, (cpu, wall) in enumerate(rounds, 1):
                print(f"{label} round {i}: {cpu:.2f} us CPU, {wall:.2f} us wall per decision")
            cpu = statistics.median(r[0] for r in rounds)
            wall = statistics.median(r[1] for r in rounds)
            print(f"{label} median: {cpu:.2f} us CPU, {wall:.2f} us wall per decision")
        client.close()


if __name__ == "__main__":
    main()
