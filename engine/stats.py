"""Running totals of decisions in 5-minute buckets, for the console's day page and rule hits.

The decision sink's after-write hook (engine/review/feed.py) adds each written batch: one hash per 5
minutes of decision time, `{ns}:stats:<epoch_s // 300>`, kept 2 days and 1 hour, with the fields
`n` (decisions), `v:<verdict>`, `r:<rule>` and `s:<rule>` (live and shadow rules that fired), `deg`
(degraded answers) and `lat:<i>`, the server-side `timings.total_ms` counted in LATENCY_EDGES_MS's
buckets. Nothing runs on the scoring path, and a page reads a day with 288 HGETALL in one pipeline,
never a scan of the store.

A batch the sink writes again after a crash (its hook raised, or the sink died after the hook) is
counted again: these are figures for a glance; the store stays the record.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

import redis

from antifraud.engine.decision_record import Decision

BUCKET_S = 300
#: how long a bucket is kept after its own time: a day page reaches back to midnight, a rule's hits 24 h
KEEP_S = 2 * 86_400 + 3_600
#: the upper edges of the latency buckets, in ms; the last bucket (index len(LATENCY_EDGES_MS)) is +inf
LATENCY_EDGES_MS = (0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 100)


@dataclass(frozen=True)
class Totals:
    """The sums of a window: decisions, by verdict, rule hits (live, shadow), degraded, latency."""

    n: int = 0
    verdicts: Mapping[str, int] = field(default_factory=dict)
    rules: Mapping[str, int] = field(default_factory=dict)
    shadow_rules: Mapping[str, int] = field(default_factory=dict)
    degraded: int = 0
    #: decisions per latency bucket: index i counts total_ms <= LATENCY_EDGES_MS[i] (the last: above)
    latency: tuple[int, ...] = (0,) * (len(LATENCY_EDGES_MS) + 1)

    def latency_bound(self, q: float) -> float | None:
        """The upper edge (ms) of the bucket holding the q-quantile of latency (inf above the last
        edge); None when no decision was timed."""
        total = sum(self.latency)
        if not total:
            return None
        rank, seen = q * total, 0
        for i, count in enumerate(self.latency):
            seen += count
            if seen >= rank and count:
                return LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else float("inf")
        return float("inf")


def latency_bucket(total_ms: float) -> int:
    """The index of the latency bucket of one decision's server-side time."""
    return bisect.bisect_left(LATENCY_EDGES_MS, total_ms)


def bucket_of(when: datetime) -> int:
    """The 5-minute bucket of a time (its epoch seconds // BUCKET_S)."""
    return int(when.timestamp()) // BUCKET_S


def _fields(decision: Decision) -> Iterable[str]:
    yield "n"
    yield f"v:{decision['verdict']}"
    reasons = decision["reasons"]
    for fired in reasons.get("rules", ()):
        yield f"r:{fired['rule']}"
    for fired in reasons.get("shadow_rules", ()):
        yield f"s:{fired['rule']}"
    if decision.get("degraded"):
        yield "deg"
    total_ms = decision.get("timings", {}).get("total_ms")
    if total_ms is not None:
        yield f"lat:{latency_bucket(total_ms)}"


class Stats:
    """The 5-minute buckets in Redis: `add` a written batch, read a `window`."""

    def __init__(self, client: redis.Redis, namespace: str = "af") -> None:
        self.client = client
        self.prefix = f"{namespace}:stats:"

    def add(self, decisions: Iterable[Decision]) -> None:
        """Count a batch of decisions in the buckets of their `decided_at`: one pipeline."""
        sums: dict[int, Counter[str]] = {}
        for decision in decisions:
            bucket = bucket_of(datetime.fromisoformat(decision["decided_at"]))
            sums.setdefault(bucket, Counter()).update(_fields(decision))
        if not sums:
            return
        pipe = self.client.pipeline(transaction=False)
        for bucket, counts in sums.items():
            key = f"{self.prefix}{bucket}"
            for name, count in counts.items():
                pipe.hincrby(key, name, count)
            pipe.expireat(key, (bucket + 1) * BUCKET_S + KEEP_S)
        pipe.execute()

    def window(self, start: datetime, end: datetime) -> Totals:
        """The sums of every bucket that overlaps [start, end)."""
        first, last = bucket_of(start), bucket_of(end - timedelta(microseconds=1))
        pipe = self.client.pipeline(transaction=False)
        for bucket in range(first, last + 1):
            pipe.hgetall(f"{self.prefix}{bucket}")
        sums: Counter[str] = Counter()
        for found in cast(list[dict[bytes, bytes]], pipe.execute()):
            sums.update({k.decode(): int(v) for k, v in found.items()})
        return totals_of(sums)


def totals_of(sums: Mapping[str, int]) -> Totals:
    """The `Totals` of summed bucket fields."""

    def prefixed(prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: v for k, v in sums.items() if k.startswith(prefix)}

    latency = prefixed("lat:")
    return Totals(
        n=sums.get("n", 0),
        verdicts=prefixed("v:"),
        rules=prefixed("r:"),
        shadow_rules=prefixed("s:"),
        degraded=sums.get("deg", 0),
        latency=tuple(latency.get(str(i), 0) for i in range(len(LATENCY_EDGES_MS) + 1)),
    )
