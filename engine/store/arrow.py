"""Decisions, their contributions, feedback events and audit records as Arrow columns: the conversion
the decision store's Parquet files (engine/store/parquet.py) and `antifraud export-decisions`
(engine/export.py) share.

Pure: it reads logged records (engine.decision_record) and returns Arrow arrays, nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal, TypeAlias, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from antifraud.engine.decision_record import AuditRecord, ContributionsRecord, Decision, FeedbackRecord
from antifraud.engine.vocabulary import ENTITY_FIELDS

TIME = pa.timestamp("us", tz="UTC")
TEXTS = pa.list_(pa.string())

R = TypeVar("R", bound=Mapping[str, object])


def _fired(
    decision: Decision, kind: Literal["rules", "shadow_rules"], key: Literal["rule", "reason"]
) -> list[str | None]:
    reasons = decision.get("reasons")
    return [f.get(key) for f in (reasons.get(kind) if reasons else None) or []]


def _degraded(decision: Decision) -> str | None:
    value = decision.get("degraded")
    return "; ".join(map(str, value)) if value else None


# Where a column is in a logged record: a path of keys (read in bulk by Arrow, which is what keeps a
# million decisions fast) or a function of the record (read row by row, for the few that need it).
Source: TypeAlias = tuple[str, ...] | Callable[[R], object]

# The columns of a decision before its features.
DECISION_COLUMNS: tuple[tuple[pa.Field, Source[Decision]], ...] = (
    (pa.field("transaction_id", pa.string()), ("transaction_id",)),
    (pa.field("timestamp", TIME), ("timestamp",)),
    (pa.field("decided_at", TIME), ("decided_at",)),
    (pa.field("verdict", pa.string()), ("verdict",)),
    (pa.field("score", pa.float64()), ("score",)),
    (pa.field("risk_score", pa.int32()), ("risk_score",)),
    (pa.field("model_version", pa.string()), ("model_version",)),
    (pa.field("rules_version", pa.string()), ("rules_version",)),
    (pa.field("degraded", pa.string()), _degraded),  # null, or what was missing, joined by "; "
    (pa.field("fail_policy", pa.string()), ("reasons", "fail_policy")),
    (pa.field("rules_fired", TEXTS), lambda d: _fired(d, "rules", "rule")),
    (pa.field("rule_reasons", TEXTS), lambda d: _fired(d, "rules", "reason")),
    (pa.field("shadow_rules_fired", TEXTS), lambda d: _fired(d, "shadow_rules", "rule")),
    (pa.field("skipped_rules", TEXTS), ("reasons", "skipped_rules")),
    (pa.field("shadow_model_version", pa.string()), ("shadow", "model_version")),
    (pa.field("shadow_score", pa.float64()), ("shadow", "score")),
    (pa.field("amount", pa.float64()), ("amount",)),
    (pa.field("currency", pa.string()), ("currency",)),
    *((pa.field(name, pa.string()), ("payment", name)) for name in ENTITY_FIELDS),
    (pa.field("total_ms", pa.float64()), ("timings", "total_ms")),
)


# nested JSON objects down to the Arrow type of each leaf
_Tree: TypeAlias = dict[str, "_Tree | pa.DataType"]


def _struct_type(leaves: Iterable[tuple[tuple[str, ...], pa.DataType]]) -> pa.StructType:
    """The Arrow type of nested JSON objects holding these leaves (timestamps are read as text)."""
    tree: _Tree = {}
    for path, kind in leaves:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = pa.string() if kind == TIME else kind

    def build(node: _Tree) -> pa.StructType:
        return pa.struct([(k, build(v) if isinstance(v, dict) else v) for k, v in node.items()])

    return build(tree)


def _leaves(array: pa.StructArray, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], pa.Array]:
    """Every leaf of a struct array by its path; a missing parent object makes its leaves null."""
    out: dict[tuple[str, ...], pa.Array] = {}
    for f, child in zip(array.type, array.flatten(), strict=True):
        path = (*prefix, f.name)
        out.update(_leaves(child, path) if pa.types.is_struct(f.type) else {path: child})
    return out


def _read(records: Sequence[R], fields: Sequence[tuple[pa.Field, Source[R]]]) -> list[pa.Array]:
    """The columns of these records, each in its field's type."""
    paths = [(source, f.type) for f, source in fields if isinstance(source, tuple)]
    # from_pandas: a NaN is null, as in the records' JSON (a record may come in memory, not from JSON)
    leaves = _leaves(pa.array(records, type=_struct_type(paths), from_pandas=True))
    arrays = []
    for f, source in fields:
        if isinstance(source, tuple):
            array = leaves[source]
            arrays.append(array if array.type == f.type else pc.cast(array, f.type))
        else:
            arrays.append(pa.array([source(r) for r in records], type=f.type))
    return arrays


