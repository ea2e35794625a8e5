"""What the soak benchmark reads while the service runs (benchmarks/soak.py is its command line).

- `streams`, `read_state`: Redis memory and key count, the streams' lengths and the sink group's lag;
- `rss`, `sink_pids`: resident memory of processes (/proc) and which of the server's are the sink;
- `slope`: a least-squares slope;
- `breakdown`: Redis memory by key family (SCAN every key, MEMORY USAGE on a sample of each family).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import redis

# the consumer group `antifraud.engine.sink.DecisionSink` reads the streams with (its default)
SINK_GROUP = "sink"
PAGE = os.sysconf("SC_PAGE_SIZE")
# a hash-tagged key: "<ns>:{<kind>:<id>}<rest>" (an entity of features/online.py, or "tx" of a payment)
TAGGED = re.compile(r"^(?P<ns>[^:{]*):\{(?P<kind>[^:}]+):(?P<id>[^}]*)\}(?P<rest>.*)$")
# a segment of an untagged key name that names one thing rather than a family (ids, digests, times)
VARIABLE = re.compile(r"\d|^[^:]{17,}$")


@dataclass
class RedisState:
    """One reading of Redis: memory, keys, and per stream its length and the sink group's lag."""

    used_memory: int
    used_memory_rss: int
    dbsize: int
    xlen: dict[str, int]
    lag: dict[str, int | None]  # entries not yet written by the sink (None: no sink group)
    added: dict[str, int | None]  # entries ever added to the stream (XINFO STREAM entries-added)


def streams(namespace: str) -> tuple[str, str]:
    """The decision and feedback streams' key names, as engine/decisions.py names them (spelled out
    here: its class and constructor change with the Redis layout, these names do not)."""
    return f"{namespace}:decisions", f"{namespace}:feedback"


def read_state(client: redis.Redis, names: tuple[str, ...]) -> RedisState:
    """Redis memory and key count, and each stream's length, sink lag and entries added."""
    memory = cast(dict[str, int], client.info("memory"))
    xlen: dict[str, int] = {}
    lag: dict[str, int | None] = {}
    added: dict[str, int | None] = {}
    for name in names:
        xlen[name] = cast(int, client.xlen(name))
        lag[name] = group_lag(client, name)
        added[name] = None
        with contextlib.suppress(redis.ResponseError):  # no such stream yet
            info = cast(dict[str, object], client.xinfo_stream(name))
            added[name] = cast(int | None, info.get("entries-added"))
    return RedisState(
        memory["used_memory"], memory["used_memory_rss"], cast(int, client.dbsize()), xlen, lag, added
    )


def group_lag(client: redis.Redis, stream: str) -> int | None:
    """The sink group's entries not yet delivered plus those pending (None without the group;
    Redis 7's `lag`, or only `pending` where Redis cannot tell the undelivered count)."""
    try:
        groups = cast(list[dict[str, object]], client.xinfo_groups(stream))
    except redis.ResponseError:  # no such stream
        return None
    for group in groups:
        if _text(group["name"]) == SINK_GROUP:
            return int(cast(int, group.get("lag") or 0)) + int(cast(int, group["pending"]))
    return None


def sink_pids(client: redis.Redis, stream: str, candidates: list[int]) -> list[int]:
    """The candidates that are consumers of the sink group: a sink's consumer name ends in its pid
    (`antifraud.engine.sink.default_consumer`)."""
    try:
        consumers = cast(list[dict[str, object]], client.xinfo_consumers(stream, SINK_GROUP))
    except redis.ResponseError:  # no stream or no group: no sink has started
        return []
    pids = {_text(c["name"]).rpartition("-")[2] for c in consumers}
    return [p for p in candidates if str(p) in pids]


def rss(pids: list[int]) -> int:
    """Summed resident memory of processes, bytes (/proc/<pid>/statm; gone processes count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of y on x over the finite points (NaN with fewer than two)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if ok.sum() < 2 or np.ptp(xs[ok]) == 0:
        return float("nan")
    return float(np.polyfit(xs[ok], ys[ok], 1)[0])


@dataclass
class Family:
    """Keys of one name pattern: how many, how many were measured and their estimated bytes."""

    pattern: str
    kind: str  # the entity kind of a hash-tagged family ("card", "tx", ...), "" otherwise
    keys: int = 0
    sampled: list[str] = field(default_factory=list)
    sample_bytes: int = 0
    bytes: float = 0.0  # keys x the mean MEMORY USAGE of the sample


@dataclass
class Breakdown:
    """Redis memory by key family, and the number of distinct entities of each hash-tagged kind."""

    families: dict[str, Family]
    entities: dict[str, int]
    used_memory_dataset: int

    def kind_bytes(self, kind: str) -> float:
        """Estimated bytes of every family of one entity kind."""
        return sum(f.bytes for f in self.families.values() if f.kind == kind)

    def per_entity(self, kind: str) -> float:
        """Estimated bytes per entity of a kind (NaN when there is none)."""
        n = self.entities.get(kind, 0)
        return self.kind_bytes(kind) / n if n else float("nan")


def family_of(key: str) -> tuple[str, str, str]:
    """(pattern, entity kind, entity id) of a key name: `af:{card:*}:s`, "card", "<digest>"; an
    untagged key keeps its name with the segments naming one thing (ids, digests) as `*`."""
    match = TAGGED.match(key)
    if match:
        return f"{match['ns']}:{{{match['kind']}:*}}{match['rest']}", match["kind"], match["id"]
    return ":".join("*" if VARIABLE.search(part) else part for part in key.split(":")), "", ""


def breakdown(client: redis.Redis, sample: int, seed: int = 0) -> Breakdown:
    """Every key by family (one SCAN), MEMORY USAGE of up to `sample` keys per family (a uniform
    reservoir sample), each family's bytes estimated as its key count x the sample's mean."""
    rng = random.Random(seed)
    families: dict[str, Family] = {}
    entities: dict[str, set[int]] = {}
    for raw in client.scan_iter(count=10_000):
        key = cast(bytes, raw).decode(errors="replace")
        pattern, kind, entity = family_of(key)
        family = families.get(pattern) or families.setdefault(pattern, Family(pattern, kind))
        family.keys += 1
        if len(family.sampled) < sample:
            family.sampled.append(key)
        elif (slot := rng.randrange(family.keys)) < sample:
            family.sampled[slot] = key
        if kind:
            entities.setdefault(kind, set()).add(hash(entity))
    for family in families.values():
        pipe = client.pipeline(transaction=False)
        for key in family.sampled:
            # an untagged family is a few big keys (the streams): measure them whole
            pipe.memory_usage(key, samples=None if family.kind else 0)
        sizes = [int(size) for size in pipe.execute() if size is not None]
        family.sample_bytes = sum(sizes)
        family.bytes = family.keys * (sum(sizes) / len(sizes)) if sizes else 0.0
    dataset = cast(dict[str, int], client.info("memory"))["used_memory_dataset"]
    return Breakdown(families, {kind: len(ids) for kind, ids in entities.items()}, dataset)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
