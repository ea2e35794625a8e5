"""The type checker: Python syntax tree -> the typed tree of engine/rules/nodes.py.

Only whitelisted node types are translated; anything else (attribute access, subscripts, lambdas,
comprehensions...) is a problem. Every problem is collected, not only the first, each located in the
expression text with a message for risk staff (types, did-you-mean for names, lists and functions).
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from antifraud.engine.rules.errors import Problem, position
from antifraud.engine.rules.functions import (
    FUNCTIONS,
    MAX_ROUND_DIGITS,
    TOLERANT_FUNCTIONS,
    FunctionSpec,
    result_type,
)
from antifraud.engine.rules.nodes import (
    BOOL,
    ERROR,
    LIST_ANY,
    LIST_NUMBER,
    LIST_STRING,
    LIST_TYPES,
    MAXF,
    NUMBER,
    STRING,
    Arith,
    Call,
    Compare,
    Const,
    FieldType,
    ListValue,
    Logic,
    Member,
    Name,
    Node,
    Unary,
    list_type,
)

_METADATA_PREFIX: Final = "metadata."  # as engine.rules.ruleset.METADATA_PREFIX (which imports this module)
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


class Checker:
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
        line, column = position(self.text, offset)
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

    # -- the whole expression

    def check(self, body: ast.AST, expected: FieldType | None) -> Node:
        """The typed tree of the whole expression; its problems are left in ``self.problems``.

        ``expected`` is the type the expression must have: "bool" for rule conditions, None for any.
        """
        root = self.visit(body, tolerant=False)
        if root.type in LIST_TYPES:
            self.problem(self.lead, "a list can only be used after 'in' or 'not in'")
        elif expected is not None and root.type not in (expected, ERROR):
            self.problem(
                self.lead,
                f"the expression must be {_DESCRIBE[expected]}, but it is {_DESCRIBE[root.type]}"
                + (_hint_condition(root.type) if expected == BOOL else ""),
            )
        _check_comments(self, self.parsed)
        return root

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
            return self.visit_attribute(node, tolerant)
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
            if not -MAXF <= number <= MAXF:
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
        if name == "metadata":
            return self.error(node, "'metadata' must be followed by a key: metadata.KEY")
        if name in FUNCTIONS:
            return self.error(node, f"{name} is a function: call it as {name}(...)")
        if name not in self.names:
            if name.upper() in {"AND", "OR", "NOT", "IN"}:
                return self.error(node, f"unknown name '{name}': write the keyword in lower case")
            return self.error(node, f"unknown name '{name}'" + _did_you_mean(name, self.names))
        self.strict[name] = self.strict.get(name, False) or not tolerant
        return Name(self.names[name], self.at(node), name)

    def visit_attribute(self, node: ast.Attribute, tolerant: bool) -> Node:
        if isinstance(node.value, ast.Name) and node.value.id == "metadata":
            return self.visit_metadata(node, tolerant)
        if not (isinstance(node.value, ast.Name) and node.value.id == "lists"):
            return self.error(node, "attribute access (a.b) is not allowed; only lists.NAME and metadata.KEY")
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

    def visit_metadata(self, node: ast.Attribute, tolerant: bool) -> Node:
        """metadata.KEY: a name like any other ("metadata.KEY"), typed by the rule set's
        `metadata:` declaration; absent from a payment, it is missing (the rule is skipped)."""
        key = node.attr
        if "__" in key:
            return self.error(node, f"names containing '__' are not allowed: {key}")
        name = _METADATA_PREFIX + key
        if name not in self.names:
            declared = [n[len(_METADATA_PREFIX) :] for n in self.names if n.startswith(_METADATA_PREFIX)]
            hint = _did_you_mean(key, declared)
            return self.error(
                node,
                f"unknown metadata key '{key}'"
                + (hint or ": declare it with its type under metadata: in a rules file"),
            )
        self.strict[name] = self.strict.get(name, False) or not tolerant
        return Name(self.names[name], self.at(node), name)

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
            if t in LIST_TYPES:
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
        if left.type in LIST_TYPES:
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
            return Const(result_type(name, ()), self.at(node), None)
        inner = tolerant or name in TOLERANT_FUNCTIONS
        args: tuple[Node, ...]
        if name == "round" and n == 2:
            args = (self.visit(node.args[0], inner), self.round_digits(node.args[1]))
        else:
            args = tuple(self.visit(a, inner) for a in node.args)
        self.check_call(node, name, spec, args)
        return Call(result_type(name, args), self.at(node), name, args)

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


def _hint_condition(kind: str) -> str:
    if kind == NUMBER:
        return " (compare it, e.g. x > 0)"
    if kind == STRING:
        return " (compare it, e.g. x == 'value')"
    return ""


def _check_comments(checker: Checker, parsed: str) -> None:
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
