"""The evaluation page: PNG plots and report.md / report.html that show them next to the metrics.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): the report can be written from
a notebook without switching the notebook's backend, and from a server without a display.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from antifraud.training.config import TrainConfig
from antifraud.training.metrics import (
    HEADLINE_METRICS,
    SIDES,
    Assessment,
    PrequentialMetrics,
    RealisedFpr,
    SideMetrics,
    Spread,
    Thresholds,
    cost_curve,
    model_vs_logistic,
)

PLOTS = {
    "pr_curve.png": "Precision-recall curve",
    "roc_curve.png": "ROC curve (log false-positive rate)",
    "score_distribution.png": "Score distribution per class",
    "cost_curve.png": "Expected cost vs block threshold",
    "feature_importance.png": "Top features by gain",
}
PREQUENTIAL_PLOTS = {"folds.png": "Average precision and card precision@100 per fold"}


@dataclass(frozen=True)
class Text:
    """A heading (`kind` h1 or h2) or a paragraph (`kind` p; **bold** in Markdown)."""

    kind: str
    text: str


@dataclass(frozen=True)
class Grid:
    """A table: header and rows of cells."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Image:
    """A plot file next to the report, with its caption."""

    name: str
    caption: str


Block = Text | Grid | Image
# Scores by side name (`model`, `logistic`, `baseline`), for the plots.
Scores = Mapping[str, np.ndarray]


def save_figure(fig: Figure, path: Path) -> None:
    """Draw `fig` on the Agg canvas (no pyplot) and write it as a PNG."""
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_pr(path: Path, y: np.ndarray, scores: Scores) -> None:
    """Precision against recall: the model, the logistic baseline and rules-only."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for key, name in SIDES:
        if key in scores:
            p, r, _ = precision_recall_curve(y, scores[key])
            ax.plot(r, p, label=name)
    ax.axhline(float(np.mean(y)), color="grey", ls=":", label="fraud rate")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend()
    save_figure(fig, path)


def plot_roc(path: Path, y: np.ndarray, scores: Scores) -> None:
    """True-positive rate against a logarithmic false-positive rate: the low-FPR end is what matters."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for key, name in SIDES:
        if key in scores:
            f, t, _ = roc_curve(y, scores[key])
            ax.plot(np.maximum(f, 1e-5), t, label=name)
    for x in (0.001, 0.01):
        ax.axvline(x, color="grey", ls=":")
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.02), xlabel="false-positive rate", ylabel="recall")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def plot_scores(path: Path, y: np.ndarray, scores: np.ndarray, thresholds: Thresholds) -> None:
    """Histograms of the score for legitimate and fraudulent payments, with the thresholds."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.hist(scores[y == 0], bins=50, range=(0.0, 1.0), alpha=0.6, density=True, label="legitimate")
    ax.hist(scores[y == 1], bins=50, range=(0.0, 1.0), alpha=0.6, density=True, label="fraud")
    for name, value, color in (
        ("review", thresholds["review"], "orange"),
        ("block", thresholds["block"], "red"),
    ):
        ax.axvline(value, color=color, ls="--", label=f"{name} >= {value:.3f}")
    ax.set(yscale="log", xlabel="score", ylabel="density")
    ax.legend()
    save_figure(fig, path)


def plot_cost(
    path: Path,
    y: np.ndarray,
    scores: np.ndarray,
    amounts: np.ndarray,
    metrics: SideMetrics,
    config: TrainConfig,
) -> None:
    """Cost of blocking every payment at or above a threshold, with the model's thresholds."""
    grid, cost = cost_curve(y, scores, amounts, config)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.plot(grid, cost, label="block at >= threshold (no review)")
    ax.axhline(metrics["cost"]["total"], color="purple", ls=":", label="model's review + block thresholds")
    ax.axhline(metrics["cost"]["allow_everything"], color="grey", ls=":", label="allow everything")
    t = metrics["thresholds"]
    for name, value, color in (("review", t["review"], "orange"), ("block", t["block"], "red")):
        ax.axvline(value, color=color, ls="--", label=name)
    ax.set(xscale="log", xlim=(1e-5, 1), xlabel="threshold (log scale)", ylabel="expected cost")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_importance(path: Path, pairs: list[tuple[str, float]]) -> None:
    """Horizontal bars of the top features' total gain."""
    fig = Figure(figsize=(7, max(3.0, 0.3 * len(pairs) + 1)))
    ax = fig.add_subplot()
    names = [n for n, _ in pairs][::-1]
    ax.barh(names, [g for _, g in pairs][::-1])
    ax.set(xlabel="total gain")
    ax.tick_params(axis="y", labelsize=8)
    save_figure(fig, path)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _fpr_rows(sides: Sequence[SideMetrics], aimed: RealisedFpr) -> list[tuple[str, ...]]:
    """Realised FPR at each threshold next to the FPR it aimed at."""
    return [
        (
            f"Realised FPR at review (aimed {_pct(aimed['review'])})",
            *(_pct(m["realised_fpr"]["review"]) for m in sides),
        ),
        (
            f"Realised FPR at block (aimed {_pct(aimed['block'])})",
            *(_pct(m["realised_fpr"]["block"]) for m in sides),
        ),
    ]


