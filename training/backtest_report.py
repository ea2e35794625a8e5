"""The terminal report of a backtest (`antifraud backtest`): rule statistics, verdict mix, cost and,
against a baseline rule set, the payments that change verdict. The figures themselves are computed
in `antifraud.training.backtest`."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rich import box
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from antifraud.engine.verdicts import VERDICTS
from antifraud.training.backtest import EXAMPLES, BacktestResult, Comparison

Column = tuple[str, JustifyMethod]  # header, justification


def _table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    styles: Sequence[str | None] | None = None,
    wrap: Collection[str] = (),
) -> Table:
    """A table whose values are never cut: each column is at least as wide as its widest value.

    Rich shrinks columns proportionally in a narrow terminal, which would turn 116,723 into
    "116,7…": here headers wrap instead ("fraud amount" on two lines), names and ids never wrap,
    and only the `wrap` columns (long text such as example ids) fold. Without vertical rules and
    with single spaces between columns, the rules table fits 80 columns and pastes into docs.
    """
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True
    )
    table.title_style = "bold"
    for i, (name, justify) in enumerate(columns):
        widest = max((Text.from_markup(row[i]).cell_len for row in rows), default=0)
        if name in wrap:
            table.add_column(name, justify=justify)
        elif justify == "left":  # names and ids: never folded, so rich narrows the numbers' headers
            table.add_column(name, justify=justify, no_wrap=True)
        else:
            table.add_column(name, justify=justify, min_width=widest)
    for k, row in enumerate(rows):
        table.add_row(*row, style=styles[k] if styles is not None else None)
    return table


def _print(console: Console, table: Table) -> None:
    console.print()
    console.print(table)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _share(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _signed(value: float) -> str:
    return f"{value:+,.0f}"


def print_report(result: BacktestResult, console: Console) -> None:
    """Print a backtest as rich tables: rules, verdicts and cost, and the changes vs a baseline."""
    frauds = (
        f"{result.frauds:,} frauds ({_share(result.frauds / result.payments if result.payments else 0)}), "
        f"fraud amount {_money(result.fraud_amount)}"
        if result.frauds is not None
        else "no labels"
    )
    console.print(
        f"[bold]Backtest[/bold] of the rule set {escape(result.rules_dir)} (version {result.rules_version}) "
        f"on {escape(result.history)}, \\[{result.start}, {result.end}): {result.payments:,} payments, "
        f"{frauds}"
    )
    model = (
        f"model {result.model_version}"
        if result.model_version
        else f"no model: payments no rule decides count as {result.no_score_verdict}"
    )
    costs = ", ".join(f"{k} {v:g}" for k, v in result.cost_parameters.items())
    console.print(f"{model}; cost parameters: {costs}")

    rows = [
        [
            r.rule_id
            + (" (shadow)" if r.shadow else "")
            + (f" ({len(r.merchants)} merchant(s) only)" if r.merchants is not None else ""),
            r.action,
            _count(r.hits),
            _share(r.hit_rate, 3),
            _share(r.precision, 1),
            _money(r.fraud_amount),
            _count(r.good_hits),
            _count(r.skipped),
        ]
        for r in result.rules
    ]
    columns: list[Column] = [
        ("rule", "left"),
        ("action", "left"),
        ("hits", "right"),
        ("hit rate", "right"),
        ("precision", "right"),
        ("fraud amount", "right"),
        ("good hits", "right"),
        ("skipped", "right"),
    ]
    styles = ["dim" if r.shadow else None for r in result.rules]
    title = "Rules (in rule set order; shadow rules never change a verdict)"
    _print(console, _table(title, columns, rows, styles))

    comparison = result.comparison
    columns = [("verdict", "left"), ("payments", "right"), ("share", "right"), ("frauds", "right")]
    columns.append(("fraud amount", "right"))
    if comparison is not None:
        columns += [("baseline payments", "right"), ("change", "right")]
    rows = []
    for v in VERDICTS:
        m = result.verdicts[v]
        row = [v, _count(m["payments"]), _share(m["share"]), _count(m["frauds"]), _money(m["fraud_amount"])]
        if comparison is not None:
            b = comparison.baseline_verdicts[v]
            row += [_count(b["payments"]), f"{m['payments'] - b['payments']:+,}"]
        rows.append(row)
    _print(console, _table("Verdicts", columns, rows))

    if result.cost is not None:
        base_cost, difference = (
            (comparison.baseline_cost, comparison.cost_difference) if comparison is not None else (None, None)
        )
        columns = [("part", "left"), ("cost", "right")]
        if base_cost is not None:
            columns += [("baseline", "right"), ("difference", "right")]
        rows = []
        parts = {
            "fraud_allowed": "fraud allowed",
            "reviews": "reviews",
            "challenges": "challenges",
            "legit_blocked": "legitimate blocked",
            "total": "total",
        }
        for part, label in parts.items():
            row = [label, _money(result.cost[part])]
            if base_cost is not None and difference is not None:
                row += [_money(base_cost[part]), _signed(difference[part])]
            rows.append(row)
        styles = [None] * (len(rows) - 1) + ["bold"]  # the total
        _print(console, _table("Expected cost", columns, rows, styles))
        console.print(f"allowing everything would cost {_money(result.cost['allow_everything'])}")

    if comparison is not None:
        _print_comparison(result, comparison, console)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    steps = {"read_s": "read", "features_s": "features", "model_s": "model", "rules_s": "rules"}
    spent = ", ".join(
        f"{label} {result.timings[k]:.1f} s" for k, label in steps.items() if k in result.timings
    )
    if spent:
        console.print(f"[dim]time: {spent}[/dim]")


def _print_comparison(result: BacktestResult, c: Comparison, console: Console) -> None:
    what = []
    for label, ids in (("added", c.rules_added), ("removed", c.rules_removed), ("changed", c.rules_changed)):
        if ids:
            what.append(f"rules {label}: {', '.join(ids)}")
    if c.lists_changed:
        what.append(f"lists changed: {', '.join(c.lists_changed)}")
    if c.bands_changed:
        what.append("score bands changed")
    summary = "; ".join(what) if what else "no rule, list or band decides differently"
    console.print()
    console.print(
        f"[bold]Against the baseline[/bold] rule set {escape(c.baseline_dir)} "
        f"(version {c.baseline_version}): {summary}"
    )
    share = c.changed / result.payments if result.payments else 0.0
    console.print(f"{c.changed:,} payments ({_share(share, 3)}) change verdict")
    columns: list[Column] = [("baseline \\ new", "left"), *((v, "right") for v in VERDICTS)]
    rows = [
        [a, *(_count(c.matrix[a][b]) if a != b else f"[dim]{c.matrix[a][b]:,}[/dim]" for b in VERDICTS)]
        for a in VERDICTS
    ]
    _print(console, _table("Verdict changes", columns, rows))
    if not c.changes:
        return
    columns = [
        ("from -> to", "left"),
        ("payments", "right"),
        ("frauds", "right"),
        ("amount", "right"),
        ("fraud amount", "right"),
        ("examples", "left"),
    ]
    rows = [
        [
            f"{change.before} -> {change.after}",
            _count(change.payments),
            _count(change.frauds),
            _money(change.amount),
            _money(change.fraud_amount),
            escape(", ".join(change.examples[:3]) + (", ..." if len(change.examples) > 3 else "")),
        ]
        for change in c.changes
    ]
    title = f"Changed payments (--json lists up to {EXAMPLES} examples each)"
    _print(console, _table(title, columns, rows, wrap=("examples",)))
