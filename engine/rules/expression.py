"""The rule expression language: parser, type checker and scalar evaluator.

A rule condition such as ``amount > 1000 and ip_country != card_country`` is parsed with
:func:`ast.parse` used *as a parser only*: the Python tree is checked against a whitelist of node
types and translated into a small typed tree of our own (:class:`Node` subclasses), which is then
turned into nested closures. User text is never given to ``eval``, ``exec`` or ``compile``.

Every problem (unknown name, type error, forbidden construct, syntax error) is found here, when a
rule set loads; evaluation never raises on values of the declared types. docs/rules.md is the
user-facing reference of the language.
"""

from __future__ import annotations

import ast
import difflib
import functools
import operator
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, get_args

import pandas as pd

FieldType: TypeAlias = Literal["number", "string", "bool"]
FIELD_TYPES: Final[tuple[FieldType, ...]] = get_args(FieldType)

# Internal types: the three field types, lists (only valid on the right of `in`) and ERROR, the type
# of a sub-expression that already produced a problem (compatible with everything, so one mistake
# is reported once rather than cascading up the tree).
NUMBER: Final = "number"
STRING: Final = "string"
BOOL: Final = "bool"
LIST_NUMBER: Final = "list[number]"
LIST_STRING: Final = "list[string]"
LIST_ANY: Final = "list[]"  # the empty list: its element type is unknown and it never matches
ERROR: Final = "error"
_LIST_TYPES: Final = frozenset({LIST_NUMBER, LIST_STRING, LIST_ANY})

# Limits that keep hostile or accidental input from exhausting the parser or the stack.
MAX_LENGTH: Final = 4000
MAX_DEPTH: Final = 100
MAX_NODES: Final = 2500

_MAXF: Final = sys.float_info.max
_NA: Final = pd.NA

Env: TypeAlias = Mapping[str, Any]
_Fn: TypeAlias = Callable[[Env], Any]


# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One problem found in an expression, located in its text."""

    message: str
    offset: int  # 0-based character offset in the expression text
    line: int  # 1-based line in the expression text
    column: int  # 1-based column on that line

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}" if self.line > 1 else f"column {self.column}"
        return f"{where}: {self.message}"


class ExpressionError(ValueError):
    """An expression that cannot be compiled; ``problems`` lists every problem found, in order."""

    def __init__(self, text: str, problems: Sequence[Problem]) -> None:
        self.text = text
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))

    @property
    def message(self) -> str:
        """The first problem's message, without its position."""
        return self.problems[0].message

    @property
    def offset(self) -> int:
        """0-based character offset of the first problem."""
        return self.problems[0].offset

    @property
    def column(self) -> int:
        """1-based column of the first problem."""
        return self.problems[0].column

    def render(self) -> str:
        """The text with a caret under each problem, for terminals and logs."""
        lines = self.text.splitlines() or [""]
        out: list[str] = []
        for p in self.problems:
            source = lines[p.line - 1] if p.line <= len(lines) else ""
            out += [f"{p}", f"  {source}", "  " + " " * (p.column - 1) + "^"]
        return "\n".join(out)


def _position(text: str, offset: int) -> tuple[int, int]:
    """(line, column), both 1-based, of a character offset; \\r\\n, \\r and \\n end lines."""
    line, start = 1, 0
    i = 0
    while i < offset and i < len(text):
        ch = text[i]
        if ch == "\n" or (ch == "\r" and text[i + 1 : i + 2] != "\n"):
            line, start = line + 1, i + 1
        i += 1
    return line, offset - start + 1


# --------------------------------------------------------------------------------------------
# The typed tree


@dataclass(frozen=True, slots=True)
class Node:
    """A checked sub-expression: its type and where it starts in the text."""

    type: str
    offset: int


@dataclass(frozen=True, slots=True)
class Const(Node):
    value: Any  # float, str or bool


@dataclass(frozen=True, slots=True)
class Name(Node):
    name: str


@dataclass(frozen=True, slots=True)
class ListValue(Node):
    values: frozenset[Any]
    name: str | None  # `lists.NAME`, or None for a literal [..]


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: Literal["-", "not"]
    operand: Node


@dataclass(frozen=True, slots=True)
class Logic(Node):
    op: Literal["and", "or"]
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Arith(Node):
    op: Literal["+", "-", "*", "/", "%"]
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Compare(Node):
    op: Literal["==", "!=", "<", "<=", ">", ">="]
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Member(Node):
    negate: bool
    left: Node
    list: ListValue


@dataclass(frozen=True, slots=True)
class Call(Node):
    function: str
    args: tuple[Node, ...]


def render(node: Node) -> str:
    """Canonical, fully parenthesized text of a checked tree; it compiles back to the same tree."""
    if isinstance(node, Const):
        if node.type == BOOL:
            return "true" if node.value else "false"
        return repr(node.value)
    if isinstance(node, Name):
        return node.name
    if isinstance(node, ListValue):
        if node.name is not None:
            return f"lists.{node.name}"
        return "[" + ", ".join(sorted(repr(v) for v in node.values)) + "]"
    if isinstance(node, Unary):
        return f"(-{render(node.operand)})" if node.op == "-" else f"(not {render(node.operand)})"
    if isinstance(node, Logic):
        return "(" + f" {node.op} ".join(render(o) for o in node.operands) + ")"
    if isinstance(node, Arith | Compare):
        return f"({render(node.left)} {node.op} {render(node.right)})"
    if isinstance(node, Member):
        return f"({render(node.left)} {'not in' if node.negate else 'in'} {render(node.list)})"
    if isinstance(node, Call):
        return f"{node.function}({', '.join(render(a) for a in node.args)})"
    raise TypeError(f"not an expression node: {node!r}")


