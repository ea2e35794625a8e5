"""Compile the feature spec into per-entity plans and the layout of raw aggregates.

Both executors produce the same *raw aggregates* (counts, sums in milli-units, maxima, distinct
counts, first/last times) in the column order fixed here; `antifraud.features.derive` then turns them into
features with one shared piece of code. Parity therefore only has to hold on the aggregates, and
they are integers wherever possible so that it holds exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from antifraud.engine.vocabulary import FeatureEvent
from antifraud.features.spec import FeatureSpec, Window

# The grammar of raw aggregate names, said once: `<entity>:<kind>[:<part>...]`, e.g. `card:count:1h`,
# `card:distinct:device_id:24h`, `card:feedback:fraud:30d`. Both executors and the deriver name
# columns through these functions, so a name the plan lays out is the name they read and write.
RawKind = Literal[
    "present",
    "count",
    "sum",
    "max",
    "m2",
    "rate_count",
    "rate_frauds",
    "novel",
    "distinct",
    "feedback",
    "first_ts",
    "last_ts",
]


def raw_name(entity: str, kind: RawKind, *parts: str) -> str:
    """The name of one raw aggregate of an entity: its kind, then what it is about (field, event,
    window label), e.g. ``raw_name("card", "distinct", "device_id", "24h")``."""
    return ":".join((entity, kind, *parts))


def velocity_names(entity: str, label: str) -> list[str]:
    """The count, sum and max of a velocity window, in the order the executors yield them."""
    return [raw_name(entity, "count", label), raw_name(entity, "sum", label), raw_name(entity, "max", label)]


@dataclass
class BucketGroup:
    """Bucketed windows of one granularity on one entity."""

    granularity_ms: int
    windows: list[Window] = dataclasses.field(default_factory=list)
    # label-rate windows: also sum the frauds known among the bucket's payments
    fraud_windows: list[Window] = dataclasses.field(default_factory=list)

    @property
    def max_buckets(self) -> int:
        return max((w.ms + w.lag_ms) // self.granularity_ms for w in (*self.windows, *self.fraud_windows))


@dataclass
class DistinctField:
    """Distinct-value windows and novelty look-back of one field on one entity."""

    field: str
    windows: list[Window] = dataclasses.field(default_factory=list)
    lookback_ms: int = 0

    @property
    def retention_ms(self) -> int:
        return max([self.lookback_ms, *(w.ms for w in self.windows)])


@dataclass
class EntityPlan:
    """Everything one entity's Redis shard reads and records for a payment."""

    entity: str
    exact: list[Window] = dataclasses.field(default_factory=list)
    spread_window: Window | None = None  # the window whose amount spread (M2) is needed
    # the exact windows keep the entity's last `head` payments one by one, older ones in the tail
    # buckets of each window (granularity `Window.tail_ms`): see `exact_start` in features/offline.py
    head: int = 0
    # kept within another entity's state (the spec's `within`): its exact windows are read from that
    # entity's head (docs/feature-state.md, section 2.5); `folded` lists the entities kept in this one
    within: str | None = None
    folded: list[EntityPlan] = dataclasses.field(default_factory=list)
    buckets: dict[int, BucketGroup] = dataclasses.field(default_factory=dict)
    distinct: dict[str, DistinctField] = dataclasses.field(default_factory=dict)
    feedback: dict[FeatureEvent, list[Window]] = dataclasses.field(default_factory=dict)
    fraud_bucket_ms: int | None = None  # granularity whose buckets count known frauds, if any
    profile_ttl_ms: int | None = None

    def raw_names(self) -> list[str]:
        """Names of the raw aggregates this entity yields, in output order."""
        e = self.entity
        names = [raw_name(e, "present")]
        for w in self.exact:
            names += velocity_names(e, w.label)
        if self.spread_window is not None:
            names.append(raw_name(e, "m2", self.spread_window.label))
        for group in self.buckets.values():
            for w in group.windows:
                names += velocity_names(e, w.label)
            for w in group.fraud_windows:
                names += [raw_name(e, "rate_count", w.label), raw_name(e, "rate_frauds", w.label)]
        for d in self.distinct.values():
            names.append(raw_name(e, "novel", d.field))
            names += [raw_name(e, "distinct", d.field, w.label) for w in d.windows]
        for event, windows in self.feedback.items():
            names += [raw_name(e, "feedback", event, w.label) for w in windows]
        if self.profile_ttl_ms is not None:
            names += [raw_name(e, "first_ts"), raw_name(e, "last_ts")]
        return names


@dataclass
class Plan:
    """The compiled spec: entity plans in a fixed order and the raw aggregate layout."""

    spec: FeatureSpec
    entities: list[EntityPlan]
    raw_names: list[str]
    raw_index: dict[str, int]


def compile_plan(spec: FeatureSpec) -> Plan:
    """Turn a FeatureSpec into what the executors run."""
    plans = {name: EntityPlan(name) for name in spec.used_entities()}
    for v in spec.velocity:
        p = plans[v.entity]
        for w in v.windows:
            if w.granularity_ms is None:
                p.exact.append(w)
            else:
                p.buckets.setdefault(w.granularity_ms, BucketGroup(w.granularity_ms)).windows.append(w)
    if spec.card_behaviour is not None:
        b = spec.card_behaviour
        p = plans[b.entity]
        if b.window not in p.exact:
            p.exact.append(b.window)
        p.spread_window = b.window
        p.profile_ttl_ms = b.profile_ttl_ms
    for d in spec.distinct:
        plans[d.entity].distinct.setdefault(d.field, DistinctField(d.field)).windows.extend(d.windows)
    for n in spec.novelty:
        df = plans[n.entity].distinct.setdefault(n.field, DistinctField(n.field))
        df.lookback_ms = max(df.lookback_ms, n.lookback_ms)
    for f in spec.feedback:
        plans[f.entity].feedback.setdefault(f.event, []).extend(f.windows)
    for r in spec.label_rate:
        p = plans[r.entity]
        for w in r.windows:
            g = w.granularity_ms
            assert g is not None
            if p.fraud_bucket_ms not in (None, g):
                raise ValueError(f"label_rate on {r.entity}: every window must share one granularity")
            p.buckets.setdefault(g, BucketGroup(g)).fraud_windows.append(w)
            p.fraud_bucket_ms = g
        # fraud labels must be deduplicated per transaction like any other feedback event
        p.feedback.setdefault("fraud", [])
    for p in plans.values():
        p.exact.sort(key=lambda w: w.ms)
        if p.exact:
            p.head = spec.head(p.entity)
            untiled = [w.label for w in p.exact if w.tail_ms is None]
            if untiled:
                raise ValueError(f"{p.entity}: exact windows {untiled} have no tail granularity")
    for name, outer in spec.within.items():
        if name in plans:
            plans[name].within = outer
            plans[outer].folded.append(plans[name])
    ordered = list(plans.values())
    raw_names = [name for p in ordered for name in p.raw_names()]
    return Plan(spec, ordered, raw_names, {n: i for i, n in enumerate(raw_names)})


def feedback_retention_ms(plan: EntityPlan, event: FeatureEvent) -> int:
    """How long an entity keeps feedback events of one kind."""
    windows = plan.feedback.get(event, [])
    longest = max([w.ms for w in windows], default=0)
    if event == "fraud" and plan.fraud_bucket_ms is not None:
        longest = max([longest, *(w.ms + w.lag_ms for g in plan.buckets.values() for w in g.fraud_windows)])
    return max(longest, 1)
