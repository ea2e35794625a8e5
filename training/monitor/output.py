"""The monitoring report on the terminal (rich tables), as JSON (`--json`) and as an HTML page with
plots (`--html`; drawn without pyplot, as training/report.py draws the evaluation's)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from antifraud.engine.files import atomic_write
from antifraud.engine.monitoring import FeatureDrift
from antifraud.training.monitor.performance import LiveFigures
from antifraud.training.monitor.report import MonitorReport
from antifraud.training.report import Block, Grid, Image, Text, html_page, save_figure

TOP_FEATURES = 10  # the features shown besides the flagged ones, by PSI


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2%}"


def shown_features(report: MonitorReport) -> list[FeatureDrift]:
    """The flagged features, then the others with the highest PSI (TOP_FEATURES in all at least)."""
    flagged = {f.subject for f in report.flags if f.kind.startswith("feature_")}
    ranked = sorted(report.features, key=lambda d: (d.feature not in flagged, -d.psi))
    return ranked[: max(TOP_FEATURES, len(flagged))]


def _header(report: MonitorReport) -> list[str]:
    start, end = report.period
    versions = ", ".join(f"{v}: {n:,}" for v, n in report.model_versions.items())
    return [
        f"model {report.model_version}: reference {report.reference_rows:,} payments of "
        f"[{report.reference_period[0]}, {report.reference_period[1]})",
        f"period [{start or 'first decision'}, {end or 'last decision'}): {report.rows:,} decisions "
        f"({versions}); labels as of {report.as_of}",
    ]


def _week_row(name: str, payments: int, frauds: int, maturity: str, f: LiveFigures) -> tuple[str, ...]:
    return (
        name,
        f"{payments:,}",
        f"{frauds:,}",
        maturity,
        _num(f.average_precision),
        _pct(f.recall_review),
        _pct(f.recall_block),
        _pct(f.realised_fpr),
        _pct(f.blocked_fpr),
    )


def _grids(report: MonitorReport) -> list[tuple[str, Grid]]:
    """Every table of the report, for the terminal and the HTML page alike."""
    flagged = {(f.kind, f.subject): f.level for f in report.flags}
    features = Grid(
        ("feature", "PSI", "missing (reference)", "missing (now)", "flag"),
        [
            (
                d.feature,
                _num(d.psi),
                _pct(d.missing_reference),
                _pct(d.missing_now),
                flagged.get(("feature_psi", d.feature)) or flagged.get(("feature_missing", d.feature)) or "",
            )
            for d in shown_features(report)
        ],
    )
    baseline = [report.baseline] if report.baseline is not None else []
    mix = Grid(
        ("verdict", "reference", "now", "shift"),
        [(v, _pct(m["reference"]), _pct(m["now"]), f"{m['shift']:+.2%}") for v, m in report.verdicts.items()],
    )
    overall = Grid(
        ("figure", "value", "alert at"),
        [
            ("score PSI", _num(report.score_psi), f"{report.thresholds.score_psi_alert:g}"),
            ("degraded share", _pct(report.degraded_share), _pct(report.thresholds.degraded_share)),
        ],
    )
    weeks = Grid(
        (
            "week",
            "payments",
            "frauds",
            "maturity",
            "AP",
            "recall review",
            "recall block",
            "FPR flagged",
            "FPR blocked",
        ),
        [_week_row("validation", b.payments, b.frauds, "-", b.figures) for b in baseline]
        + [_week_row(w.week, w.payments, w.frauds, _pct(w.maturity), w.figures) for w in report.weeks],
    )
    sides = Grid(
        ("model", "role", "payments", "frauds", "mean score", "AP", "recall at 0.1% FPR", "recall at 1% FPR"),
        [
            (
                side.model_version,
                role,
                f"{c.payments:,}",
                f"{c.frauds:,}",
                _num(side.mean_score, 5),
                _num(side.average_precision),
                _pct(side.recall_at_fpr["0.001"]),
                _pct(side.recall_at_fpr["0.01"]),
            )
            for c in report.challengers
            for role, side in (("champion", c.champion), ("challenger", c.challenger))
        ],
    )
    tables = [
        ("Feature drift (flagged, then highest PSI)", features),
        ("Score and degraded answers", overall),
        ("Verdict mix against the reference", mix),
    ]
    if report.weeks:
        title = (
            "Live performance per ISO week (labels known at the as-of time; first, the model's validation)"
        )
        tables.append((title, weeks))
    if report.challengers:
        tables.append(("Champion and challenger on the same payments", sides))
    return tables


def print_report(report: MonitorReport, console: Console) -> None:
    """The report as rich tables, the flags first."""
    for line in _header(report):
        console.print(escape(line))
    for note in report.notes:
        console.print(f"note: {escape(note)}")
    if report.flags:
        for flag in report.flags:
            style = "red" if flag.level == "alert" else "yellow"
            console.print(f"[{style}]{flag.level}:[/{style}] {escape(flag.message)}")
    else:
        console.print("[green]nothing crossed a threshold[/green]")
    for title, grid in _grids(report):
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(grid.header):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in grid.rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)


def write_json(report: MonitorReport, path: Path) -> None:
    """The report as JSON (`MonitorReport.to_dict`)."""
    atomic_write(path, json.dumps(report.to_dict(), indent=1, default=str) + "\n")


def _plot_psi(report: MonitorReport, path: Path) -> None:
    top = sorted(report.features, key=lambda d: -d.psi)[:20][::-1]
    fig = Figure(figsize=(7, 0.3 * len(top) + 1.5))
    ax = fig.add_subplot()
    ax.barh([d.feature for d in top], [d.psi for d in top], color="tab:blue")
    for value, style in ((report.thresholds.psi_warn, ":"), (report.thresholds.psi_alert, "--")):
        ax.axvline(value, color="tab:red", linestyle=style)
    ax.set_xlabel("population stability index")
    ax.tick_params(axis="y", labelsize=7)
    save_figure(fig, path)


def _plot_scores(report: MonitorReport, path: Path) -> None:
    bins = report.score_bins
    x = np.arange(len(bins["reference"]))
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, bins["reference"], width=0.4, label="reference")
    ax.bar(x + 0.2, bins["now"], width=0.4, label="period")
    ax.set_xticks(x, [f"≤{e:.2g}" for e in bins["edges"]] + ["above"], fontsize=7, rotation=45)
    ax.set_ylabel("share of payments")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _plot_weeks(report: MonitorReport, path: Path) -> None:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    weeks = [w.week for w in report.weeks]
    for name, values in (
        ("average precision", [w.figures.average_precision for w in report.weeks]),
        ("recall at review", [w.figures.recall_review for w in report.weeks]),
        ("label maturity", [w.maturity for w in report.weeks]),
    ):
        ax.plot(weeks, [np.nan if v is None else v for v in values], marker="o", label=name)
    if report.baseline is not None:  # validation's figures, the marks the weeks are judged against
        was = report.baseline.figures
        for value, color in ((was.average_precision, "C0"), (was.recall_review, "C1")):
            if value is not None:
                ax.axhline(value, color=color, linestyle="--", linewidth=0.8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    save_figure(fig, path)


def write_html(report: MonitorReport, path: Path) -> None:
    """The report as an HTML page, its plots as PNG files next to it (`<name>-*.png`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = [("feature_psi", "PSI of the 20 most drifted features (dotted: warn, dashed: alert)", _plot_psi)]
    plots.append(("score_bins", "Score distribution in the reference's bins", _plot_scores))
    if report.weeks:
        plots.append(
            ("weeks", "Live performance and label maturity per week (dashed: on validation)", _plot_weeks)
        )
    blocks: list[Block] = [Text("h1", f"Monitoring of {report.model_version}")]
    blocks += [Text("p", line) for line in _header(report) + [f"note: {n}" for n in report.notes]]
    blocks += [Text("p", f"**{f.level}**: {f.message}") for f in report.flags] or [
        Text("p", "nothing crossed a threshold")
    ]
    for title, grid in _grids(report):
        blocks += [Text("h2", title), grid]
    for name, caption, draw in plots:
        file = path.with_name(f"{path.stem}-{name}.png")
        draw(report, file)
        blocks.append(Image(file.name, caption))
    atomic_write(path, html_page(blocks))
