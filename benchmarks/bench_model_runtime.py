"""One payment's model score: LightGBM's single-row fast path against the model compiled by lleaves.

    .venv/bin/python benchmarks/bench_model_runtime.py [--model models/default] [--rows 4000] [--rounds 7]

Prints, for the model given:

- the compile: wall time and peak memory (max RSS) of `python -m antifraud.engine.compiled_model`,
  run in a child process on a copy of the model directory (so the cached artifact is not reused);
- loading the cached artifact into `ModelRuntime` (the cost at a worker's start once it exists):
  time and resident memory added;
- per row, p50 and p99 of `ModelRuntime.predict_one` on the LightGBM path and on the compiled path
  (the native function called through ctypes on the runtime's preallocated float64 buffer), run
  interleaved in rounds (each round times both over the same rows, in alternating order, so that a
  busy neighbour slows both alike): the medians over rounds of each round's p50 and p99;
- the largest absolute difference between the two on every row and between the compiled scores
  and `Booster.predict`.

Rows are real: the offline features (features/offline.py) of the last `--rows` payments of
data/sample/history.parquet (~6 s to compute), missing values included, plus as many rows drawn
over each feature's recorded range with 15 % missing (engine/compiled_model.check_rows).
A figure, not a test. Needs lleaves (pip install 'antifraud[compiled]').
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from antifraud.engine.compiled_model import RuntimeChoice, check_rows, toolchain
from antifraud.engine.model import ModelRuntime


def _sample_rows(history: Path, count: int, feature_names: list[str]) -> np.ndarray:
    from antifraud.features.offline import compute_features
    from antifraud.training.dataset import read_history

    features = compute_features(read_history(history))
    return features[feature_names].to_numpy(dtype=np.float64)[-count:]


def _times_ns(call: Callable[[np.ndarray], float], rows: np.ndarray) -> list[int]:
    times = []
    clock = time.perf_counter_ns
    for row in rows:
        t = clock()
        call(row)
        times.append(clock() - t)
    return times


def _pct(times: list[int], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def _rss_mib() -> float:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _compile_in_child(model: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of compiling a copy of `model` in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / model.name
        shutil.copytree(model, copy, ignore=shutil.ignore_patterns("compiled"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "antifraud.engine.compiled_model", str(copy)],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: this is the only big one
    return seconds, max(peak, before) / 1024


def main() -> None:
    """Parse the arguments, compile, time both paths interleaved, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--history", type=Path, default=Path("data/sample/history.parquet"))
    parser.add_argument("--rows", type=int, default=4000, help="real rows (and as many drawn ones)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-compile-figure", action="store_true", help="do not time a fresh compile")
    args = parser.parse_args()
    if toolchain() is None:
        sys.exit("lleaves is not installed: pip install 'antifraud[compiled]'")

    if not args.skip_compile_figure:
        seconds, peak_mib = _compile_in_child(args.model)
        print(f"compile ({toolchain()}): {seconds:.1f} s wall, peak RSS {peak_mib:.0f} MiB (child process)")

    plain = ModelRuntime(args.model, runtime=RuntimeChoice.LIGHTGBM)
    # the artifact of the model itself (a no-op when cached), in a child: this process stays a worker's
    subprocess.run([sys.executable, "-m", "antifraud.engine.compiled_model", str(args.model)], check=True)
    rss = _rss_mib()
    started = time.perf_counter()
    compiled = ModelRuntime(args.model, runtime=RuntimeChoice.COMPILED)
    load_ms = (time.perf_counter() - started) * 1000
    assert compiled.runtime == "compiled" and compiled.compiled is not None
    print(
        f"a worker's load with the cached artifact: +{load_ms:.0f} ms, +{_rss_mib() - rss:.0f} MiB RSS "
        "(second model runtime, llvmlite, the check against LightGBM)"
    )

    real = _sample_rows(args.history, args.rows, plain.feature_names)
    drawn = check_rows(args.model.joinpath("model.txt").read_text(), count=args.rows, seed=11)
    rows = np.vstack([real, drawn])
    reference = np.asarray(plain.booster.predict(rows, num_threads=1))
    fast = np.array([plain.predict_one(r) for r in rows])
    native = np.array([compiled.predict_one(r) for r in rows])
    print(
        f"max |compiled - LightGBM fast path|: real rows {np.max(np.abs(native - fast)[: len(real)]):.2e}, "
        f"drawn rows {np.max(np.abs(native - fast)[len(real) :]):.2e}; "
        f"max |compiled - Booster.predict| {np.max(np.abs(native - reference)):.2e}; "
        f"fast path = Booster.predict: {np.array_equal(fast, reference)}"
    )

    methods: dict[str, Callable[[np.ndarray], float]] = {
        "LightGBM C API fast path": plain.predict_one,
        "compiled (lleaves, ctypes)": compiled.predict_one,
    }
    p50: dict[str, list[float]] = {n: [] for n in methods}
    p99: dict[str, list[float]] = {n: [] for n in methods}
    names = list(methods)
    for k in range(args.rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            for part in (real, drawn):
                times = _times_ns(methods[name], part)
                p50[name].append(_pct(times, 0.5))
                p99[name].append(_pct(times, 0.99))
    trees = plain.booster.num_trees()
    print(
        f"model {plain.version}: {trees} trees, {len(plain.feature_names)} features; "
        f"{len(real)} real + {len(drawn)} drawn rows x {args.rounds} rounds; "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    print(f"{'per row, medians of rounds':<32} {'p50 us':>8} {'p99 us':>8}")
    for name in names:
        print(f"{name:<32} {statistics.median(p50[name]):>8.1f} {statistics.median(p99[name]):>8.1f}")
    gain = statistics.median(p50[names[0]]) - statistics.median(p50[names[1]])
    ratio = statistics.median(p50[names[0]]) / statistics.median(p50[names[1]])
    print(f"compiled saves {gain:.1f} us per row at p50 ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
