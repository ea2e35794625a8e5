"""What one payment's model contributions (TreeSHAP) cost: Booster.predict against the fast path.

    .venv/bin/python benchmarks/bench_contributions.py [--model models/default] [--calls 2000] [--rounds 5]

The service adds the top model contributions to review, challenge and block answers
(engine/pipeline.py), through `ModelRuntime.contributions`, LightGBM's single-row C API fast path
with the contrib predict type. This prints, per call, the median time of:

- `Booster.predict(row, pred_contrib=True, num_threads=1)`: what the service used before;
- `ModelRuntime.contribution_values(row)`: the fast path alone;
- `ModelRuntime.contributions(row)`: the fast path and the top 5 as the answer carries them;
- `ModelRuntime.predict_one(row)`: a prediction, for scale.

The methods run interleaved in rounds (each round times every method over the same rows, in a
rotated order), so that a busy neighbour slows them all alike; the figure is the median of the
per-round medians. Rows are the model's features drawn at random with 20 % missing: TreeSHAP's cost
follows the trees' shape (leaves, depth), not the values. A figure, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from antifraud.engine.model import ModelRuntime


def _median_us(call: Callable[[np.ndarray], Any], rows: np.ndarray) -> float:
    times = []
    for row in rows:
        t = time.perf_counter_ns()
        call(row)
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def main() -> None:
    """Parse the arguments, time every method in interleaved rounds, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--calls", type=int, default=2000, help="rows per method per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    model = ModelRuntime(args.model)
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(args.calls, len(model.feature_names)))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    booster = model.booster
    methods: dict[str, Callable[[np.ndarray], Any]] = {
        "Booster.predict(pred_contrib=True)": lambda r: booster.predict(
            r.reshape(1, -1), pred_contrib=True, num_threads=1
        ),
        "fast path: contribution_values": model.contribution_values,
        "fast path + top 5: contributions": model.contributions,
        "predict_one (a prediction, for scale)": model.predict_one,
    }
    # the numbers must be the same before their speed means anything
    ref = booster.predict(rows[:200], pred_contrib=True, num_threads=1)
    fast = np.array([model.contribution_values(r).copy() for r in rows[:200]])
    assert np.array_equal(ref, fast), "the fast path's contributions differ from Booster.predict's"

    names = list(methods)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for k in range(args.rounds):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            per_round[name].append(_median_us(methods[name], rows))
    trees = booster.num_trees()
    print(
        f"model {model.version}: {trees} trees, {len(model.feature_names)} features; {args.calls} calls x "
        f"{args.rounds} interleaved rounds; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}"
    )
    for name in names:
        rounds = per_round[name]
        print(
            f"  {name:40s} median {statistics.median(rounds):8.1f} µs/call  (rounds: "
            + ", ".join(f"{r:.1f}" for r in rounds)
            + ")"
        )


if __name__ == "__main__":
    main()
