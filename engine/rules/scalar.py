"""Scalar evaluation, the service's hot path: the typed tree -> nested closures over one payment.

Same semantics as the vectorized evaluator (engine/rules/vectorized.py), which the property tests
in tests/test_rules_expression.py check on random expressions and data.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import pandas as pd

from antifraud.engine.rules.nodes import (
    MAXF,
    NUMBER,
    Arith,
    Call,
    Compare,
    Const,
    Logic,
    Member,
    Name,
    Node,
    Unary,
)

#: what an expression reads: names (payment fields and features) -> values
Env: TypeAlias = Mapping[str, Any]
_Fn: TypeAlias = Callable[[Env], Any]
NA: Final = pd.NA


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
        if not -MAXF <= y <= MAXF:
            return None
        r = round(y) / p
    else:
        r = round(x / p) * p
    return r if -MAXF <= r <= MAXF else None


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
        if v is None or v is NA or not -MAXF <= v <= MAXF:
            if missing is None:
                missing = set()
            missing.add(name)
    for name in others:
        v = get(name)
        if v is None or v is NA or v != v:
            if missing is None:
                missing = set()
            missing.add(name)
    return missing


# --------------------------------------------------------------------------------------------
# The typed tree -> nested closures
#
# Missing values are None inside. A required name is checked once before evaluation, so reading it
# can never give None; each builder also returns whether its result may be None ("may_miss"), and
# only those paths pay for None checks. That keeps the common rule (names, literals, comparisons,
# and/or) free of any missing-value test in the hot path.


def _add(a: float, b: float) -> float | None:
    r = a + b
    return r if -MAXF <= r <= MAXF else None


def _sub(a: float, b: float) -> float | None:
    r = a - b
    return r if -MAXF <= r <= MAXF else None


def _mul(a: float, b: float) -> float | None:
    r = a * b
    return r if -MAXF <= r <= MAXF else None


def _div(a: float, b: float) -> float | None:
    if not b:
        return None
    r = a / b
    return r if -MAXF <= r <= MAXF else None


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


class ScalarCompiler:
    """Builds the closure of a checked tree; ``tolerant`` names are read only in is_missing/coalesce."""

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
            if v is None or v is NA:
                return None
            if number:
                return float(v) if -MAXF <= v <= MAXF else None
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
