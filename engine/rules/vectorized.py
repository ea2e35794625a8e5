"""The rule expression language evaluated over whole columns, for backtests of millions of rows.

Same semantics as :meth:`Expression.evaluate`, row by row (tests/test_rules_expression.py proves it
on random expressions and data): a row whose required name is missing is *skipped*, missing values
propagate through operators, and/or follow Kleene logic, non-finite numbers are missing.

Each sub-expression evaluates to ``(values, missing)``: ``values`` is an array of length n or a
scalar (a literal), ``missing`` a boolean array or None when nothing can be missing. Values at
missing positions are fillers (NaN, "" or False) that every operation accepts without error.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from antifraud.engine.rules.expression import Expression
from antifraud.engine.rules.nodes import (
    BOOL,
    LIST_NUMBER,
    NUMBER,
    STRING,
    Arith,
    Call,
    Compare,
    Const,
    FieldType,
    Logic,
    Member,
    Name,
    Node,
    Unary,
)

Column: TypeAlias = "np.ndarray[Any, Any] | pd.Series[Any] | list[Any]"
Mask: TypeAlias = "np.ndarray[Any, np.dtype[np.bool_]]"
_Value: TypeAlias = Any  # ndarray, or a Python / numpy scalar for literals
_Result: TypeAlias = "tuple[_Value, Mask | None]"


@dataclass(frozen=True)
class PreparedColumn:
    """A column converted for evaluation: float64 / object (str) / bool values and a missing mask."""

    values: np.ndarray[Any, Any]
    missing: Mask | None  # None: nothing missing


def prepare_columns(
    columns: Mapping[str, Column] | pd.DataFrame, name_types: Mapping[str, FieldType], n: int
) -> dict[str, PreparedColumn]:
    """Convert the columns named in ``name_types`` once, for any number of expressions.

    A name absent from ``columns`` is missing on every row, like a payment without that field.
    Numbers become float64 (integers above 2**53 lose precision, as they would in any float
    feature); None, NaN, pandas NA and +-inf are missing.
    """
    prepared: dict[str, PreparedColumn] = {}
    for name, kind in name_types.items():
        if name not in columns:
            prepared[name] = _absent(kind, n)
            continue
        series = _series(columns[name], name, n)
        if kind == NUMBER:
            prepared[name] = _numbers(series, name)
        elif kind == STRING:
            prepared[name] = _strings(series)
        else:
            prepared[name] = _bools(series)
    return prepared


def _series(column: Column, name: str, n: int) -> pd.Series[Any]:
    if isinstance(column, pd.Series):
        series = column.reset_index(drop=True)
    else:
        array = np.asarray(column)
        if array.ndim != 1:
            raise ValueError(f"column {name!r} must be one-dimensional")
        # dtype=object as given: no inference pass (it can fail on huge integers, and costs time)
        series = pd.Series(array, dtype=object if array.dtype == object else None, copy=False)
    if len(series) != n:
        raise ValueError(f"column {name!r} has {len(series)} rows, expected {n}")
    return series


def _absent(kind: str, n: int) -> PreparedColumn:
    filler: Any = {NUMBER: np.nan, STRING: "", BOOL: False}[kind]
    dtype: Any = {NUMBER: np.float64, STRING: object, BOOL: np.bool_}[kind]
    return PreparedColumn(np.full(n, filler, dtype=dtype), np.ones(n, dtype=bool))


def _numbers(series: pd.Series[Any], name: str) -> PreparedColumn:
    if series.dtype.kind in "fiub":
        values = series.to_numpy(dtype=np.float64, copy=True)
    else:
        try:
            values = pd.to_numeric(series).to_numpy(dtype=np.float64, na_value=np.nan)
        except OverflowError:  # an integer beyond float range: missing, as in the scalar evaluator
            values = np.fromiter((_float_or_nan(v) for v in series), dtype=np.float64, count=len(series))
        except (ValueError, TypeError) as e:
            raise TypeError(f"column {name!r} is declared number but holds non-numbers: {e}") from None
    finite = np.isfinite(values)
    if finite.all():
        return PreparedColumn(values, None)
    values[~finite] = np.nan
    return PreparedColumn(values, ~finite)


def _float_or_nan(value: Any) -> float:
    if value is None or value is pd.NA:
        return np.nan
    try:
        return float(value)
    except OverflowError:
        return np.nan


def _strings(series: pd.Series[Any]) -> PreparedColumn:
    missing = series.isna().to_numpy(dtype=bool)
    values = series.to_numpy(dtype=object, copy=True)
    if not missing.any():
        return PreparedColumn(values, None)
    values[missing] = ""
    return PreparedColumn(values, missing)


def _bools(series: pd.Series[Any]) -> PreparedColumn:
    missing = series.isna().to_numpy(dtype=bool)
    if series.dtype == np.bool_:
        return PreparedColumn(series.to_numpy(dtype=bool, copy=True), None)
    if series.dtype.kind in "fiu":
        values = np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan) != 0) & ~missing
    else:  # object, pandas "boolean": truthiness of each present value, as the scalar evaluator
        raw = series.to_numpy(dtype=object)
        values = np.fromiter((not m and bool(v) for v, m in zip(raw, missing, strict=True)), bool, len(raw))
    return PreparedColumn(values, missing if missing.any() else None)


def evaluate_frame(
    expr: Expression, columns: Mapping[str, Column] | pd.DataFrame, n: int
) -> tuple[Mask, Mask]:
    """(fired, skipped) of a condition over n rows; a skipped row never fires."""
    return evaluate_prepared(expr, prepare_columns(columns, expr.name_types, n), n)


def evaluate_prepared(expr: Expression, prepared: Mapping[str, PreparedColumn], n: int) -> tuple[Mask, Mask]:
    """Like :func:`evaluate_frame`, on columns from :func:`prepare_columns` (shared by many rules)."""
    if expr.type != BOOL:
        raise TypeError(f"not a condition: {expr.text!r} is a {expr.type}")
    values, missing = _Evaluator(prepared, expr.required_names).visit(expr.root)
    skipped = _or(missing, *(prepared[name].missing for name in expr.required_names))
    fired = np.broadcast_to(np.asarray(values, dtype=bool), (n,))
    if skipped is None:
        return fired.copy(), np.zeros(n, dtype=bool)
    skipped = np.broadcast_to(skipped, (n,))
    return fired & ~skipped, skipped.copy()


def evaluate_values(
    expr: Expression, columns: Mapping[str, Column] | pd.DataFrame, n: int
) -> tuple[np.ndarray[Any, Any], Mask]:
    """(values, skipped) of an expression of any type over n rows; values at skipped rows are fillers."""
    prepared = prepare_columns(columns, expr.name_types, n)
    values, missing = _Evaluator(prepared, expr.required_names).visit(expr.root)
    skipped = _or(missing, *(prepared[name].missing for name in expr.required_names))
    dtype: Any = {NUMBER: np.float64, STRING: object, BOOL: np.bool_}[expr.type]
    if np.ndim(values):
        out = np.asarray(values).astype(dtype, copy=True)
    else:  # a constant (possibly a 0-d array): the same value on every row
        out = np.full(n, np.asarray(values).item() if isinstance(values, np.ndarray) else values, dtype=dtype)
    mask = np.zeros(n, dtype=bool) if skipped is None else np.broadcast_to(skipped, (n,)).copy()
    return out, mask


def _or(*masks: Any) -> Any:
    """OR of masks, ignoring None; None when all are None."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    return functools.reduce(np.logical_or, present)