# --------------------------------------------------------------------------------------------
# Functions


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
_TOLERANT_FUNCTIONS: Final = frozenset({"is_missing", "coalesce"})
MAX_ROUND_DIGITS: Final = 15


def _pow10(digits: int) -> float:
    # numpy's power_of_ten(): exact for |digits| <= 22, so the scalar and vectorized rounding agree.
    return float(10 ** abs(digits))


def round_number(x: float, digits: int) -> float | None:
    """numpy's rounding (scale, round half to even, unscale) so both evaluators agree to the bit.

    Python's round(x, n) rounds the decimal repr instead (round(2.675, 2) == 2.67, numpy gives
    2.68); agreeing with the backtests matters more than that nicety. Overflow gives missing.
    """
    p = _pow10(digits)
    if digits >= 0:
        y = x * p
        if not -_MAXF <= y <= _MAXF:
            return None
        r = round(y) / p
    else:
        r = round(x / p) * p
    return r if -_MAXF <= r <= _MAXF else None


# --------------------------------------------------------------------------------------------
# Missing values


def find_missing(env: Env, numbers: Sequence[str], others: Sequence[str]) -> set[str] | None:
    """The names among ``numbers`` (number fields) and ``others`` whose value is missing in env.

    None when nothing is missing, the common case, so callers test it for free. This is the
    same test as :meth:`Expression.evaluate` makes, done once per payment for a whole rule set.
    """
    missing: set[str] | None = None
    get = env.get
    for name in numbers:
        v = get(name)
        if v is None or v is _NA or not -_MAXF <= v <= _MAXF:
            if missing is None:
                missing = set()
            missing.add(name)
    for name in others:
        v = get(name)
        if v is None or v is _NA or v != v:
            if missing is None:
                missing = set()
            missing.add(name)
    return missing


# --------------------------------------------------------------------------------------------
# The checker: Python AST -> typed tree


_BINOPS: Final[Mapping[type[ast.operator], Literal["+", "-", "*", "/", "%"]]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Mod: "%",
}
_BAD_BINOPS: Final[Mapping[type[ast.operator], str]] = {
    ast.Pow: "'**' (power) is not supported",
    ast.FloorDiv: "'//' is not supported: use round(a / b) or a % b",
    ast.BitAnd: "'&' is not supported: use 'and'",
    ast.BitOr: "'|' is not supported: use 'or'",
    ast.BitXor: "'^' is not supported",
    ast.LShift: "'<<' is not supported",
    ast.RShift: "'>>' is not supported",
    ast.MatMult: "'@' is not supported",
}
_CMPOPS: Final[Mapping[type[ast.cmpop], Literal["==", "!=", "<", "<=", ">", ">="]]] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_FORBIDDEN: Final[Mapping[type[ast.AST], str]] = {
    ast.Subscript: "indexing with [...] is not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.IfExp: "'x if c else y' is not supported: write separate rules, or use coalesce()",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Tuple: "a comma is not allowed here (write 1000, not 1,000; lists are written [a, b])",
    ast.Dict: "{...} is not allowed (lists are written [a, b])",
    ast.Set: "{...} is not allowed (lists are written [a, b])",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}
_NULL_NAMES: Final = frozenset({"null", "none", "None", "NULL", "nil", "NaN", "nan"})
_TRUE_NAMES: Final = frozenset({"true", "True"})
_FALSE_NAMES: Final = frozenset({"false", "False"})
_DESCRIBE: Final[Mapping[str, str]] = {
    NUMBER: "a number",
    STRING: "a string",
    BOOL: "a condition (true/false)",
    LIST_NUMBER: "a list of numbers",
    LIST_STRING: "a list of strings",
    LIST_ANY: "an empty list",
    ERROR: "invalid",
}
_NO_NULL: Final = (
    "there is no null value: test a missing value with is_missing(x), or give it a default "
    "with coalesce(x, default)"
)


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@functools.lru_cache(maxsize=256)
def list_type(values: frozenset[Any]) -> str | None:
    """LIST_STRING, LIST_NUMBER or LIST_ANY for a list's values; None when they mix types."""
    if not values:
        return LIST_ANY
    if all(isinstance(v, str) for v in values):
        return LIST_STRING
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return LIST_NUMBER
    return None


