"""Detection quality on worlds the defaults were not tuned for: every simulator preset, prequentially.

For each preset: simulate a history, then run the prequential protocol with default settings
(`antifraud evaluate --protocol prequential`: train 7 days, a gap of the label delay, test 7 days,
4 folds, cards already known compromised left out) and print the model against the logistic
baseline and rules-only, mean +- std over the folds. The aim (issue: detection quality): on every
preset the model's AP beats the logistic baseline's by at least 0.05, and its card precision@100 is
at least the baseline's.

    .venv/bin/python benchmarks/bench_presets.py                    # every preset
    .venv/bin/python benchmarks/bench_presets.py --presets minimal --days 90 --cards 5000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from antifraud.training.dataset import read_history
from antifraud.training.history import write_history
from antifraud.training.prequential import prequential
from antifraud.training.simulator import PRESET_NAMES, simulate

AP, CP = "average_precision", "card_precision_at_100"


def run(preset: str, days: int, cards: int, merchants: int, seed: int, folds: int, work: Path) -> dict:
    """Simulate one preset to a file, read it back as an analyst would, evaluate it prequentially."""
    path = work / f"{preset}-{days}d-{cards}c-{merchants}m-{seed}.parquet"
    if not path.exists():
        write_history(simulate(days=days, cards=cards, merchants=merchants, seed=seed, preset=preset), path)
    started = time.perf_counter()
    rows = read_history(path, require_label=True)
    result = prequential(rows, train_days=7, gap_days=None, test_days=7, folds=folds)
    metrics = dict(result.metrics)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["payments"] = len(rows)
    metrics["frauds"] = int(rows["label"].sum())
    return metrics


def _cell(side: dict, key: str) -> str:
    return f"{side[key]['mean']:.3f} ± {side[key]['std']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="*", default=list(PRESET_NAMES))
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--cards", type=int, default=5000)
    parser.add_argument("--merchants", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("var/bench-presets"))
    parser.add_argument("--json", type=Path, help="also write every preset's metrics here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    console = Console(width=200)
    table = Table(
        title=f"Prequential, {args.folds} folds (train 7 d, gap = label delay, test 7 d), mean ± std"
    )
    for column in (
        "preset",
        "payments (frauds)",
        "gap",
        "model AP",
        "logistic AP",
        "rules AP",
        "model CP@100",
        "logistic CP@100",
        "model AUC",
        "aim met",
        "s",
    ):
        table.add_column(column)
    results = {}
    for preset in args.presets:
        console.print(f"[bold]{preset}[/]: simulating and evaluating")
        m = run(preset, args.days, args.cards, args.merchants, args.seed, args.folds, args.work)
        results[preset] = m
        model, logistic, rules = m["model"], m["logistic"], m["baseline"]
        met = model[AP]["mean"] >= logistic[AP]["mean"] + 0.05 and model[CP]["mean"] >= logistic[CP]["mean"]
        table.add_row(
            preset,
            f"{m['payments']:,} ({m['frauds']:,})",
            str(m["settings"]["gap_days"]),
            _cell(model, AP),
            _cell(logistic, AP),
            _cell(rules, AP),
            _cell(model, CP),
            _cell(logistic, CP),
            _cell(model, "roc_auc"),
            "yes" if met else "NO",
            f"{m['seconds']:.0f}",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