def _verdict_sentence(metrics: Mapping[str, object]) -> list[Block]:
    sentence = model_vs_logistic(metrics)
    return [Text("p", f"**{sentence}**")] if sentence else []


def _blocks(metrics: Assessment, config: TrainConfig) -> list[Block]:
    sides = [metrics["model"], metrics["logistic"], metrics["baseline"]]
    c = metrics["counts"]
    k = config.precision_k
    blocks: list[Block] = [
        Text("h1", metrics["title"]),
        Text(
            "p",
            f"Period [{metrics['period']['start']}, {metrics['period']['end']}): {c['payments']:,} payments, "
            f"{c['frauds']:,} frauds ({c['fraud_rate']:.3%}), {c['cards']:,} cards; "
            f"model {metrics['model_version']}.",
        ),
    ]
    blocks += [Text("p", f"Note: {n}") for n in metrics.get("notes", [])]
    blocks += [Text("p", f"**Warning:** {w}") for w in metrics.get("warnings", [])]
    blocks += _verdict_sentence(metrics)
    rows: list[tuple[str, ...]] = [
        (label[0].upper() + label[1:], *(_fmt(m[key]) for m in sides))  # type: ignore[literal-required]
        for key, label in HEADLINE_METRICS
    ]
    if k != 100:
        rows.append((f"Card precision@{k} (daily mean)", *(_fmt(m["card_precision_at_k"]) for m in sides)))
    rows += _fpr_rows(sides, metrics["aimed_fpr"])
    rows += [
        ("Review threshold", *(_fmt(m["thresholds"]["review"]) for m in sides)),
        ("Block threshold", *(_fmt(m["thresholds"]["block"]) for m in sides)),
    ]
    for label, key in (
        ("Expected cost", "total"),
        ("fraud allowed", "fraud_allowed"),
        ("reviews", "reviews"),
        ("challenges", "challenges"),
        ("legitimate blocked", "legit_blocked"),
    ):
        rows.append((label, *(_fmt(m["cost"][key]) for m in sides)))
    rows.append(("Cost of allowing everything", _fmt(sides[0]["cost"]["allow_everything"]), "", ""))
    header = ("metric", *(name for _, name in SIDES))
    blocks += [
        Text("h2", "Metrics: model vs the logistic baseline vs rules-only"),
        Grid(header, rows),
        Text(
            "p",
            "Card precision@100: daily mean. Realised FPR: the share of this period's legitimate payments "
            "at or above each threshold, set earlier to aim at the FPR in brackets; far from the aim, the "
            "thresholds (and the review load they imply) do not transfer to this period.",
        ),
    ]
    mix_rows = []
    for (_, name), m in zip(SIDES, sides, strict=True):
        for v, d in m["verdicts"].items():
            mix_rows.append(
                (
                    name,
                    v,
                    _fmt(d["payments"]),
                    f"{d['share']:.2%}",
                    _fmt(d["frauds"]),
                    _fmt(d["fraud_amount"]),
                )
            )
    blocks += [
        Text("h2", "Verdict mix at the thresholds"),
        Grid(("score", "verdict", "payments", "share", "frauds", "fraud amount"), mix_rows),
        Text(
            "p",
            f"Cost = fraud amount allowed + {config.review_cost:g} per review + "
            f"{config.block_cost_factor:g} x amount of legitimate payments blocked "
            "(a reviewed fraud is assumed caught).",
        ),
    ]
    blocks += [Text("h2", "Plots")]
    blocks += [Image(name, caption) for name, caption in PLOTS.items()]
    return blocks


def _spread(value: Spread, percent: bool = False) -> str:
    if percent:
        return f"{value['mean']:.2%} ± {value['std']:.2%}"
    return f"{value['mean']:.4f} ± {value['std']:.4f}"