class _Checker:
    """Translates one parsed expression into the typed tree, collecting every problem."""

    def __init__(
        self,
        text: str,
        parsed_text: str,
        lead: int,
        names: Mapping[str, FieldType],
        lists: Mapping[str, frozenset[Any]],
    ) -> None:
        self.text = text
        self.parsed = parsed_text
        self.parsed_bytes = parsed_text.encode("utf-8", "surrogatepass")
        self.ascii = parsed_text.isascii()
        self.lead = lead
        self.names = names
        self.lists = lists
        self.problems: list[Problem] = []
        self.strict: dict[str, bool] = {}  # name -> read at least once outside is_missing/coalesce

    # -- positions and problems

    def _char(self, byte_col: int) -> int:
        if self.ascii:
            return self.lead + byte_col
        return self.lead + len(self.parsed_bytes[:byte_col].decode("utf-8", "replace"))

    def at(self, node: ast.AST) -> int:
        return self._char(getattr(node, "col_offset", 0))

    def problem(self, offset: int, message: str) -> None:
        line, column = _position(self.text, offset)
        self.problems.append(Problem(message, offset, line, column))

    def error(self, node: ast.AST, message: str, result_type: str = ERROR) -> Node:
        self.problem(self.at(node), message)
        return Const(result_type, self.at(node), None)

    def snippet(self, node: ast.AST) -> str:
        start = getattr(node, "col_offset", 0)
        end = getattr(node, "end_col_offset", None) or start
        text = self.parsed_bytes[start:end].decode("utf-8", "replace")
        text = text if len(text) <= 40 else text[:37] + "..."
        return text if text[:1] in ("'", '"') else f"'{text}'"

    def op_offset(self, left: ast.AST, right: ast.AST, symbol: str) -> int:
        """Offset of an operator symbol between two operands, for a precise caret."""
        lo = getattr(left, "end_col_offset", None) or 0
        hi = getattr(right, "col_offset", lo)
        found = self.parsed_bytes.find(symbol.encode(), lo, hi)
        return self._char(found if found >= 0 else lo)

    # -- dispatch

    def visit(self, node: ast.AST, tolerant: bool) -> Node:
        if isinstance(node, ast.BoolOp):
            return self.visit_boolop(node, tolerant)
        if isinstance(node, ast.UnaryOp):
            return self.visit_unary(node, tolerant)
        if isinstance(node, ast.BinOp):
            return self.visit_binop(node, tolerant)
        if isinstance(node, ast.Compare):
            return self.visit_compare(node, tolerant)
        if isinstance(node, ast.Call):
            return self.visit_call(node, tolerant)
        if isinstance(node, ast.Name):
            return self.visit_name(node, tolerant)
        if isinstance(node, ast.Constant):
            return self.visit_constant(node)
        if isinstance(node, ast.Attribute):
            return self.visit_attribute(node)
        if isinstance(node, ast.List):
            return self.visit_list(node)
        message = _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed in a rule expression")
        return self.error(node, message)

    # -- leaves

    def visit_constant(self, node: ast.Constant) -> Node:
        value = node.value
        if isinstance(value, bool):
            return Const(BOOL, self.at(node), value)
        if isinstance(value, int | float):
            try:
                number = float(value)
            except OverflowError:
                number = float("inf")
            if not -_MAXF <= number <= _MAXF:
                return self.error(node, "number too large")
            return Const(NUMBER, self.at(node), number)
        if isinstance(value, str):
            return Const(STRING, self.at(node), value)
        if value is None:
            return self.error(node, _NO_NULL)
        return self.error(node, f"{type(value).__name__} literals are not allowed")

    def visit_name(self, node: ast.Name, tolerant: bool) -> Node:
        name = node.id
        if name in _TRUE_NAMES or name in _FALSE_NAMES:
            return Const(BOOL, self.at(node), name in _TRUE_NAMES)
        if "__" in name:
            return self.error(node, f"names containing '__' are not allowed: {name}")
        if name in _NULL_NAMES:
            return self.error(node, _NO_NULL)
        if name == "lists":
            return self.error(node, "'lists' must be followed by a list name: lists.NAME")
        if name in FUNCTIONS:
            return self.error(node, f"{name} is a function: call it as {name}(...)")
        if name not in self.names:
            if name.upper() in {"AND", "OR", "NOT", "IN"}:
                return self.error(node, f"unknown name '{name}': write the keyword in lower case")
            return self.error(node, f"unknown name '{name}'" + _did_you_mean(name, self.names))
        self.strict[name] = self.strict.get(name, False) or not tolerant
        return Name(self.names[name], self.at(node), name)

    def visit_attribute(self, node: ast.Attribute) -> Node:
        if not (isinstance(node.value, ast.Name) and node.value.id == "lists"):
            return self.error(node, "attribute access (a.b) is not allowed; only lists.NAME")
        name = node.attr
        if "__" in name:
            return self.error(node, f"names containing '__' are not allowed: {name}")
        if name not in self.lists:
            return self.error(node, f"unknown list '{name}'" + _did_you_mean(name, self.lists))
        values = self.lists[name]
        kind = list_type(values)
        if kind is None:
            return self.error(node, f"list '{name}' mixes strings and numbers")
        return ListValue(kind, self.at(node), values, name)

    def visit_list(self, node: ast.List) -> Node:
        values: list[Any] = []
        kinds: set[str] = set()
        for element in node.elts:
            item = self.literal(element)
            if item is None:
                self.error(element, "a list written [..] may only hold literal strings or numbers")
                continue
            kinds.add(item.type)
            values.append(item.value)
        if len(kinds) > 1:
            return self.error(node, "a list must not mix strings and numbers")
        kind = {NUMBER: LIST_NUMBER, STRING: LIST_STRING}.get(next(iter(kinds), ""), LIST_ANY)
        return ListValue(kind, self.at(node), frozenset(values), None)

    def literal(self, node: ast.AST) -> Const | None:
        """A literal string or number inside [..], including a negative number."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return Const(STRING, self.at(node), node.value)
        checked = self.visit(node, tolerant=False) if self._is_number_literal(node) else None
        return checked if isinstance(checked, Const) and checked.type == NUMBER else None

    @staticmethod
    def _is_number_literal(node: ast.AST) -> bool:
        while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            node = node.operand
        return isinstance(node, ast.Constant) and type(node.value) in (int, float)

    # -- operators

    def visit_boolop(self, node: ast.BoolOp, tolerant: bool) -> Node:
        op: Literal["and", "or"] = "and" if isinstance(node.op, ast.And) else "or"
        operands = []
        for value in node.values:
            checked = self.visit(value, tolerant)
            if checked.type not in (BOOL, ERROR):
                self.problem(
                    self.at(value),
                    f"'{op}' needs conditions on both sides, but {self.snippet(value)} is "
                    f"{_DESCRIBE[checked.type]}" + _hint_condition(checked.type),
                )
            operands.append(checked)
        return Logic(BOOL, self.at(node), op, tuple(operands))

    def visit_unary(self, node: ast.UnaryOp, tolerant: bool) -> Node:
        if isinstance(node.op, ast.Invert):
            return self.error(node, "'~' is not supported: use 'not'")
        operand = self.visit(node.operand, tolerant)
        if isinstance(node.op, ast.Not):
            if operand.type not in (BOOL, ERROR):
                self.problem(
                    self.at(node),
                    f"'not' needs a condition, but {self.snippet(node.operand)} is {_DESCRIBE[operand.type]}",
                )
            return Unary(BOOL, self.at(node), "not", operand)
        if operand.type not in (NUMBER, ERROR):
            sign = "-" if isinstance(node.op, ast.USub) else "+"
            self.problem(
                self.at(node),
                f"'{sign}' needs a number, but {self.snippet(node.operand)} is {_DESCRIBE[operand.type]}",
            )
            return Const(NUMBER, self.at(node), None)
        if isinstance(node.op, ast.UAdd):
            return operand
        if isinstance(operand, Const) and isinstance(operand.value, float):
            return Const(NUMBER, self.at(node), -operand.value)  # fold literals like -5
        return Unary(NUMBER, self.at(node), "-", operand)

    def visit_binop(self, node: ast.BinOp, tolerant: bool) -> Node:
        bad = _BAD_BINOPS.get(type(node.op))
        left = self.visit(node.left, tolerant)
        right = self.visit(node.right, tolerant)
        op = _BINOPS.get(type(node.op))
        if bad is not None or op is None:
            self.problem(self.at(node), bad or "operator not supported")
            return Const(NUMBER, self.at(node), None)
        for side, checked in ((node.left, left), (node.right, right)):
            if checked.type not in (NUMBER, ERROR):
                self.problem(
                    self.op_offset(node.left, node.right, op),
                    f"'{op}' needs numbers on both sides, but {self.snippet(side)} is "
                    f"{_DESCRIBE[checked.type]}",
                )
        return Arith(NUMBER, self.at(node), op, left, right)

    def visit_compare(self, node: ast.Compare, tolerant: bool) -> Node:
        parts: list[Node] = []
        left_ast: ast.AST = node.left
        left = self.visit(node.left, tolerant)
        for op_ast, right_ast in zip(node.ops, node.comparators, strict=True):
            if isinstance(op_ast, ast.In | ast.NotIn):
                right = self.visit(right_ast, tolerant)
                parts.append(
                    self.membership(node, left_ast, left, right_ast, right, isinstance(op_ast, ast.NotIn))
                )
            elif isinstance(op_ast, ast.Is | ast.IsNot):
                self.problem(
                    self.op_offset(left_ast, right_ast, "is"),
                    "'is' is not supported: compare with == or !=, "
                    "or test for a missing value with is_missing(x)",
                )
                right = self.visit(right_ast, tolerant)
                parts.append(Const(BOOL, self.at(node), None))
            else:
                op = _CMPOPS[type(op_ast)]
                right = self.visit(right_ast, tolerant)
                self.check_comparison(op, left_ast, left, right_ast, right)
                parts.append(Compare(BOOL, self.at(left_ast), op, left, right))
            left_ast, left = right_ast, right
        if len(parts) == 1:
            return parts[0]
        # a < b < c means a < b and b < c; sub-expressions have no side effects, so sharing is safe.
        return Logic(BOOL, self.at(node), "and", tuple(parts))

    def check_comparison(
        self, op: str, left_ast: ast.AST, left: Node, right_ast: ast.AST, right: Node
    ) -> None:
        lt, rt = left.type, right.type
        where = self.op_offset(left_ast, right_ast, op)
        if ERROR in (lt, rt):
            return
        for side, t in ((left_ast, lt), (right_ast, rt)):
            if t in _LIST_TYPES:
                self.problem(where, f"a list can only be used after 'in' or 'not in': {self.snippet(side)}")
                return
        if op in ("==", "!="):
            if lt != rt:
                hint = ""
                if {lt, rt} == {STRING, NUMBER}:
                    hint = " (quote the number if the field holds text, e.g. '411111')"
                elif BOOL in (lt, rt):
                    hint = " (use true or false for conditions)"
                self.problem(
                    where,
                    f"cannot compare {_DESCRIBE[lt]} ({self.snippet(left_ast)}) with "
                    f"{_DESCRIBE[rt]} ({self.snippet(right_ast)}){hint}",
                )
            return
        if lt != NUMBER or rt != NUMBER:
            culprit, t = (left_ast, lt) if lt != NUMBER else (right_ast, rt)
            extra = ": strings and conditions only support == and !=" if t in (STRING, BOOL) else ""
            self.problem(where, f"'{op}' needs numbers, but {self.snippet(culprit)} is {_DESCRIBE[t]}{extra}")

    def membership(
        self, node: ast.AST, left_ast: ast.AST, left: Node, right_ast: ast.AST, right: Node, negate: bool
    ) -> Node:
        word = "not in" if negate else "in"
        where = self.op_offset(left_ast, right_ast, "in")
        if not isinstance(right, ListValue):
            if right.type != ERROR:
                self.problem(
                    where,
                    f"'{word}' needs a list on its right (lists.NAME or [..]), but "
                    f"{self.snippet(right_ast)} is {_DESCRIBE[right.type]}",
                )
            return Const(BOOL, self.at(node), None)
        if left.type in _LIST_TYPES:
            self.problem(where, f"the left side of '{word}' must be a single value, not a list")
        elif left.type not in (ERROR,) and right.type != LIST_ANY:
            element = NUMBER if right.type == LIST_NUMBER else STRING
            if left.type != element:
                self.problem(
                    where,
                    f"{self.snippet(left_ast)} is {_DESCRIBE[left.type]} but "
                    f"{self.snippet(right_ast)} is {_DESCRIBE[right.type]}",
                )
        return Member(BOOL, self.at(left_ast), negate, left, right)

    # -- calls

    def visit_call(self, node: ast.Call, tolerant: bool) -> Node:
        func = node.func
        if not isinstance(func, ast.Name):
            for arg in node.args:
                self.visit(arg, tolerant)
            return self.error(node, "only the listed functions can be called: " + ", ".join(FUNCTIONS))
        name = func.id
        spec = FUNCTIONS.get(name)
        if spec is None:
            reason = "names containing '__' are not allowed" if "__" in name else f"unknown function '{name}'"
            return self.error(
                node, reason + _did_you_mean(name, FUNCTIONS) + "; functions are: " + ", ".join(FUNCTIONS)
            )
        if node.keywords:
            self.problem(self.at(node.keywords[0].value), f"{name}() takes no keyword arguments")
        n = len(node.args)
        if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
            self.problem(self.at(node), f"wrong number of arguments ({n}): {spec.signature}")
            for arg in node.args:  # still report problems inside the arguments
                self.visit(arg, tolerant=True)
            return Const(_result_type(name, ()), self.at(node), None)
        inner = tolerant or name in _TOLERANT_FUNCTIONS
        args: tuple[Node, ...]
        if name == "round" and n == 2:
            args = (self.visit(node.args[0], inner), self.round_digits(node.args[1]))
        else:
            args = tuple(self.visit(a, inner) for a in node.args)
        self.check_call(node, name, spec, args)
        return Call(_result_type(name, args), self.at(node), name, args)

    def round_digits(self, node: ast.AST) -> Node:
        checked = self.visit(node, tolerant=False) if self._is_number_literal(node) else None
        if (
            not isinstance(checked, Const)
            or checked.type != NUMBER
            or checked.value != int(checked.value)
            or abs(checked.value) > MAX_ROUND_DIGITS
        ):
            return self.error(
                node,
                f"round(): digits must be a whole number literal between -{MAX_ROUND_DIGITS} and "
                f"{MAX_ROUND_DIGITS}",
            )
        return checked

    def check_call(self, node: ast.Call, name: str, spec: FunctionSpec, args: tuple[Node, ...]) -> None:
        types = [a.type for a in args]
        if name in ("abs", "min", "max", "round"):
            expected = [NUMBER] * len(args)
        elif name in ("lower", "upper", "startswith", "endswith"):
            expected = [STRING] * len(args)
        elif name == "is_missing":
            expected = [t if t in (NUMBER, STRING, BOOL) else NUMBER for t in types]
        else:  # coalesce: every argument of the first known type
            first = next((t for t in types if t in (NUMBER, STRING, BOOL)), NUMBER)
            expected = [first] * len(args)
        for arg_ast, t, want in zip(node.args, types, expected, strict=True):
            if t not in (want, ERROR):
                self.problem(
                    self.at(arg_ast),
                    f"{name}(): {self.snippet(arg_ast)} is {_DESCRIBE[t]}, expected {_DESCRIBE[want]}"
                    f" ({spec.signature})",
                )


def _result_type(name: str, args: tuple[Node, ...]) -> str:
    if name in ("startswith", "endswith", "is_missing"):
        return BOOL
    if name in ("lower", "upper"):
        return STRING
    if name == "coalesce":
        return next((a.type for a in args if a.type in (NUMBER, STRING, BOOL)), ERROR)
    return NUMBER


def _hint_condition(kind: str) -> str:
    if kind == NUMBER:
        return " (compare it, e.g. x > 0)"
    if kind == STRING:
        return " (compare it, e.g. x == 'value')"
    return ""


def _syntax_message(error: SyntaxError, text: str) -> str:
    message = (error.msg or "invalid syntax").replace(
        "Perhaps you forgot a comma?", "Is an operator missing?"
    )
    if not error.offset and message == "invalid syntax":
        message = "the expression ends too early"
    if "Maybe you meant '==' or ':='" in message or re.search(r"(?<![=!<>])=(?!=)", text):
        return "invalid syntax: compare with '==' (a single '=' is not allowed)"
    if "&&" in text or "||" in text:
        return f"{message}: write 'and' / 'or' instead of '&&' / '||'"
    if "!" in text.replace("!=", ""):
        return f"{message}: write 'not' instead of '!'"
    words = {w.upper() for w in text.split()}
    lower_keywords = any(w in text.split() for w in ("and", "or", "not"))
    if any(w in words for w in ("AND", "OR", "NOT")) and not lower_keywords:
        return f"{message}: keywords are written in lower case (and, or, not)"
    return message


# --------------------------------------------------------------------------------------------
# Compilation entry point


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
        self._fn = _ScalarCompiler(self.tolerant_names).build(root)[0]

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
            if v is None or v is _NA or not -_MAXF <= v <= _MAXF:
                return None
        for name in self._required_others:
            v = get(name)
            if v is None or v is _NA or v != v:
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
    if not isinstance(text, str):
        raise ExpressionError(str(text), [Problem("an expression must be text", 0, 1, 1)])
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            text[:200],
            [
                Problem(
                    f"expression too long ({len(text)} characters, at most {MAX_LENGTH}); "
                    "move long value lists to lists:",
                    0,
                    1,
                    1,
                )
            ],
        )
    # YAML block scalars may span lines. Python needs one logical line in eval mode: map every
    # line break to a space (same length, so offsets hold) and strip the indentation it rejects.
    flat = text.replace("\r", " ").replace("\n", " ")
    parsed = flat.lstrip()
    lead = len(flat) - len(parsed)
    if not parsed.strip():
        raise ExpressionError(text, [Problem("empty expression", 0, 1, 1)])
    tree = _parse(text, parsed, lead)
    _check_size(text, tree, lead)
    checker = _Checker(text, parsed, lead, names, lists)
    root = checker.visit(tree.body, tolerant=False)
    if root.type in _LIST_TYPES:
        checker.problem(lead, "a list can only be used after 'in' or 'not in'")
    elif expected is not None and root.type not in (expected, ERROR):
        checker.problem(
            lead,
            f"the expression must be {_DESCRIBE[expected]}, but it is {_DESCRIBE[root.type]}"
            + (_hint_condition(root.type) if expected == BOOL else ""),
        )
    _check_comments(checker, parsed)
    if checker.problems:
        raise ExpressionError(text, sorted(checker.problems, key=lambda p: p.offset))
    used = {name: names[name] for name in checker.strict}
    required = frozenset(name for name, strict in checker.strict.items() if strict)
    list_names = frozenset(n.name for n in _walk(root) if isinstance(n, ListValue) and n.name is not None)
    return Expression(text, root, used, required, list_names)


def _parse(text: str, parsed: str, lead: int) -> ast.Expression:
    try:
        with warnings.catch_warnings():
            # e.g. SyntaxWarning for `x is 5`: we report our own error, and a warnings filter set
            # to "error" must not turn it into a different exception.
            warnings.simplefilter("ignore")
            return ast.parse(parsed, mode="eval")
    except SyntaxError as e:
        # 3.11 reports a 1-based character offset on the single line we parsed; 0 when the
        # input ended too early, which we point at the end of the text.
        offset = len(text.rstrip()) if not e.offset or (e.lineno or 1) != 1 else lead + e.offset - 1
        offset = min(offset, len(text))
        line, column = _position(text, offset)
        raise ExpressionError(text, [Problem(_syntax_message(e, parsed), offset, line, column)]) from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        # The parser's own limits (deep nesting, huge literals): refuse rather than crash.
        problem = Problem("expression too complex or nested too deeply", 0, 1, 1)
        raise ExpressionError(text, [problem]) from None


def _check_size(text: str, tree: ast.Expression, lead: int) -> None:
    """Refuse trees too deep or too large, iteratively: later passes recurse over the tree."""
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH or count > MAX_NODES:
            column = getattr(node, "col_offset", 0)  # in UTF-8 bytes of the parsed text
            prefix = text[lead:].encode("utf-8", "surrogatepass")[:column]
            offset = min(lead + len(prefix.decode("utf-8", "replace")), len(text))
            line, column = _position(text, offset)
            what = f"nested too deeply (more than {MAX_DEPTH} levels)" if depth > MAX_DEPTH else "too large"
            raise ExpressionError(text, [Problem(f"expression {what}", offset, line, column)])
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_comments(checker: _Checker, parsed: str) -> None:
    # A '#' outside a string would start a Python comment and silently drop the rest of the line,
    # and line breaks were turned into spaces: refuse comments instead of ignoring code.
    if "#" not in parsed:
        return
    quote: str | None = None
    i = 0
    while i < len(parsed):
        ch = parsed[i]
        if quote is not None:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            checker.problem(checker.lead + i, "comments (#) are not allowed inside an expression")
            return
        i += 1


def _walk(node: Node) -> Iterable[Node]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(_children(current))


def _children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of a node."""
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Logic):
        return node.operands
    if isinstance(node, Arith | Compare):
        return (node.left, node.right)
    if isinstance(node, Member):
        return (node.left, node.list)
    if isinstance(node, Call):
        return node.args
    return ()


