"""The evaluation page: PNG plots and report.md / report.html that show them next to the metrics.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): the report can be written from
a notebook without switching the notebook's backend, and from a server without a display.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from training.config import TrainConfig

PLOTS = {
    "pr_curve.png": "Precision-recall curve",
    "roc_curve.png": "ROC curve (log false-positive rate)",
    "score_distribution.png": "Score distribution per class",
    "cost_curve.png": "Expected cost vs block threshold",
    "feature_importance.png": "Top features by gain",
}
# A block is a heading, a paragraph, a table (header, rows) or an image (file, caption).
Block = tuple[str, Any]


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_pr(path: Path, y: np.ndarray, scores: np.ndarray, baseline: np.ndarray | None) -> None:
    """Precision against recall, model and rules-only baseline."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for name, s in (("model", scores), ("rules-only", baseline)):
        if s is not None:
            p, r, _ = precision_recall_curve(y, s)
            ax.plot(r, p, label=name)
    ax.axhline(float(np.mean(y)), color="grey", ls=":", label="fraud rate")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend()
    _save(fig, path)


def plot_roc(path: Path, y: np.ndarray, scores: np.ndarray, baseline: np.ndarray | None) -> None:
    """True-positive rate against a logarithmic false-positive rate: the low-FPR end is what matters."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for name, s in (("model", scores), ("rules-only", baseline)):
        if s is not None:
            f, t, _ = roc_curve(y, s)
            ax.plot(np.maximum(f, 1e-5), t, label=name)
    for x in (0.001, 0.01):
        ax.axvline(x, color="grey", ls=":")
    ax.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.02), xlabel="false-positive rate", ylabel="recall")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_scores(path: Path, y: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]) -> None:
    """Histograms of the score for legitimate and fraudulent payments, with the thresholds."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.hist(scores[y == 0], bins=50, range=(0.0, 1.0), alpha=0.6, density=True, label="legitimate")
    ax.hist(scores[y == 1], bins=50, range=(0.0, 1.0), alpha=0.6, density=True, label="fraud")
    for name, color in (("review", "orange"), ("block", "red")):
        ax.axvline(thresholds[name], color=color, ls="--", label=f"{name} >= {thresholds[name]:.3f}")
    ax.set(yscale="log", xlabel="score", ylabel="density")
    ax.legend()
    _save(fig, path)


