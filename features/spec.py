"""Load the declarative feature spec (features/spec.yaml) into typed definitions.

The spec says *what* each feature means; `antifraud.features.online` and `antifraud.features.offline`
decide *how*
to compute it from Redis or from a history file. Both read the `FeatureSpec` built here, so a
feature exists in training exactly when it exists in serving.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from antifraud.engine.vocabulary import FEATURE_EVENTS, FeatureEvent
from antifraud.features.spec_shape import (
    ListOf,
    ListOrRecord,
    MapOf,
    Record,
    Scalar,
    SpecError,
    check_shape,
    key_line,
)

__all__ = ["FeatureSpec", "SpecError", "Window", "load_spec", "parse_duration"]

DEFAULT_SPEC_PATH = Path(__file__).with_name("spec.yaml")

Stat = Literal["count", "sum", "mean", "max"]
STATS: tuple[Stat, ...] = ("count", "sum", "mean", "max")
PAYMENT_FEATURES: tuple[str, ...] = (
    "amount",
    "hour_of_day",
    "day_of_week",
    "channel",
    "mcc",
    "card_on_file",
    "authenticated",
    "ip_card_country_mismatch",
    "billing_shipping_mismatch",
    "ip_billing_country_mismatch",
)

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")


def parse_duration(text: str) -> int:
    """Parse '10m', '24h', '30d' into milliseconds."""
    match = _DURATION.match(str(text).strip())
    if not match or int(match.group(1)) == 0:
        raise SpecError(f"bad duration {text!r}: use a positive number and one of ms, s, m, h, d (e.g. 24h)")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


SPEC_VERSION = 1
DEFAULT_HEAD = 64  # limits.head when the spec leaves it out (docs/feature-state.md, section 2.1)
DEFAULT_DEDUPE = 64  # limits.dedupe when the spec leaves it out (docs/feature-state.md, section 2.4)
DEFAULT_DISTINCT = 64  # limits.distinct (section 2.2)
DEFAULT_FEEDBACK = 64  # limits.feedback (section 2.3)
_TEXT, _NUMBER = Scalar("str"), Scalar("number")
_DURATION_TEXT = Scalar("str", parse_duration)
_NAMES, _WINDOWS = ListOf(_TEXT), ListOf(_DURATION_TEXT)
_ENTRY = {"entity": _TEXT}
_SMOOTHING = {"prior": _NUMBER, "strength": _NUMBER}


def _positive(text: str) -> int:
    if int(text) <= 0:
        raise SpecError(f"{text} is not a positive whole number")
    return int(text)


_CAP = Scalar("int", _positive)
SPEC_SHAPE = Record(
    required={
        "version": Scalar("int"),
        # an entity's key fields, or {fields: [...], within: <entity>} for one kept inside another's state
        "entities": MapOf(ListOrRecord(_NAMES, Record({"fields": _NAMES}, {"within": _TEXT}))),
    },
    optional={
        "dedupe_horizon": _DURATION_TEXT,
        "limits": Record(
            {},
            {"head": _CAP, "tail": MapOf(_DURATION_TEXT), "distinct": _CAP, "feedback": _CAP, "dedupe": _CAP},
        ),
        "velocity": ListOf(
            Record(
                {**_ENTRY, "windows": _WINDOWS, "stats": _NAMES},
                {"granularity": MapOf(_DURATION_TEXT), "tail": MapOf(_DURATION_TEXT), "head": _CAP},
            )
        ),
        "distinct": ListOf(Record({**_ENTRY, "field": _TEXT, "name": _TEXT, "windows": _WINDOWS})),
        "novelty": ListOf(Record({**_ENTRY, "field": _TEXT, "name": _TEXT, "lookback": _DURATION_TEXT})),
        "feedback": ListOf(Record({**_ENTRY, "event": _TEXT, "windows": _WINDOWS})),
        "label_rate": ListOf(
            Record(
                {**_ENTRY, "windows": _WINDOWS, "granularity": _DURATION_TEXT, **_SMOOTHING},
                {"lagged": MapOf(_WINDOWS)},
            )
        ),
        "card_behaviour": Record(
            {**_ENTRY, "window": _DURATION_TEXT, "profile_ttl": _DURATION_TEXT},
            {"frequency": _WINDOWS, "tail": _DURATION_TEXT},
        ),
        "payment": _NAMES,
    },
)


@dataclass(frozen=True)
class Window:
    """A look-back window; bucketed when `granularity_ms` is set, and then possibly lagged: a window
    with `lag_ms` ends that long before the current bucket (known-fraud windows only). An exact
    velocity window has a `tail_ms`: the granularity its payments older than the entity's head are
    kept at once the head overflows (docs/features.md, "Exact head, tiled tail")."""

    label: str
    ms: int
    granularity_ms: int | None = None
    lag_ms: int = 0
    tail_ms: int | None = None


@dataclass(frozen=True)
class Velocity:
    entity: str
    windows: tuple[Window, ...]
    stats: tuple[Stat, ...]
    head: int | None = None  # the entity's head cap, when it overrides `limits.head`


@dataclass(frozen=True)
class Distinct:
    entity: str
    field: str
    name: str
    windows: tuple[Window, ...]


@dataclass(frozen=True)
class Novelty:
    entity: str
    field: str
    name: str
    lookback_ms: int


@dataclass(frozen=True)
class Feedback:
    entity: str
    event: FeatureEvent
    windows: tuple[Window, ...]


@dataclass(frozen=True)
class LabelRate:
    """Known-fraud risk of an entity: its payments in each bucketed window (by payment time) and how
    many of them were labelled fraud before the scored payment."""

    entity: str
    windows: tuple[Window, ...]
    prior: float
    strength: float


@dataclass(frozen=True)
class CardBehaviour:
    """The card's habit: this amount against its `window`, its profile, and how fast it pays now
    (each `frequency` window's payment rate against the rate over `window`)."""

    entity: str
    window: Window
    profile_ttl_ms: int
    frequency: tuple[Window, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    """The whole spec: entities, stateful feature groups and payment features, in a fixed order."""

    entities: dict[str, tuple[str, ...]]
    dedupe_horizon_ms: int
    velocity: tuple[Velocity, ...]
    distinct: tuple[Distinct, ...]
    novelty: tuple[Novelty, ...]
    feedback: tuple[Feedback, ...]
    label_rate: tuple[LabelRate, ...]
    card_behaviour: CardBehaviour | None
    payment: tuple[str, ...]
    # the exact head: an entity's last `head` payments are kept one by one (`limits.head`, or its
    # velocity entry's `head`); older ones only in the windows' tail buckets
    head_limit: int = DEFAULT_HEAD
    # how many transaction ids an entity keeps within the dedupe horizon, per feedback kind too
    dedupe_limit: int = DEFAULT_DEDUPE
    # distinct counts saturate at `distinct_limit` values, feedback counts at `feedback_limit` events
    distinct_limit: int = DEFAULT_DISTINCT
    feedback_limit: int = DEFAULT_FEEDBACK
    # entity -> the entity whose state keeps it (`within`): its windows are read from that entity's
    # head (docs/feature-state.md, section 2.5)
    within: dict[str, str] = dataclasses.field(default_factory=dict)
    digest: str = dataclasses.field(default="")

    def head(self, entity: str) -> int:
        """How many of the entity's last payments its exact windows keep one by one (an entity kept
        within another: that one's)."""
        entity = self.within.get(entity, entity)
        caps = [v.head for v in self.velocity if v.entity == entity and v.head is not None]
        return caps[0] if caps else self.head_limit

    @functools.cached_property
    def feature_names(self) -> list[str]:
        """Every feature, in the column order the model sees (computed once)."""
        names = list(self.payment)
        for v in self.velocity:
            names += [f"{v.entity}_{stat}_{w.label}" for w in v.windows for stat in v.stats]
        for d in self.distinct:
            names += [f"{d.entity}_distinct_{d.name}_{w.label}" for w in d.windows]
        names += [f"{n.entity}_{n.name}" for n in self.novelty]
        for f in self.feedback:
            names += [f"{f.entity}_{f.event}s_{w.label}" for w in f.windows]
        for r in self.label_rate:
            kinds = ("known_frauds", "fraud_rate")
            names += [f"{r.entity}_{kind}_{w.label}" for w in r.windows for kind in kinds]
        if self.card_behaviour is not None:
            b = self.card_behaviour
            label = b.window.label
            names += [
                f"{b.entity}_amount_to_mean_{label}",
                f"{b.entity}_amount_zscore_{label}",
                f"{b.entity}_seconds_since_prev",
                f"{b.entity}_age_days",
            ]
            names += [f"{b.entity}_frequency_{w.label}_to_{label}" for w in b.frequency]
        return names

    def entity_key(self, entity: str, payment: dict[str, Any]) -> str | None:
        """The entity's identity for this payment, or None when a key field is missing."""
        parts = []
        for name in self.entities[entity]:
            value = payment.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
                return None
            parts.append(str(value))
        return "|".join(parts)

    def used_entities(self) -> list[str]:
        """Entities that at least one feature reads, in declaration order."""
        groups: list[Velocity | Distinct | Novelty | Feedback | LabelRate] = [
            *self.velocity,
            *self.distinct,
            *self.novelty,
            *self.feedback,
            *self.label_rate,
        ]
        used = {g.entity for g in groups}
        if self.card_behaviour is not None:
            used.add(self.card_behaviour.entity)
        return [e for e in self.entities if e in used]


def load_spec(path: str | Path = DEFAULT_SPEC_PATH) -> FeatureSpec:
    """Read and validate a feature spec YAML file.

    Strict like the rule loader: an unknown key, a missing one, a value of the wrong type or an
    unsupported `version` is a SpecError naming the file, the line and the key (a misspelt
    `granularity` must not silently turn a bucketed window into an exact one).
    """
    text = Path(path).read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    if node is None:
        raise SpecError(f"{path}: empty feature spec")
    check_shape(node, SPEC_SHAPE, str(path), "spec")
    if raw["version"] != SPEC_VERSION:
        line = key_line(node, "version")
        raise SpecError(
            f"{path}:{line}: version {raw['version']!r} is not supported: this engine reads version "
            f"{SPEC_VERSION}"
        )
    try:
        spec = _build(raw)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return FeatureSpec(**{**spec.__dict__, "digest": digest})


def _windows(labels: list[str], granularity: dict[str, str] | None = None) -> tuple[Window, ...]:
    granularity = granularity or {}
    windows = []
    for label in labels:
        ms = parse_duration(label)
        g = parse_duration(granularity[label]) if label in granularity else None
        if g is not None and ms % g:
            raise SpecError(f"window {label} is not a whole number of {granularity[label]} buckets")
        windows.append(Window(label, ms, g))
    return tuple(windows)


def _tail_ms(label: str, ms: int, tail: str | None, where: str) -> int:
    """The tail granularity of an exact window: required, shorter than the window and dividing it."""
    if tail is None:
        raise SpecError(
            f"{where}: exact window {label} needs a tail granularity (limits.tail or the entry's tail, "
            f"e.g. {{{label}: ...}}): the buckets its payments older than the entity's head are kept in"
        )
    g = parse_duration(tail)
    if g >= ms or ms % g:
        raise SpecError(f"{where}: tail {tail} of window {label} must be shorter than it and divide it")
    return g


def _velocity(v: dict[str, Any], entity: str, default_tails: dict[int, str]) -> Velocity:
    """One velocity entry; an exact window's tail is the entry's own, else the spec's
    `limits.tail` for a window of its length."""
    granularity, tail = v.get("granularity") or {}, v.get("tail") or {}
    for key, given in (("granularity", granularity), ("tail", tail)):
        stray = sorted(set(given) - set(v["windows"]))
        if stray:
            raise SpecError(f"velocity of {entity}: {key} for {stray}, which are not among its windows")
    both = sorted(set(granularity) & set(tail))
    if both:
        raise SpecError(f"velocity of {entity}: {both} have both a granularity (bucketed) and a tail (exact)")
    windows = tuple(
        w
        if w.granularity_ms is not None
        else dataclasses.replace(
            w,
            tail_ms=_tail_ms(
                w.label, w.ms, tail.get(w.label, default_tails.get(w.ms)), f"velocity of {entity}"
            ),
        )
        for w in _windows(v["windows"], granularity)
    )
    exact = [w for w in windows if w.granularity_ms is None]
    if "head" in v and not exact:
        raise SpecError(f"velocity of {entity}: head is for exact windows, and it has none")
    return Velocity(entity, windows, tuple(v["stats"]), v.get("head"))


def _lagged(lagged: dict[str, list[str]], granularity: str) -> tuple[Window, ...]:
    """Windows of `length` ending `lag` before the current bucket: `{7d: [7d, 14d]}` gives the
    windows labelled 7d_lag7d and 7d_lag14d."""
    windows = []
    for length, lags in lagged.items():
        (base,) = _windows([length], {length: granularity})
        for lag in lags:
            lag_ms = parse_duration(lag)
            if lag_ms % (base.granularity_ms or 1):
                raise SpecError(f"lag {lag} is not a whole number of {granularity} buckets")
            windows.append(dataclasses.replace(base, label=f"{length}_lag{lag}", lag_ms=lag_ms))
    return tuple(windows)


def _check_entity(entities: dict[str, tuple[str, ...]], name: str, section: str) -> str:
    if name not in entities:
        raise SpecError(f"{section}: unknown entity {name!r}; declared: {', '.join(entities)}")
    return name


def _check_within(spec: FeatureSpec) -> None:
    """An entity kept within another (`within`) is that entity plus one key field, and only has
    exact velocity windows, no longer than the longest the enclosing entity's head keeps."""
    outers = list(spec.within.values())
    if len(outers) != len(set(outers)):
        raise SpecError("entities: at most one entity can be kept within another")
    for entity, outer in spec.within.items():
        where = f"entities.{entity}.within"
        _check_entity(spec.entities, outer, where)
        if outer in spec.within or outer == entity:
            raise SpecError(f"{where}: {outer} is itself kept within another entity")
        fields, prefix = spec.entities[entity], spec.entities[outer]
        if len(fields) != len(prefix) + 1 or fields[: len(prefix)] != prefix:
            raise SpecError(f"{where}: the key fields of {outer} {list(prefix)} and one more must be its own")
        groups: list[Distinct | Novelty | Feedback | LabelRate] = [
            *spec.distinct,
            *spec.novelty,
            *spec.feedback,
            *spec.label_rate,
        ]
        others = [g.entity for g in groups]
        if spec.card_behaviour is not None:
            others.append(spec.card_behaviour.entity)
        if entity in others:
            raise SpecError(f"{where}: an entity kept within another has velocity windows only")
        outer_ms = [w.ms for v in spec.velocity if v.entity == outer for w in v.windows if w.tail_ms]
        if spec.card_behaviour is not None and spec.card_behaviour.entity == outer:
            outer_ms.append(spec.card_behaviour.window.ms)
        for v in spec.velocity:
            if v.entity != entity:
                continue
            if v.head is not None:
                raise SpecError(f"velocity of {entity}: no head of its own: it reads the head of {outer}")
            for w in v.windows:
                if w.granularity_ms is not None or w.ms > max(outer_ms, default=0):
                    raise SpecError(
                        f"velocity of {entity}: window {w.label} must be exact and no longer than the "
                        f"longest exact window of {outer}"
                    )


def _build(raw: dict[str, Any]) -> FeatureSpec:
    entities = {
        name: tuple(given["fields"] if isinstance(given, dict) else given)
        for name, given in raw["entities"].items()
    }
    within = {
        name: str(given["within"])
        for name, given in raw["entities"].items()
        if isinstance(given, dict) and "within" in given
    }
    limits = raw.get("limits") or {}
    # the tail granularity of an exact window of each length, unless its velocity entry says
    default_tails = {parse_duration(w): g for w, g in (limits.get("tail") or {}).items()}
    for label, g in (limits.get("tail") or {}).items():
        _tail_ms(label, parse_duration(label), g, "limits.tail")
    velocity = []
    for v in raw.get("velocity", []):
        stats = tuple(v["stats"])
        bad = [s for s in stats if s not in STATS]
        if bad:
            raise SpecError(f"velocity: unknown stats {bad}; use {list(STATS)}")
        entity = _check_entity(entities, v["entity"], "velocity")
        velocity.append(_velocity(v, entity, default_tails))
    heads = [v.entity for v in velocity if v.head is not None]
    if len(heads) != len(set(heads)):
        raise SpecError("velocity: give an entity's head in one of its velocity entries only")
    distinct = [
        Distinct(
            _check_entity(entities, d["entity"], "distinct"), d["field"], d["name"], _windows(d["windows"])
        )
        for d in raw.get("distinct", [])
    ]
    novelty = [
        Novelty(
            _check_entity(entities, n["entity"], "novelty"),
            n["field"],
            n["name"],
            parse_duration(n["lookback"]),
        )
        for n in raw.get("novelty", [])
    ]
    feedback = []
    for f in raw.get("feedback", []):
        if f["event"] not in FEATURE_EVENTS:
            raise SpecError(f"feedback: unknown event {f['event']!r}; use {list(FEATURE_EVENTS)}")
        feedback.append(
            Feedback(_check_entity(entities, f["entity"], "feedback"), f["event"], _windows(f["windows"]))
        )
    label_rate = [
        LabelRate(
            _check_entity(entities, r["entity"], "label_rate"),
            _windows(r["windows"], dict.fromkeys(r["windows"], r["granularity"]))
            + _lagged(r.get("lagged") or {}, r["granularity"]),
            float(r["prior"]),
            float(r["strength"]),
        )
        for r in raw.get("label_rate", [])
    ]
    behaviour = None
    if "card_behaviour" in raw:
        b = raw["card_behaviour"]
        entity = _check_entity(entities, b["entity"], "card_behaviour")
        (window,) = _windows([b["window"]])
        # the habit window is one of the entity's exact windows: the same tail as its velocity
        # window of that length, or its own `tail` when it has none
        same = [
            w for v in velocity if v.entity == entity for w in v.windows if w.ms == window.ms and w.tail_ms
        ]
        if same and "tail" in b and parse_duration(b["tail"]) != same[0].tail_ms:
            raise SpecError(
                f"card_behaviour.tail: the velocity window {same[0].label} of {entity} has another"
            )
        if same:
            window = dataclasses.replace(window, tail_ms=same[0].tail_ms)
        else:
            tail = _tail_ms(
                window.label, window.ms, b.get("tail", default_tails.get(window.ms)), "card_behaviour"
            )
            window = dataclasses.replace(window, tail_ms=tail)
        behaviour = CardBehaviour(
            entity, window, parse_duration(b["profile_ttl"]), _windows(b.get("frequency") or [])
        )
        exact = {w.label for v in velocity if v.entity == behaviour.entity for w in v.windows}
        if behaviour.frequency and not {w.label for w in behaviour.frequency} <= exact:
            raise SpecError(
                f"card_behaviour.frequency: each window must be a velocity window of {behaviour.entity}"
            )
    payment = tuple(raw.get("payment", []))
    unknown = [p for p in payment if p not in PAYMENT_FEATURES]
    if unknown:
        raise SpecError(f"payment: unknown features {unknown}; available: {list(PAYMENT_FEATURES)}")
    spec = FeatureSpec(
        entities=entities,
        dedupe_horizon_ms=parse_duration(raw.get("dedupe_horizon", "2d")),
        velocity=tuple(velocity),
        distinct=tuple(distinct),
        novelty=tuple(novelty),
        feedback=tuple(feedback),
        label_rate=tuple(label_rate),
        card_behaviour=behaviour,
        payment=payment,
        head_limit=int(limits.get("head", DEFAULT_HEAD)),
        dedupe_limit=int(limits.get("dedupe", DEFAULT_DEDUPE)),
        distinct_limit=int(limits.get("distinct", DEFAULT_DISTINCT)),
        feedback_limit=int(limits.get("feedback", DEFAULT_FEEDBACK)),
        within=within,
    )
    _check_within(spec)
    return spec
