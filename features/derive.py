"""Turn raw aggregates into features: the one piece of arithmetic both executors share.

`Deriver.transform` takes a matrix of raw aggregates (one row per payment, columns laid out by
`antifraud.features.plan`) and the payment columns, and returns the feature matrix in `spec.feature_names`
order. The offline executor calls it with millions of rows: features are computed a kind at a time
(all counts, all means, ...) so that the cost is a few numpy calls per kind. `Deriver.transform_one`
computes the same values for one payment in plain Python (numpy's per-call overhead would dominate
on the scoring hot path); both read the same per-kind tables, and each kind declares its vectorised
and its scalar formula side by side in `_KINDS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from antifraud.features.payment import amount_one, payment_feature_one, payment_matrix
from antifraud.features.plan import Plan, raw_name, velocity_names

NAN = float("nan")
INF = float("inf")
MS_PER_DAY = 86_400_000.0
# The smallest spread used for a z-score, in currency units: a card that always pays the same
# amount would otherwise turn a one-cent change into an enormous z-score.
MIN_SPREAD = 1.0

# One stateful feature for the scalar path: (out index, present index, a index, b index, p0, p1).
_Row = tuple[int, int, int, int, float, float]


def _ieee_div(x: float, y: float) -> float:
    """x / y as numpy computes it: a zero divisor gives +-inf or NaN instead of raising."""
    if y == 0.0:
        if x == 0.0 or x != x:
            return NAN
        return math.copysign(INF, x) * math.copysign(1.0, y)
    return x / y


# Each kind: a vectorised formula over columns (a, b, params; the caller masks absent entities
# and silences numpy's divide warnings) and a scalar loop over that kind's rows of one payment
# (`r` the raw row, `x` the output, both lists). Keep the two of a kind in step: tests/test_derive_one.py
# compares them on random and on real rows.
def _count_one(r: list[float], x: list[float], rows: list[_Row]) -> None:
    for o, p, a, _b, _p0, _p1 in rows:
        if r[p] == 1.0:
            x[o] = r[a]


def _flag_one(r: list[float], x: list[float], rows: list[_Row]) -> None:
    for o, p, a, _b, _p0, _p1 in rows:
        if r[p] == 1.0:
            v = r[a]
            x[o] = NAN if v < 0 else v  # negative: the field was missing


def _milli_one(r: list[float], x: list[float], rows: list[_Row]) -> None:
    for o, p, a, _b, _p0, _p1 in rows:
        if r[p] == 1.0:
            x[o] = r[a] / 1000.0


def _mean_one(r: list[float], x: list[float], rows: list[_Row]) -> None:
    for o, p, a, b, _p0, _p1 in rows:
        if r[p] == 1.0 and r[b] > 0:
            x[o] = r[a] / 1000.0 / r[b]


def _max_one(r: list[float], x: list[float], rows: list[_Row]) -> None:
    for o, p, a, b, _p0, _p1 in rows:
        if r[p] == 1.0 and r[b] > 0:
            x[o] = r[a] / 1000.0


def _rate_one(r: list[float], x: list[float], rows: list[_Row]) -> None:
    for o, p, a, b, prior, strength in rows:
        if r[p] == 1.0:
            x[o] = _ieee_div(r[a] + prior * strength, r[b] + strength)


def _ratio_one(r: list[float], x: list[float], rows: list[_Row]) -> None:
    for o, p, a, b, scale, _p1 in rows:
        if r[p] == 1.0 and r[b] > 0:
            x[o] = r[a] * scale / r[b]


class _Formula(NamedTuple):
    vector: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    scalar: Callable[[list[float], list[float], list[_Row]], None]


_KINDS: dict[str, _Formula] = {
    "count": _Formula(lambda a, b, params: a, _count_one),  # counts are the raw value itself
    "flag": _Formula(lambda a, b, params: np.where(a < 0, NAN, a), _flag_one),
    "milli": _Formula(lambda a, b, params: a / 1000.0, _milli_one),
    "mean": _Formula(lambda a, b, params: np.where(b > 0, a / 1000.0 / b, NAN), _mean_one),
    "max": _Formula(lambda a, b, params: np.where(b > 0, a / 1000.0, NAN), _max_one),
    # (frauds + prior * strength) / (payments + strength)
    "rate": _Formula(lambda a, b, params: (a + params[:, 0] * params[:, 1]) / (b + params[:, 1]), _rate_one),
    # a x scale / b: a count's rate against a longer window's (scale = long / short window)
    "ratio": _Formula(lambda a, b, params: np.where(b > 0, a * params[:, 0] / b, NAN), _ratio_one),
}


@dataclass
class _Kind:
    """Output columns of one kind and the raw columns each reads."""

    out: list[int] = dataclasses.field(default_factory=list)
    present: list[int] = dataclasses.field(default_factory=list)
    a: list[int] = dataclasses.field(default_factory=list)
    b: list[int] = dataclasses.field(default_factory=list)
    params: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.array(self.out, dtype=np.intp),
            np.array(self.present, dtype=np.intp),
            np.array(self.a, dtype=np.intp),
            np.array(self.b, dtype=np.intp),
        )

    def rows(self) -> list[_Row]:
        """The same columns, one tuple per feature, for the scalar path."""
        return [
            (o, p, a, b, p0, p1)
            for o, p, a, b, (p0, p1) in zip(self.out, self.present, self.a, self.b, self.params, strict=True)
        ]


class Deriver:
    """Computes the spec's features from raw aggregates; built once per plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        spec = plan.spec
        self.names = spec.feature_names
        out = {name: i for i, name in enumerate(self.names)}
        idx = plan.raw_index
        kinds: dict[str, _Kind] = {}

        def add(
            kind: str,
            feature: str,
            entity: str,
            a: str,
            b: str | None = None,
            params: tuple[float, float] = (0.0, 0.0),
        ) -> None:
            assert kind in _KINDS, kind
            k = kinds.setdefault(kind, _Kind())
            k.out.append(out[feature])
            k.present.append(idx[raw_name(entity, "present")])
            k.a.append(idx[a])
            k.b.append(idx[b] if b is not None else idx[a])
            k.params.append(params)

        for v in spec.velocity:
            e = v.entity
            for w in v.windows:
                c, s, m = velocity_names(e, w.label)
                for stat in v.stats:
                    kind, a, b = {
                        "count": ("count", c, None),
                        "sum": ("milli", s, None),
                        "mean": ("mean", s, c),
                        "max": ("max", m, c),
                    }[stat]
                    add(kind, f"{e}_{stat}_{w.label}", e, a, b)
        # features that are a raw count as it is: (feature, entity, raw aggregate)
        counts = [
            (
                f"{d.entity}_distinct_{d.name}_{w.label}",
                d.entity,
                raw_name(d.entity, "distinct", d.field, w.label),
            )
            for d in spec.distinct
            for w in d.windows
        ] + [
            (f"{f.entity}_{f.event}s_{w.label}", f.entity, raw_name(f.entity, "feedback", f.event, w.label))
            for f in spec.feedback
            for w in f.windows
        ]
        for feature, entity, raw in counts:
            add("count", feature, entity, raw)
        for n in spec.novelty:
            add("flag", f"{n.entity}_{n.name}", n.entity, raw_name(n.entity, "novel", n.field))
        for r in spec.label_rate:
            e = r.entity
            for w in r.windows:
                frauds, payments = raw_name(e, "rate_frauds", w.label), raw_name(e, "rate_count", w.label)
                add("count", f"{e}_known_frauds_{w.label}", e, frauds)
                add("rate", f"{e}_fraud_rate_{w.label}", e, frauds, payments, (r.prior, r.strength))
        if spec.card_behaviour is not None:
            habit = spec.card_behaviour
            e, label = habit.entity, habit.window.label
            for w in habit.frequency:
                count, longer = raw_name(e, "count", w.label), raw_name(e, "count", label)
                scale = (habit.window.ms / w.ms, 0.0)
                add("ratio", f"{e}_frequency_{w.label}_to_{label}", e, count, longer, scale)
        # One gather for all stateful features, then a slice per kind: a few numpy calls per row.
        arrays = [k.arrays() for k in kinds.values()]
        self._out, self._present, self._a, self._b = (
            np.concatenate(parts) for parts in zip(*arrays, strict=True)
        )
        self._params = np.concatenate(
            [np.array(k.params, dtype=float).reshape(-1, 2) for k in kinds.values()]
        )
        self._slices: dict[str, slice] = {}
        start = 0
        for name, k in kinds.items():
            self._slices[name] = slice(start, start + len(k.out))
            start += len(k.out)
        # the scalar path: the same tables as plain lists, with each kind's scalar loop
        self._rows = [(_KINDS[name].scalar, k.rows()) for name, k in kinds.items()]
        self._blank = [NAN] * len(self.names)
        self._behaviour: tuple[list[int], list[int]] | None = None
        if spec.card_behaviour is not None:
            behaviour = spec.card_behaviour
            e, label = behaviour.entity, behaviour.window.label
            self._behaviour = (
                [
                    out[f"{e}_amount_to_mean_{label}"],
                    out[f"{e}_amount_zscore_{label}"],
                    out[f"{e}_seconds_since_prev"],
                    out[f"{e}_age_days"],
                ],
                [
                    idx[raw_name(e, "present")],
                    idx[raw_name(e, "count", label)],
                    idx[raw_name(e, "sum", label)],
                    idx[raw_name(e, "m2", label)],
                    idx[raw_name(e, "first_ts")],
                    idx[raw_name(e, "last_ts")],
                ],
            )
        self._payment_out = np.array([out[p] for p in spec.payment], dtype=np.intp)
        self._payment_one = [(out[p], payment_feature_one(p)) for p in spec.payment]

    def transform(self, raw: np.ndarray, payment: Mapping[str, np.ndarray], t_ms: np.ndarray) -> np.ndarray:
        """Features for n payments: raw is (n, len(plan.raw_names)); payment holds n-long columns."""
        n = raw.shape[0]
        x = np.full((n, len(self.names)), NAN)
        with np.errstate(divide="ignore", invalid="ignore"):
            here = raw[:, self._present] == 1.0
            va, vb = raw[:, self._a], raw[:, self._b]
            value = np.empty_like(va)
            for kind, cols in self._slices.items():
                value[:, cols] = _KINDS[kind].vector(va[:, cols], vb[:, cols], self._params[cols])
            x[:, self._out] = np.where(here, value, NAN)
            if self._behaviour is not None:
                self._card_behaviour(x, raw, payment, t_ms)
        x[:, self._payment_out] = payment_matrix(self.plan.spec.payment, payment, t_ms)
        return x

    def _card_behaviour(
        self, x: np.ndarray, raw: np.ndarray, payment: Mapping[str, np.ndarray], t_ms: np.ndarray
    ) -> None:
        assert self._behaviour is not None
        (o_ratio, o_z, o_since, o_age), (p, c, s, m2, first, last) = self._behaviour
        here = raw[:, p] == 1.0
        count, mean = raw[:, c], raw[:, s] / 1000.0 / raw[:, c]
        amount = np.asarray(payment["amount"], dtype=float)
        spread = np.maximum(np.sqrt(raw[:, m2] / count) / 1000.0, MIN_SPREAD)
        x[:, o_ratio] = np.where(here & (count > 0) & (mean > 0), amount / mean, NAN)
        x[:, o_z] = np.where(here & (count >= 2), (amount - mean) / spread, NAN)
        x[:, o_since] = np.where(here & (raw[:, last] >= 0), (t_ms - raw[:, last]) / 1000.0, NAN)
        x[:, o_age] = np.where(
            here, np.where(raw[:, first] >= 0, (t_ms - raw[:, first]) / MS_PER_DAY, 0.0), NAN
        )

    def transform_one(
        self, raw: Sequence[float] | np.ndarray, payment: Mapping[str, Any], t_ms: int
    ) -> np.ndarray:
        """Features of one payment, equal to `transform` on a one-row matrix, in plain Python.

        `raw` is one row of raw aggregates (len(plan.raw_names)), `payment` a mapping of canonical
        fields (a missing field reads as None), `t_ms` the payment time in integer milliseconds.
        Returns a float64 array in `spec.feature_names` order, NaN where missing.
        """
        # one conversion to Python floats: float64 semantics, and no numpy scalar per element
        r: list[float] = np.asarray(raw, dtype=float).tolist()
        t = int(t_ms)
        x = self._blank.copy()
        for loop, rows in self._rows:
            loop(r, x, rows)
        if self._behaviour is not None:
            self._card_behaviour_one(x, r, amount_one(payment), t)
        for o, feature in self._payment_one:
            x[o] = feature(payment, t)
        return np.array(x, dtype=float)

    def _card_behaviour_one(self, x: list[float], r: list[float], amount: float, t: int) -> None:
        """`_card_behaviour` for one payment; each value is computed only where numpy's mask keeps it,
        so nothing divides by zero or takes the root of a negative number."""
        assert self._behaviour is not None
        (o_ratio, o_z, o_since, o_age), (p, c, s, m2, first, last) = self._behaviour
        if r[p] != 1.0:
            return  # the entity is missing: all four stay NaN
        count = r[c]
        if count > 0:
            mean = r[s] / 1000.0 / count
            if mean > 0:
                x[o_ratio] = amount / mean
            if count >= 2:
                q = r[m2] / count
                # np.sqrt gives NaN below zero where math.sqrt raises; np.maximum keeps a NaN
                sd = (math.sqrt(q) if q >= 0.0 or q != q else NAN) / 1000.0
                spread = sd if sd > MIN_SPREAD or sd != sd else MIN_SPREAD
                x[o_z] = (amount - mean) / spread
        if r[last] >= 0:
            x[o_since] = (t - r[last]) / 1000.0
        x[o_age] = (t - r[first]) / MS_PER_DAY if r[first] >= 0 else 0.0