def plot_cost(
    path: Path,
    y: np.ndarray,
    scores: np.ndarray,
    amounts: np.ndarray,
    metrics: dict[str, Any],
    config: TrainConfig,
) -> None:
    """Cost of blocking every payment at or above a threshold, with the model's thresholds."""
    from training.evaluate import cost_curve  # here, not at the top: evaluate imports this module

    grid, cost = cost_curve(y, scores, amounts, config)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    ax.plot(grid, cost, label="block at >= threshold (no review)")
    ax.axhline(metrics["cost"]["total"], color="purple", ls=":", label="model's review + block thresholds")
    ax.axhline(metrics["cost"]["allow_everything"], color="grey", ls=":", label="allow everything")
    for name, color in (("review", "orange"), ("block", "red")):
        ax.axvline(metrics["thresholds"][name], color=color, ls="--", label=name)
    ax.set(xscale="log", xlim=(1e-5, 1), xlabel="threshold (log scale)", ylabel="expected cost")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_importance(path: Path, pairs: list[tuple[str, float]]) -> None:
    """Horizontal bars of the top features' total gain."""
    fig = Figure(figsize=(7, max(3.0, 0.3 * len(pairs) + 1)))
    ax = fig.add_subplot()
    names = [n for n, _ in pairs][::-1]
    ax.barh(names, [g for _, g in pairs][::-1])
    ax.set(xlabel="total gain")
    ax.tick_params(axis="y", labelsize=8)
    _save(fig, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _blocks(metrics: dict[str, Any], config: TrainConfig) -> list[Block]:
    model, base = metrics["model"], metrics["baseline"]
    c = metrics["counts"]
    k = config.precision_k
    blocks: list[Block] = [
        ("h1", metrics["title"]),
        (
            "p",
            f"Period [{metrics['period']['start']}, {metrics['period']['end']}): {c['payments']:,} payments, "
            f"{c['frauds']:,} frauds ({c['fraud_rate']:.3%}), {c['cards']:,} cards; "
            f"model {metrics['model_version']}.",
        ),
    ]
    blocks += [("p", f"**Warning:** {w}") for w in metrics.get("warnings", [])]
    named = (
        ("ROC AUC", "roc_auc"),
        ("Average precision", "average_precision"),
        (f"Card precision@{k} (daily mean)", f"card_precision_at_{k}"),
        ("Recall at 0.1% FPR", "recall_at_fpr_0.001"),
        ("Recall at 1% FPR", "recall_at_fpr_0.01"),
    )
    rows = [(label, _fmt(model[key]), _fmt(base[key])) for label, key in named]
    rows += [
        ("Review threshold", _fmt(model["thresholds"]["review"]), _fmt(base["thresholds"]["review"])),
        ("Block threshold", _fmt(model["thresholds"]["block"]), _fmt(base["thresholds"]["block"])),
    ]
    for label, key in (
        ("Expected cost", "total"),
        ("fraud allowed", "fraud_allowed"),
        ("reviews", "reviews"),
        ("legitimate blocked", "legit_blocked"),
    ):
        rows.append((label, _fmt(model["cost"][key]), _fmt(base["cost"][key])))
    rows.append(("Cost of allowing everything", _fmt(model["cost"]["allow_everything"]), ""))
    blocks += [("h2", "Metrics: model vs rules-only"), ("table", (("metric", "model", "rules-only"), rows))]
    mix_rows = []
    for name, m in (("model", model), ("rules-only", base)):
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
        ("h2", "Verdict mix at the thresholds"),
        ("table", (("score", "verdict", "payments", "share", "frauds", "fraud amount"), mix_rows)),
        (
            "p",
            f"Cost = fraud amount allowed + {config.review_cost:g} per review + "
            f"{config.block_cost_factor:g} x amount of legitimate payments blocked "
            "(a reviewed fraud is assumed caught).",
        ),
    ]
    blocks += [("h2", "Plots")]
    blocks += [("img", (name, caption)) for name, caption in PLOTS.items()]
    return blocks


def _markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for kind, body in blocks:
        if kind == "h1":
            lines += [f"# {body}", ""]
        elif kind == "h2":
            lines += [f"## {body}", ""]
        elif kind == "p":
            lines += [body, ""]
        elif kind == "table":
            header, rows = body
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
        else:
            name, caption = body
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)


def _html(blocks: list[Block]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>antifraud report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>",
    ]
    for kind, body in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(body)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(body).replace('**', '')}</p>")
        elif kind == "table":
            header, rows = body
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table>")
        else:
            name, caption = body
            parts.append(
                f"<h3>{html.escape(caption)}</h3><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    y: np.ndarray,
    scores: np.ndarray,
    baseline: np.ndarray | None,
    amounts: np.ndarray,
    importances: list[tuple[str, float]],
    config: TrainConfig,
) -> Path:
    """Draw the plots and write report.md and report.html into `out_dir`; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_pr(out_dir / "pr_curve.png", y, scores, baseline)
    plot_roc(out_dir / "roc_curve.png", y, scores, baseline)
    plot_scores(out_dir / "score_distribution.png", y, scores, metrics["model"]["thresholds"])
    plot_cost(out_dir / "cost_curve.png", y, scores, amounts, metrics["model"], config)
    plot_importance(out_dir / "feature_importance.png", importances)
    blocks = _blocks(metrics, config)
    (out_dir / "report.html").write_text(_html(blocks))
    path = out_dir / "report.md"
    path.write_text(_markdown(blocks))
    return path
