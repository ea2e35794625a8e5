"""The typed tree of a checked expression: the language's types, the node classes, and render().

The checker (engine/rules/checker.py) builds this tree from the Python syntax tree; the scalar
compiler (engine/rules/scalar.py) and the vectorized evaluator (engine/rules/vectorized.py) read it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, get_args

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
LIST_TYPES: Final = frozenset({LIST_NUMBER, LIST_STRING, LIST_ANY})

# Numbers are finite floats: a value beyond +-MAXF (infinity, NaN) is a missing value.
MAXF: Final = sys.float_info.max


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


def walk(node: Node) -> Iterable[Node]:
    """Every node of a tree, the root included, in no particular order."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(children(current))


def children(node: Node) -> tuple[Node, ...]:
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