FEEDBACK_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("kind", pa.string()),
        ("label", pa.string()),
        ("outcome", pa.string()),
        ("decline_code", pa.string()),
        ("reported_at", TIME),
        ("received_at", TIME),
    ]
)


#: a flagged decision's contributions (the list itself is in the store's `record` column, as logged)
CONTRIBUTIONS_SCHEMA = pa.schema(
    [("transaction_id", pa.string()), ("timestamp", TIME), ("model_version", pa.string())]
)


#: an audit record of the console (its `detail` as JSON text; the whole record is in the store's `record`)
AUDIT_SCHEMA = pa.schema(
    [
        ("at", TIME),
        ("actor", pa.string()),
        ("role", pa.string()),
        ("action", pa.string()),
        ("subject", pa.string()),
        ("ip", pa.string()),
        ("detail", pa.string()),
    ]
)


class DecisionColumns:
    """Turns logged decisions into record batches of one schema, fixed by the first batch."""

    def __init__(
        self,
        first: Iterable[Decision],
        extra: Sequence[tuple[pa.Field, Source[Decision]]] = (),
        reserved: Iterable[str] = (),
    ) -> None:
        """`extra` columns follow `DECISION_COLUMNS`; a feature named like any column or like one of
        `reserved` (columns the caller adds itself) is written as `feature_<name>`."""
        names: dict[str, None] = {}
        # the decisions of a batch nearly all have the same feature names (one feature list): each
        # distinct sequence of names is merged once, not every decision's
        self._shapes: set[tuple[str, ...]] = set()
        for decision in first:
            shape = tuple(decision.get("features") or ())
            if shape not in self._shapes:
                self._shapes.add(shape)
                names.update(dict.fromkeys(shape))
        taken = {f.name for f, _ in (*DECISION_COLUMNS, *extra)} | {"other_features", *reserved}
        self._fields: list[tuple[pa.Field, Source[Decision]]] = [
            *DECISION_COLUMNS,
            *extra,
            *((pa.field(f"feature_{n}" if n in taken else n, pa.float64()), ("features", n)) for n in names),
            (pa.field("other_features", pa.string()), self._other),
        ]
        self._known = names.keys()
        self.schema = pa.schema([f for f, _ in self._fields])

    def batch(self, decisions: list[Decision]) -> pa.RecordBatch:
        """One record batch of these decisions."""
        return pa.RecordBatch.from_arrays(_read(decisions, self._fields), schema=self.schema)

    def _other(self, decision: Decision) -> str | None:
        features = decision.get("features") or {}
        if tuple(features) in self._shapes or features.keys() <= self._known:
            return None
        return json.dumps({k: v for k, v in features.items() if k not in self._known}, sort_keys=True)


def feedback_batch(events: Sequence[FeedbackRecord]) -> pa.RecordBatch:
    """One record batch of feedback events (`FEEDBACK_SCHEMA`)."""
    fields: list[tuple[pa.Field, Source[FeedbackRecord]]] = [(f, (f.name,)) for f in FEEDBACK_SCHEMA]
    return pa.RecordBatch.from_arrays(_read(events, fields), schema=FEEDBACK_SCHEMA)


def contributions_batch(records: Sequence[ContributionsRecord]) -> pa.RecordBatch:
    """One record batch of contributions records (`CONTRIBUTIONS_SCHEMA`)."""
    fields: list[tuple[pa.Field, Source[ContributionsRecord]]] = [
        (f, (f.name,)) for f in CONTRIBUTIONS_SCHEMA
    ]
    return pa.RecordBatch.from_arrays(_read(records, fields), schema=CONTRIBUTIONS_SCHEMA)


def audit_batch(records: Sequence[AuditRecord]) -> pa.RecordBatch:
    """One record batch of audit records (`AUDIT_SCHEMA`)."""
    fields: list[tuple[pa.Field, Source[AuditRecord]]] = [
        (f, (f.name,) if f.name != "detail" else lambda r: _json_or_none(r.get("detail")))
        for f in AUDIT_SCHEMA
    ]
    return pa.RecordBatch.from_arrays(_read(records, fields), schema=AUDIT_SCHEMA)


def _json_or_none(value: object) -> str | None:
    return json.dumps(value, sort_keys=True) if value else None
