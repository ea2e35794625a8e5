"""Offline features: payments per second over a simulated history. A figure, not a test.

Run: .venv/bin/python benchmarks/bench_offline_features.py [cards]   (default: 1,000,000 payments)
"""

from __future__ import annotations

import resource
import sys
import time

from antifraud.features.offline import OfflineFeatures
from antifraud.training.simulator import simulate


def main() -> None:
    cards = int(sys.argv[1]) if len(sys.argv) > 1 else 12_000
    t0 = time.perf_counter()
    history = simulate(days=60, cards=cards, merchants=1000, seed=3)
    history = history.sort_values("timestamp", kind="stable").reset_index(drop=True)
    t1 = time.perf_counter()
    features = OfflineFeatures().transform(history)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"simulated {len(history):,} payments in {t1 - t0:.1f} s")
    print(
        f"features: {features.shape[1] - 1} x {len(history):,} payments in {t2 - t1:.1f} s "
        f"= {len(history) / (t2 - t1):,.0f} payments/s; peak memory {peak:.1f} GiB"
    )


if __name__ == "__main__":
    main()