# --------------------------------------------------------------------------------------------
# Scalar evaluation: the typed tree -> nested closures
#
# Missing values are None inside. A required name is checked once before evaluation, so reading it
# can never give None; each builder also returns whether its result may be None ("may_miss"), and
# only those paths pay for None checks. That keeps the common rule (names, literals, comparisons,
# and/or) free of any missing-value test in the hot path.


def _add(a: float, b: float) -> float | None:
    r = a + b
    return r if -_MAXF <= r <= _MAXF else None


def _sub(a: float, b: float) -> float | None:
    r = a - b
    return r if -_MAXF <= r <= _MAXF else None


def _mul(a: float, b: float) -> float | None:
    r = a * b
    return r if -_MAXF <= r <= _MAXF else None


def _div(a: float, b: float) -> float | None:
    if not b:
        return None
    r = a / b
    return r if -_MAXF <= r <= _MAXF else None


def _mod(a: float, b: float) -> float | None:
    # finite a and non-zero finite b: |a % b| < |b|, always finite
    return a % b if b else None


_ARITH: Final[Mapping[str, Callable[[float, float], float | None]]] = {
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
}
_CMP: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_FLIP: Final[Mapping[str, str]] = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}

# Specialized closures for the commonest shapes, written out so that CPython runs a single frame
# with inline bytecode (no call per operand).
_NUM_NAME_CONST: Final[Mapping[str, Callable[[str, Any], _Fn]]] = {
    "==": lambda n, c: lambda env: float(env[n]) == c,
    "!=": lambda n, c: lambda env: float(env[n]) != c,
    "<": lambda n, c: lambda env: float(env[n]) < c,
    "<=": lambda n, c: lambda env: float(env[n]) <= c,
    ">": lambda n, c: lambda env: float(env[n]) > c,
    ">=": lambda n, c: lambda env: float(env[n]) >= c,
}
_NAME_CONST: Final[Mapping[str, Callable[[str, Any], _Fn]]] = {
    "==": lambda n, c: lambda env: env[n] == c,
    "!=": lambda n, c: lambda env: env[n] != c,
}
_FN_CONST: Final[Mapping[str, Callable[[_Fn, Any], _Fn]]] = {
    "==": lambda f, c: lambda env: f(env) == c,
    "!=": lambda f, c: lambda env: f(env) != c,
    "<": lambda f, c: lambda env: f(env) < c,
    "<=": lambda f, c: lambda env: f(env) <= c,
    ">": lambda f, c: lambda env: f(env) > c,
    ">=": lambda f, c: lambda env: f(env) >= c,
}
_FN_FN: Final[Mapping[str, Callable[[_Fn, _Fn], _Fn]]] = {
    "==": lambda f, g: lambda env: f(env) == g(env),
    "!=": lambda f, g: lambda env: f(env) != g(env),
    "<": lambda f, g: lambda env: f(env) < g(env),
    "<=": lambda f, g: lambda env: f(env) <= g(env),
    ">": lambda f, g: lambda env: f(env) > g(env),
    ">=": lambda f, g: lambda env: f(env) >= g(env),
}


