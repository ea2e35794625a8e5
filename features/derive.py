"""Turn raw aggregates into features: the one piece of arithmetic both executors share.

`Deriver.transform` takes a matrix of raw aggregates (one row per payment, columns laid out by
`features.plan`) and the payment columns, and returns the feature matrix in `spec.feature_names`
order. The online executor calls it with one row, the offline executor with millions; features are
computed a kind at a time (all counts, all means, ...) so that one row costs a few numpy calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from features.payment import payment_matrix
from features.plan import Plan

NAN = float("nan")
MS_PER_DAY = 86_400_000.0
# The smallest spread used for a z-score, in currency units: a card that always pays the same
# amount would otherwise turn a one-cent change into an enormous z-score.
MIN_SPREAD = 1.0


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
            k = kinds.setdefault(kind, _Kind())
            k.out.append(out[feature])
            k.present.append(idx[f"{entity}:present"])
            k.a.append(idx[a])
            k.b.append(idx[b] if b is not None else idx[a])
            k.params.append(params)

        for v in spec.velocity:
            e = v.entity
            for w in v.windows:
                c, s, m = f"{e}:count:{w.label}", f"{e}:sum:{w.label}", f"{e}:max:{w.label}"
                for stat in v.stats:
                    kind, a, b = {
                        "count": ("count", c, None),
                        "sum": ("milli", s, None),
                        "mean": ("mean", s, c),
                        "max": ("max", m, c),
                    }[stat]
                    add(kind, f"{e}_{stat}_{w.label}", e, a, b)
        for d in spec.distinct:
            for w in d.windows:
                add(
                    "count",
                    f"{d.entity}_distinct_{d.name}_{w.label}",
                    d.entity,
                    f"{d.entity}:distinct:{d.field}:{w.label}",
                )
        for n in spec.novelty:
            add("flag", f"{n.entity}_{n.name}", n.entity, f"{n.entity}:novel:{n.field}")
        for f in spec.feedback:
            for w in f.windows:
                add(
                    "count",
                    f"{f.entity}_{f.event}s_{w.label}",
                    f.entity,
                    f"{f.entity}:feedback:{f.event}:{w.label}",
                )
        for r in spec.label_rate:
            e, label = r.entity, r.window.label
            add(
                "rate",
                f"{e}_fraud_rate_{label}",
                e,
                f"{e}:rate_frauds:{label}",
                f"{e}:rate_count:{label}",
                (r.prior, r.strength),
            )
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
                    idx[f"{e}:present"],
                    idx[f"{e}:count:{label}"],
                    idx[f"{e}:sum:{label}"],
                    idx[f"{e}:m2:{label}"],
                    idx[f"{e}:first_ts"],
                    idx[f"{e}:last_ts"],
                ],
            )
        self._payment_out = np.array([out[p] for p in spec.payment], dtype=np.intp)

    def transform(self, raw: np.ndarray, payment: Mapping[str, np.ndarray], t_ms: np.ndarray) -> np.ndarray:
        """Features for n payments: raw is (n, len(plan.raw_names)); payment holds n-long columns."""
        n = raw.shape[0]
        x = np.full((n, len(self.names)), NAN)
        with np.errstate(divide="ignore", invalid="ignore"):
            here = raw[:, self._present] == 1.0
            va, vb = raw[:, self._a], raw[:, self._b]
            value = va.copy()  # counts are the raw value itself
            for kind, cols in self._slices.items():
                a, b = va[:, cols], vb[:, cols]
                if kind == "flag":
                    value[:, cols] = np.where(a < 0, NAN, a)
                elif kind == "milli":
                    value[:, cols] = a / 1000.0
                elif kind == "mean":
                    value[:, cols] = np.where(b > 0, a / 1000.0 / b, NAN)
                elif kind == "max":
                    value[:, cols] = np.where(b > 0, a / 1000.0, NAN)
                elif kind == "rate":  # (frauds + prior * strength) / (payments + strength)
                    prior, strength = self._params[cols, 0], self._params[cols, 1]
                    value[:, cols] = (a + prior * strength) / (b + strength)
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
