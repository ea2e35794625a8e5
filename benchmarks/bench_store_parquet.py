"""The Parquet store as a day collects files: write cost per batch, and reads before and after compaction.

    .venv/bin/python benchmarks/bench_store_parquet.py [--batches 1000] [--size 100] [--dir /tmp/x]

Writes --batches batches of --size decisions (the spec's 87 features each) into one day, one file per
batch as the sink writes them, twice: with the idempotency check reading every file of the day (the
store before its check was narrowed, obtained here with a clock margin longer than the day) and with
no margin (the default margin, 60 s, adds the files of the last minute: at one file a second,
the first run's cost at about 60 files). Prints the mean write time per batch by how many files the
day held, then the time of `decision()` and `search` on the day's files, before and after `compact()`.
A figure, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from antifraud.engine.decision_record import Decision
from antifraud.engine.store import DecisionQuery, Logged
from antifraud.engine.store.parquet import ParquetStore
from antifraud.features.spec import load_spec

FEATURES = load_spec().feature_names
DAY = datetime(2026, 3, 1, tzinfo=UTC)


def decision(i: int) -> Decision:
    """A decision as the pipeline logs it, with every feature of the spec."""
    moment = DAY + timedelta(milliseconds=i * 3)
    return cast(
        Decision,
        {
            "transaction_id": f"tx-{i}",
            "verdict": ("allow", "review", "block", "challenge")[i % 4],
            "score": (i % 100) / 100,
            "risk_score": i % 100,
            "reasons": {"rules": [], "shadow_rules": [], "skipped_rules": [], "model": []},
            "model_version": "m-1",
            "rules_version": "r-1",
            "degraded": [],
            "timestamp": moment.isoformat(),
            "decided_at": (moment + timedelta(milliseconds=3)).isoformat(),
            "payment": {"card_id": f"card_{i % 5000}", "merchant_id": f"m_{i % 70}", "channel": "ecom"},
            "amount": float(i % 500) + 0.5,
            "currency": "EUR",
            "features": {
                name: (None if (i + k) % 11 == 0 else float(i + k)) for k, name in enumerate(FEATURES)
            },
            "timings": {"total_ms": 1.5},
            "test": False,
        },
    )


def fill(store: ParquetStore, batches: int, size: int) -> list[float]:
    """Write the batches (stream ids stamped just before each write, as the sink's are); each one's time."""
    times: list[float] = []
    for b in range(batches):
        now_ms = int(time.time() * 1000)
        batch = [Logged(f"{now_ms}-{k}", decision(b * size + k)) for k in range(size)]
        started = time.perf_counter()
        store.write(batch, [])
        times.append(time.perf_counter() - started)
    return times


def timed(read: Callable[[], object], repeat: int = 5) -> float:
    """The median time of a read, in ms."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        read()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def reads(store: ParquetStore, total: int) -> None:
    """Time `decision()` and `search` on the day's files, then compact the day and time them again."""
    probe = [f"tx-{i}" for i in (0, total // 2, total - 1)]
    query = DecisionQuery(card_id="card_42", limit=100)
    for when in ("before compaction", "after compaction"):
        if when == "after compaction":
            started = time.perf_counter()
            merged = store.compact(date(2026, 3, 1))
            print(f"compact(): {merged} files into one in {time.perf_counter() - started:.1f} s")
        files = len(list((store.root / "decisions" / "day=2026-03-01").glob("*.parquet")))
        hit = timed(lambda: [store.decision(t) for t in probe]) / len(probe)
        miss = timed(lambda: store.decision("tx-none"))
        found = timed(lambda: store.search(query))
        print(
            f"{when} ({files} files, {total:,} decisions): decision() {hit:.1f} ms "
            f"(absent id {miss:.1f} ms), search(card, limit 100) {found:.1f} ms"
        )


def main() -> None:
    """Run both stores and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench-store-"))
    step = max(1, args.batches // 10)
    for label, margin in (
        ("every file of the day (before)", 10**12),
        ("files since the entries, margin 0 (after)", 0),
    ):
        store = ParquetStore(base / label.split()[0], clock_margin_ms=margin)
        times = fill(store, args.batches, args.size)
        print(f"\nwrite, batches of {args.size} into one day, check reading {label}:")
        for start in range(0, args.batches, step):
            chunk = times[start : start + step]
            mean = statistics.mean(chunk)
            files = f"{start:>5}-{start + len(chunk):<5}"
            print(f"  files {files} {mean * 1000:7.1f} ms/batch {args.size / mean:8,.0f} decisions/s")
        if margin == 0:
            reads(store, args.batches * args.size)
        store.close()


if __name__ == "__main__":
    main()