class _ScalarCompiler:
    def __init__(self, tolerant: frozenset[str]) -> None:
        self.tolerant = tolerant

    def strict_name(self, node: Node) -> str | None:
        if isinstance(node, Name) and node.name not in self.tolerant:
            return node.name
        return None

    def build(self, node: Node) -> tuple[_Fn, bool]:
        """(closure, may_miss) for a node."""
        if isinstance(node, Const):
            value = node.value
            return (lambda env: value), False
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Logic):
            return self.logic(node)
        if isinstance(node, Arith):
            return self.arith(node)
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, Member):
            return self.member(node)
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError(f"cannot evaluate {node!r}")  # ListValue only appears inside Member

    def name(self, node: Name) -> tuple[_Fn, bool]:
        n = node.name
        number = node.type == NUMBER
        if n not in self.tolerant:
            if number:
                return (lambda env: float(env[n])), False
            return operator.itemgetter(n), False

        def read(env: Env) -> Any:
            v = env.get(n)
            if v is None or v is _NA:
                return None
            if number:
                return float(v) if -_MAXF <= v <= _MAXF else None
            return None if v != v else v

        return read, True

    def unary(self, node: Unary) -> tuple[_Fn, bool]:
        f, miss = self.build(node.operand)
        if node.op == "not":
            if not miss:
                return (lambda env: not f(env)), False

            def not_(env: Env) -> Any:
                v = f(env)
                return None if v is None else not v

            return not_, True
        if not miss:
            return (lambda env: -f(env)), False

        def neg(env: Env) -> Any:
            v = f(env)
            return None if v is None else -v

        return neg, True

    def logic(self, node: Logic) -> tuple[_Fn, bool]:
        built = [self.build(o) for o in node.operands]
        fns = tuple(f for f, _ in built)
        miss = any(m for _, m in built)
        is_and = node.op == "and"
        if not miss:
            if len(fns) == 2:
                a, b = fns
                return ((lambda env: a(env) and b(env)) if is_and else (lambda env: a(env) or b(env))), False
            if len(fns) == 3:
                a, b, c = fns
                if is_and:
                    return (lambda env: a(env) and b(env) and c(env)), False
                return (lambda env: a(env) or b(env) or c(env)), False

            # explicit loops: all()/any() over a generator cost an extra frame per operand
            def all_(env: Env) -> bool:
                for f in fns:  # noqa: SIM110
                    if not f(env):
                        return False
                return True

            def any_(env: Env) -> bool:
                for f in fns:  # noqa: SIM110
                    if f(env):
                        return True
                return False

            return (all_ if is_and else any_), False

        # Kleene logic: false and missing = false, true or missing = true, otherwise missing.
        # It is what short-circuit evaluation gives, and the vectorized evaluator does the same.
        def kleene_and(env: Env) -> bool | None:
            unknown = False
            for f in fns:
                v = f(env)
                if v is None:
                    unknown = True
                elif not v:
                    return False
            return None if unknown else True

        def kleene_or(env: Env) -> bool | None:
            unknown = False
            for f in fns:
                v = f(env)
                if v is None:
                    unknown = True
                elif v:
                    return True
            return None if unknown else False

        return (kleene_and if is_and else kleene_or), True

    def arith(self, node: Arith) -> tuple[_Fn, bool]:
        op = _ARITH[node.op]
        fa, ma = self.build(node.left)
        fb, mb = self.build(node.right)
        # The result may always be missing: overflow to infinity, division by zero.
        if not ma and not mb:
            if isinstance(node.right, Const):
                c = node.right.value
                return (lambda env: op(fa(env), c)), True
            return (lambda env: op(fa(env), fb(env))), True

        def arith(env: Env) -> float | None:
            a = fa(env)
            if a is None:
                return None
            b = fb(env)
            if b is None:
                return None
            return op(a, b)

        return arith, True

    def compare(self, node: Compare) -> tuple[_Fn, bool]:
        op: str = node.op
        left, right = node.left, node.right
        if isinstance(left, Const) and not isinstance(right, Const):
            left, right, op = right, left, _FLIP[op]
        fa, ma = self.build(left)
        fb, mb = self.build(right)
        if not ma and not mb:
            name = self.strict_name(left)
            if isinstance(right, Const):
                c = right.value
                if name is not None and left.type == NUMBER:
                    return _NUM_NAME_CONST[op](name, c), False
                if name is not None and op in _NAME_CONST:
                    return _NAME_CONST[op](name, c), False
                return _FN_CONST[op](fa, c), False
            return _FN_FN[op](fa, fb), False
        cmp = _CMP[op]

        def compare(env: Env) -> bool | None:
            a = fa(env)
            if a is None:
                return None
            b = fb(env)
            if b is None:
                return None
            return cmp(a, b)

        return compare, True

    def member(self, node: Member) -> tuple[_Fn, bool]:
        values = node.list.values
        negate = node.negate
        f, miss = self.build(node.left)
        name = self.strict_name(node.left)
        if not miss:
            if name is not None and node.left.type != NUMBER:
                if negate:
                    return (lambda env: env[name] not in values), False
                return (lambda env: env[name] in values), False
            if negate:
                return (lambda env: f(env) not in values), False
            return (lambda env: f(env) in values), False

        def member(env: Env) -> bool | None:
            v = f(env)
            if v is None:
                return None
            return (v not in values) if negate else (v in values)

        return member, True

    def call(self, node: Call) -> tuple[_Fn, bool]:
        name = node.function
        if name == "round":
            f, _ = self.build(node.args[0])
            digits = int(node.args[1].value) if len(node.args) == 2 else 0  # type: ignore[attr-defined]

            def round_(env: Env) -> float | None:
                v = f(env)
                return None if v is None else round_number(v, digits)

            return round_, True
        built = [self.build(a) for a in node.args]
        fns = tuple(f for f, _ in built)
        misses = [m for _, m in built]
        if name == "is_missing":
            (f,) = fns
            if not misses[0]:
                return (lambda env: False), False
            return (lambda env: f(env) is None), False
        if name == "coalesce":

            def coalesce(env: Env) -> Any:
                for g in fns:
                    v = g(env)
                    if v is not None:
                        return v
                return None

            return coalesce, all(misses)
        impl = _SCALAR_FUNCTIONS[name]
        if not any(misses):
            if len(fns) == 1:
                (f,) = fns
                return (lambda env: impl(f(env))), False
            return (lambda env: impl(*[g(env) for g in fns])), False

        def call(env: Env) -> Any:
            values = []
            for g in fns:
                v = g(env)
                if v is None:
                    return None
                values.append(v)
            return impl(*values)

        return call, True


_SCALAR_FUNCTIONS: Final[Mapping[str, Callable[..., Any]]] = {
    "abs": abs,
    "min": min,
    "max": max,
    "lower": str.lower,
    "upper": str.upper,
    "startswith": str.startswith,
    "endswith": str.endswith,
}