def _prequential_blocks(metrics: PrequentialMetrics) -> list[Block]:
    st = metrics["settings"]
    delay = f"; label delay {st['label_delay_days']:g} days" if st["label_delay_days"] is not None else ""
    summaries = [metrics["model"], metrics["logistic"], metrics["baseline"]]
    blocks: list[Block] = [
        Text("h1", metrics["title"]),
        Text(
            "p",
            f"Prequential protocol: {st['folds']} folds, each trained on {st['train_days']} days, then a gap "
            f"of {st['gap_days']} days (labels not yet known when the model would have been trained{delay}), "
            f"then tested on {st['test_days']} days; folds step by "
            f"{st['test_days']} days and the last test ends on {st['end']} (exclusive). Each test day leaves "
            "out the cards whose fraud was already known before that day (they would already be blocked).",
        ),
    ]
    blocks += [Text("p", f"Note: {n}") for n in metrics["notes"]]
    blocks += [Text("p", f"**Warning:** {w}") for w in metrics["warnings"]]
    blocks += _verdict_sentence(metrics)
    rows: list[tuple[str, ...]] = [
        (label[0].upper() + label[1:], *(_spread(m[key]) for m in summaries))  # type: ignore[literal-required]
        for key, label in HEADLINE_METRICS
    ]
    aimed = metrics["aimed_fpr"]
    rows += [
        (
            f"Realised FPR at review (aimed {_pct(aimed['review'])})",
            *(_spread(m["realised_fpr"]["review"], percent=True) for m in summaries),
        ),
        (
            f"Realised FPR at block (aimed {_pct(aimed['block'])})",
            *(_spread(m["realised_fpr"]["block"], percent=True) for m in summaries),
        ),
    ]
    header = ("metric (mean ± std over folds)", *(name for _, name in SIDES))
    blocks += [Text("h2", "Over all folds"), Grid(header, rows)]
    fold_rows = []
    for f in metrics["folds"]:
        fold_rows.append(
            (
                str(f["index"] + 1),
                f"[{f['train']['start']}, {f['train']['end']})",
                f"[{f['test']['start']}, {f['test']['end']})",
                f"{f['counts']['payments']:,} / {f['counts']['frauds']:,}",
                f"{f['removed']['cards']:,} ({f['removed']['payments']:,})",
                str(f["num_trees"]),
                *(_fmt(f[side]["average_precision"]) for side, _ in SIDES),  # type: ignore[literal-required]
                *(_fmt(f[side]["card_precision_at_100"]) for side, _ in SIDES),  # type: ignore[literal-required]
                _pct(f["model"]["realised_fpr"]["block"]),
            )
        )
    fold_header = (
        "fold",
        "train",
        "test",
        "test payments / frauds",
        "cards removed (payments)",
        "trees",
        *(f"AP {name}" for _, name in SIDES),
        *(f"CP@100 {name}" for _, name in SIDES),
        "model block FPR",
    )
    blocks += [
        Text("h2", "Per fold"),
        Grid(fold_header, fold_rows),
        Text("h2", "Plots"),
    ]
    blocks += [Image(name, caption) for name, caption in PREQUENTIAL_PLOTS.items()]
    return blocks


def plot_folds(path: Path, metrics: PrequentialMetrics) -> None:
    """Average precision and card precision@100 of each score, fold by fold."""
    fig = Figure(figsize=(8, 3.8))
    folds = [f["index"] + 1 for f in metrics["folds"]]
    for i, (key, title) in enumerate(
        (("average_precision", "average precision"), ("card_precision_at_100", "card precision@100"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        for side, name in SIDES:
            ax.plot(folds, [f[side][key] for f in metrics["folds"]], marker="o", label=name)  # type: ignore[literal-required]
        ax.set(xlabel="fold", title=title, xticks=folds)
        ax.set_ylim(bottom=0)
    fig.axes[0].legend(fontsize=8)
    save_figure(fig, path)


def _markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Text):
            prefix = {"h1": "# ", "h2": "## "}.get(block.kind, "")
            lines += [prefix + block.text, ""]
        elif isinstance(block, Grid):
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(r) + " |" for r in block.rows] + [""]
        else:
            lines += [f"### {block.caption}", "", f"![{block.caption}]({block.name})", ""]
    return "\n".join(lines)


def html_page(blocks: list[Block]) -> str:
    """A standalone HTML page of `blocks` (the images are files next to it)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>antifraud report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Text):
            text = html.escape(block.text)
            if block.kind == "p":
                # **bold** in Markdown is bold here too
                text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
            parts.append(f"<{block.kind}>{text}</{block.kind}>")
        elif isinstance(block, Grid):
            parts.append(
                "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.header) + "</tr>"
            )
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in block.rows]
            parts.append("</table>")
        else:
            name, caption = html.escape(block.name), html.escape(block.caption)
            parts.append(f"<h3>{caption}</h3><img src='{name}' alt='{caption}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    out_dir: Path,
    metrics: Assessment,
    y: np.ndarray,
    scores: Scores,
    amounts: np.ndarray,
    importances: list[tuple[str, float]],
    config: TrainConfig,
) -> Path:
    """Draw the plots and write report.md and report.html into `out_dir`; returns report.md.

    `scores` holds the model's scores under `model`, and the baselines' under `logistic` and
    `baseline` (each drawn when present).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_pr(out_dir / "pr_curve.png", y, scores)
    plot_roc(out_dir / "roc_curve.png", y, scores)
    plot_scores(out_dir / "score_distribution.png", y, scores["model"], metrics["model"]["thresholds"])
    plot_cost(out_dir / "cost_curve.png", y, scores["model"], amounts, metrics["model"], config)
    plot_importance(out_dir / "feature_importance.png", importances)
    return _write_pages(out_dir, _blocks(metrics, config))


def write_prequential_report(out_dir: Path, metrics: PrequentialMetrics) -> Path:
    """report.md / report.html and the per-fold plot of a prequential evaluation; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_folds(out_dir / "folds.png", metrics)
    return _write_pages(out_dir, _prequential_blocks(metrics))


def _write_pages(out_dir: Path, blocks: list[Block]) -> Path:
    (out_dir / "report.html").write_text(html_page(blocks))
    path = out_dir / "report.md"
    path.write_text(_markdown(blocks))
    return path
