"""The rule expression language: a compiled :class:`Expression`, and :func:`compile_expression`.

A rule condition such as ``amount > 1000 and ip_country != card_country`` goes through three steps,
each in its own module:

- engine/rules/parser.py: :func:`ast.parse` used *as a parser only*, with size limits;
- engine/rules/checker.py: the Python tree is checked against a whitelist of node types and
  translated into a small typed tree of our own (engine/rules/nodes.py), with every problem found;
- engine/rules/scalar.py: the typed tree is turned into nested closures.

User text is never given to ``eval``, ``exec`` or ``compile``. Every problem (unknown name, type
error, forbidden construct, syntax error) is found when a rule set loads; evaluation never raises
on values of the declared types. The vectorized twin for backtests is engine/rules/vectorized.py.
docs/rules.md is the user-facing reference of the language.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from antifraud.engine.rules.checker import Checker
from antifraud.engine.rules.errors import ExpressionError
from antifraud.engine.rules.nodes import FIELD_TYPES, MAXF, NUMBER, FieldType, ListValue, Node, render, walk
from antifraud.engine.rules.parser import parse
from antifraud.engine.rules.scalar import NA, Env, ScalarCompiler


class Expression:
    """A compiled expression: evaluate it with :meth:`evaluate` on a mapping of values."""

    __slots__ = (
        "_fn",
        "_required_numbers",
        "_required_others",
        "lists",
        "name_types",
        "names",
        "required_names",
        "root",
        "text",
        "tolerant_names",
        "type",
    )

    def __init__(
        self,
        text: str,
        root: Node,
        name_types: Mapping[str, FieldType],
        required: frozenset[str],
        lists: frozenset[str],
    ) -> None:
        self.text = text
        self.root = root
        self.type: FieldType = root.type  # type: ignore[assignment]
        self.name_types = dict(name_types)
        #: every name the expression reads
        self.names: frozenset[str] = frozenset(name_types)
        #: names whose missing value makes the expression skip (evaluate to None)
        self.required_names = required
        #: names read only inside is_missing() / coalesce(): a missing value does not skip
        self.tolerant_names: frozenset[str] = self.names - required
        #: the lists.NAME references
        self.lists = lists
        self._required_numbers = tuple(sorted(n for n in required if name_types[n] == NUMBER))
        self._required_others = tuple(sorted(n for n in required if name_types[n] != NUMBER))
        self._fn = ScalarCompiler(self.tolerant_names).build(root)[0]

    @property
    def canonical(self) -> str:
        """Whitespace- and parenthesis-independent text of the expression."""
        return render(self.root)

    def evaluate(self, env: Env) -> Any:
        """The value of the expression for one payment, or None when it is skipped.

        None means a required name is missing in ``env`` (absent, None, NaN, pandas NA, or a
        non-finite number), or a missing value arose inside (division by zero, overflow).
        """
        get = env.get
        for name in self._required_numbers:
            v = get(name)
            if v is None or v is NA or not -MAXF <= v <= MAXF:
                return None
        for name in self._required_others:
            v = get(name)
            if v is None or v is NA or v != v:
                return None
        return self._fn(env)

    def evaluate_unchecked(self, env: Env) -> Any:
        """Like :meth:`evaluate`, for a caller that has already checked the required names.

        The rule set checks each name once per payment for all rules; calling this with a
        required name missing is undefined.
        """
        return self._fn(env)

    def __repr__(self) -> str:
        return f"Expression({self.text!r}, type={self.type})"


def compile_expression(
    text: str,
    names: Mapping[str, FieldType],
    lists: Mapping[str, frozenset[Any]] | None = None,
    *,
    expected: FieldType | None = "bool",
) -> Expression:
    """Parse, type-check and compile ``text``.

    ``names`` maps each readable name to its type; ``lists`` maps list names (used as
    ``lists.NAME``) to their values, all strings or all numbers. ``expected`` is the type the
    whole expression must have: "bool" for rule conditions, None for any.
    Raises :class:`ExpressionError` listing every problem, each with its position.
    """
    lists = lists or {}
    for name, kind in names.items():
        if kind not in FIELD_TYPES:
            raise ValueError(f"name {name!r}: type must be one of {FIELD_TYPES}, not {kind!r}")
    parsed = parse(text)
    checker = Checker(text, parsed.source, parsed.lead, names, lists)
    root = checker.check(parsed.tree.body, expected)
    if checker.problems:
        raise ExpressionError(text, sorted(checker.problems, key=lambda p: p.offset))
    used = {name: names[name] for name in checker.strict}
    required = frozenset(name for name, strict in checker.strict.items() if strict)
    list_names = frozenset(n.name for n in walk(root) if isinstance(n, ListValue) and n.name is not None)
    return Expression(text, root, used, required, list_names)
