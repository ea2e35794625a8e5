"""The functions rules may call: their signatures as shown to users, arities and result types.

The checker (engine/rules/checker.py) checks calls against this table; the scalar compiler
(engine/rules/scalar.py) and the vectorized evaluator (engine/rules/vectorized.py) implement them.
docs/rules.md lists them for rule authors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from antifraud.engine.rules.nodes import BOOL, ERROR, NUMBER, STRING, Node


@dataclass(frozen=True)
class FunctionSpec:
    """A function callable from rules: its signature as shown to users, and its arity."""

    signature: str
    doc: str
    min_args: int
    max_args: int | None  # None: variadic


FUNCTIONS: Final[Mapping[str, FunctionSpec]] = {
    "abs": FunctionSpec("abs(x: number) -> number", "absolute value", 1, 1),
    "min": FunctionSpec("min(x: number, y: number, ...) -> number", "smallest argument", 2, None),
    "max": FunctionSpec("max(x: number, y: number, ...) -> number", "largest argument", 2, None),
    "round": FunctionSpec(
        "round(x: number, digits: integer literal = 0) -> number",
        "round half to even at `digits` decimals (negative: tens, hundreds...)",
        1,
        2,
    ),
    "lower": FunctionSpec("lower(s: string) -> string", "lower-case copy", 1, 1),
    "upper": FunctionSpec("upper(s: string) -> string", "upper-case copy", 1, 1),
    "startswith": FunctionSpec("startswith(s: string, prefix: string) -> bool", "s begins with prefix", 2, 2),
    "endswith": FunctionSpec("endswith(s: string, suffix: string) -> bool", "s ends with suffix", 2, 2),
    "is_missing": FunctionSpec("is_missing(x) -> bool", "x has no value (never skips the rule)", 1, 1),
    "coalesce": FunctionSpec(
        "coalesce(x, y, ...) -> same type", "first argument that has a value (same types)", 2, None
    ),
}
#: functions whose arguments may be missing without skipping the rule
TOLERANT_FUNCTIONS: Final = frozenset({"is_missing", "coalesce"})
MAX_ROUND_DIGITS: Final = 15


def result_type(name: str, args: tuple[Node, ...]) -> str:
    """The type of a call to the function ``name`` with these checked arguments."""
    if name in ("startswith", "endswith", "is_missing"):
        return BOOL
    if name in ("lower", "upper"):
        return STRING
    if name == "coalesce":
        return next((a.type for a in args if a.type in (NUMBER, STRING, BOOL)), ERROR)
    return NUMBER
