"""`antifraud rules check DIR`: load a rule set, list every problem, or confirm it is fine.

The CLI (engine/cli.py) wires :func:`run_check`; the pieces are separate so that tests and other
tools can get the errors as data (:func:`check_rules`) or print them (:func:`print_report`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from antifraud.engine.rules.errors import RuleError, RuleSetError
from antifraud.engine.rules.nodes import FieldType
from antifraud.engine.rules.ruleset import RuleSet
from antifraud.engine.rules.yaml_loader import load_ruleset


def load_checked(
    directory: str | Path, names: Mapping[str, FieldType]
) -> tuple[RuleSet | None, list[RuleError]]:
    """(rule set, []) when the directory loads, else (None, every error)."""
    try:
        return load_ruleset(directory, names), []
    except RuleSetError as e:
        return None, e.errors


def check_rules(directory: str | Path, names: Mapping[str, FieldType]) -> list[RuleError]:
    """Every problem in the rule set of ``directory``; empty when it loads."""
    return load_checked(directory, names)[1]


def print_report(errors: Sequence[RuleError], console: Console, ruleset: RuleSet | None = None) -> None:
    """Print the errors as a table, or an OK line (with counts and version when ``ruleset`` is given)."""
    if not errors:
        if ruleset is None:
            console.print(Text("OK", style="bold green"))
            return
        shadow = sum(1 for r in ruleset.rules if r.mode == "shadow")
        console.print(
            Text(
                f"OK: {len(ruleset.rules)} rules ({shadow} shadow), {len(ruleset.lists)} lists, "
                f"version {ruleset.version}",
                style="bold green",
            )
        )
        console.print(Text(describe_bands(ruleset)))
        return
    table = Table(title=f"{len(errors)} error(s) in the rule set", title_justify="left", show_lines=True)
    table.add_column("where", style="cyan", no_wrap=True)
    table.add_column("rule", style="magenta")
    table.add_column("problem")
    for error in errors:
        where = f"{error.file}:{error.line}" if error.line is not None else error.file
        # Text, not markup: messages quote expressions such as ['RU', 'NG'].
        table.add_row(Text(where), Text(error.rule_id or ""), Text(error.message))
    console.print(table)


def describe_bands(ruleset: RuleSet) -> str:
    """One line on what turns a score into a verdict: the bands with their scale, what an
    authenticated payment gets instead of a challenge, and the metadata keys rules may read."""
    b = ruleset.bands
    bands = [f"challenge >= {b.challenge:g}"] if b.challenge is not None else []
    bands += [f"review >= {b.review:g}", f"block >= {b.block:g}"]
    line = f"score bands on the {ruleset.scale} scale: {', '.join(bands)}"
    if ruleset.merchant_bands:
        line += f" ({len(ruleset.merchant_bands)} merchant overrides)"
    line += f"; an authenticated payment due a challenge gets {ruleset.authenticated_fallback}"
    if ruleset.metadata:
        line += "; metadata: " + ", ".join(f"{k} ({t})" for k, t in sorted(ruleset.metadata.items()))
    return line


def run_check(directory: str | Path, names: Mapping[str, FieldType], console: Console | None = None) -> int:
    """Check and print; the process exit code: 0 when the rule set loads, 1 otherwise."""
    ruleset, errors = load_checked(directory, names)
    print_report(errors, console or Console(), ruleset)
    return 0 if not errors else 1
