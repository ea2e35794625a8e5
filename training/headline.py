"""The headline figures on the terminal: a short table at the end of `antifraud train` and `evaluate`.

One row per headline metric (AUC, average precision, card precision@100, recall at 0.1 % and 1 %
FPR, the false-positive rate reached at the review and block thresholds), one column per score
(the model, the logistic baseline, rules-only). A single-period result shows values; a
prequential result shows mean ± std over folds. When the model does not beat the logistic
baseline, one plain sentence says so under the table.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from antifraud.training.metrics import HEADLINE_METRICS, SIDES, model_vs_logistic


def _value(value: object, percent: bool) -> str:
    """A number, or `mean ± std` of a per-fold spread; a dash when absent."""
    if isinstance(value, Mapping) and isinstance(value.get("mean"), int | float):
        mean, std = float(value["mean"]), float(value.get("std") or 0.0)
        return f"{mean:.2%} ± {std:.2%}" if percent else f"{mean:.3f} ± {std:.3f}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.2%}" if percent else f"{value:.3f}"
    return "-"


def _get(side: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(side, Mapping):
            return None
        side = side.get(key)
    return side


def headline_table(metrics: Mapping[str, object]) -> Table:
    """The headline table of an assessment (`antifraud.training.evaluate.assess`) or a prequential result.

    `metrics` has `model`, `logistic` and `baseline` entries (a missing one shows as dashes), each
    with the `HEADLINE_METRICS` and `realised_fpr` {review, block}; `aimed_fpr` (when present)
    labels the realised-FPR rows with what the thresholds aimed at.
    """
    title = str(metrics.get("title", "Headline figures"))
    if isinstance(folds := metrics.get("folds"), list):
        title += f" (mean ± std over {len(folds)} folds)"
    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric")
    for _, name in SIDES:
        table.add_column(name, justify="right")
    sides = [metrics.get(key) for key, _ in SIDES]
    for key, label in HEADLINE_METRICS:
        table.add_row(label, *(_value(_get(side, key), percent=False) for side in sides))
    for name in ("review", "block"):
        aimed = _get(metrics, "aimed_fpr", name)
        suffix = f" (aim {aimed:.2%})" if isinstance(aimed, int | float) else ""
        table.add_row(
            f"FPR at {name}{suffix}",
            *(_value(_get(side, "realised_fpr", name), percent=True) for side in sides),
        )
    return table


def print_headline(console: Console, metrics: Mapping[str, object]) -> None:
    """Print the headline table, then the sentence saying the model loses to the logistic baseline
    when it does (in yellow)."""
    console.print(headline_table(metrics))
    if sentence := model_vs_logistic(metrics):
        console.print(f"[yellow]{escape(sentence)}[/yellow]")