_NP_ARITH: Mapping[str, Any] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.true_divide,
    "%": np.remainder,  # same sign convention and algorithm as Python's float %
}
_NP_CMP: Mapping[str, Any] = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}
_str_lower = np.frompyfunc(str.lower, 1, 1)
_str_upper = np.frompyfunc(str.upper, 1, 1)
_str_startswith = np.frompyfunc(str.startswith, 2, 1)
_str_endswith = np.frompyfunc(str.endswith, 2, 1)


class _Evaluator:
    def __init__(self, prepared: Mapping[str, PreparedColumn], required: frozenset[str]) -> None:
        self.prepared = prepared
        # Rows where a required name is missing are skipped as a whole, so inside the tree those
        # names count as present: fewer masks to combine.
        self.required = required

    def visit(self, node: Node) -> _Result:
        if isinstance(node, Const):
            return node.value, None
        if isinstance(node, Name):
            column = self.prepared[node.name]
            return column.values, (None if node.name in self.required else column.missing)
        if isinstance(node, Unary):
            values, missing = self.visit(node.operand)
            if node.op == "not":
                return np.logical_not(values), missing
            return np.negative(values), missing
        if isinstance(node, Logic):
            return self.logic(node)
        if isinstance(node, Arith):
            (a, ma), (b, mb) = self.visit(node.left), self.visit(node.right)
            with np.errstate(all="ignore"):
                result = _NP_ARITH[node.op](a, b)
                bad = ~np.isfinite(result)  # overflow, division by zero: missing, as in scalar
            return np.where(bad, np.nan, result), _or(ma, mb, bad)
        if isinstance(node, Compare):
            (a, ma), (b, mb) = self.visit(node.left), self.visit(node.right)
            return np.asarray(_NP_CMP[node.op](a, b), dtype=bool), _or(ma, mb)
        if isinstance(node, Member):
            return self.member(node)
        if isinstance(node, Call):
            return self.call(node)
        raise TypeError(f"cannot evaluate {node!r}")

    def logic(self, node: Logic) -> _Result:
        # Kleene logic: a known false operand decides "and", a known true one decides "or";
        # otherwise any missing operand makes the result missing.
        results = [self.visit(o) for o in node.operands]
        deciding = node.op == "or"  # the operand value that decides the result
        decided: Any = False
        unknown: Any = None
        for values, missing in results:
            hit = np.asarray(values, dtype=bool) == deciding
            if missing is not None:
                hit = hit & ~missing
                unknown = missing if unknown is None else (unknown | missing)
            decided = decided | hit
        value = decided if deciding else np.logical_not(decided)
        if unknown is None:
            return value, None
        return value, unknown & ~decided

    def member(self, node: Member) -> _Result:
        values, missing = self.visit(node.left)
        items = node.list.values
        if not items:
            found: Any = np.zeros(np.shape(values), dtype=bool) if np.ndim(values) else False
        elif not isinstance(values, np.ndarray):
            found = (float(values) if node.list.type == LIST_NUMBER else values) in items
        elif node.list.type == LIST_NUMBER:
            found = np.isin(values, np.fromiter(items, dtype=np.float64, count=len(items)))
        else:
            found = pd.Series(values, copy=False).isin(list(items)).to_numpy(dtype=bool)
        return (np.logical_not(found) if node.negate else found), missing

    def call(self, node: Call) -> _Result:
        name = node.function
        if name == "round":
            x, missing = self.visit(node.args[0])
            digits = int(node.args[1].value) if len(node.args) == 2 else 0  # type: ignore[attr-defined]
            with np.errstate(all="ignore"):
                result = np.round(x, digits)
                bad = ~np.isfinite(result)
            return np.where(bad, np.nan, result), _or(missing, bad)
        results = [self.visit(a) for a in node.args]
        if name == "is_missing":
            missing = results[0][1]
            return (False if missing is None else missing.copy()), None
        if name == "coalesce":
            values, missing = results[-1]
            for v, m in reversed(results[:-1]):
                if m is None:
                    values, missing = v, None
                else:
                    if node.type == STRING:  # keep strings as Python objects, never numpy '<U'
                        values, v = np.asarray(values, dtype=object), np.asarray(v, dtype=object)
                    values = np.where(m, values, v)
                    missing = None if missing is None else (m & missing)
            return values, missing
        missing = _or(*(m for _, m in results))
        args = [v for v, _ in results]
        if name == "abs":
            return np.abs(args[0]), missing
        if name in ("min", "max"):
            combine = np.minimum if name == "min" else np.maximum
            return functools.reduce(combine, args), missing
        if name == "lower":
            return _str_lower(args[0]), missing
        if name == "upper":
            return _str_upper(args[0]), missing
        if name in ("startswith", "endswith"):
            func = _str_startswith if name == "startswith" else _str_endswith
            return np.asarray(func(args[0], args[1]), dtype=bool), missing
        raise TypeError(f"unknown function {name!r}")
