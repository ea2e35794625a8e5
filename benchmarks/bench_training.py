"""Training at scale: time and peak memory of `antifraud train` on about 2,000,000 simulated payments.

A figure, not a test. Run: .venv/bin/python benchmarks/bench_training.py [cards]
(the default, 32,000 cards over 60 days, gives about two million payments).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from antifraud.training.history import write_history
from antifraud.training.simulator import simulate
from antifraud.training.train import train


def main() -> None:
    cards = int(sys.argv[1]) if len(sys.argv) > 1 else 32_000
    with tempfile.TemporaryDirectory(prefix="antifraud-bench-") as tmp:
        t0 = time.perf_counter()
        history = simulate(days=60, cards=cards, merchants=2000, seed=11)
        path = Path(tmp) / "history.parquet"
        write_history(history, path)
        rows = len(history)
        del history
        t1 = time.perf_counter()
        artifact = train(path, date(2026, 1, 1), date(2026, 2, 19), Path(tmp) / "model", report=False)
        t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    counts = artifact.metadata["counts"]
    print(f"history: {rows:,} payments ({cards:,} cards, 60 days), simulated and written in {t1 - t0:.0f} s")
    fitted, validated = counts["train"]["payments"], counts["validation"]["payments"]
    print(
        f"train: {fitted:,} training + {validated:,} validation rows, features over all {rows:,}; "
        f"{t2 - t1:.0f} s in all, peak memory {peak:.1f} GiB"
    )
    print(
        f"trees: {artifact.metadata['num_trees']}, validation AP "
        f"{artifact.metadata['validation_metrics']['average_precision']:.3f}"
    )


if __name__ == "__main__":
    main()
