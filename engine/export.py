"""The decision log and its feedback as Parquet, for notebooks: `antifraud export-decisions`.

Reads the two streams of the decision log (engine/decisions.py) in batches and writes, in one
directory:

- `decisions.parquet`: one row per decision, in log order: ids, times, verdict, score, versions,
  degradation, the rules that fired, amount, currency and the payment's entities, then one column per
  feature, named as in the feature spec so that `frame[booster.feature_name()]` is the model's input.
  A feature named like a decision column (`amount`) is written as `feature_<name>`; the decision's
  column holds the payment's value. Features that appear only after the first batch (the spec changed
  while the log was written) are kept as JSON in `other_features`.
- `feedback.parquet`: every feedback event, in the order it was received.
- `decisions_with_feedback.parquet`: `decisions.parquet`, in the same order, plus the feedback about
  each payment summarized (`SUMMARY_FIELDS`): the latest label and bank outcome by `reported_at`,
  refunds and cancellations; a payment without feedback has nulls, `refunded`/`cancelled` false.

Memory stays bounded whatever the size of the log: decisions and events are converted and written a
batch at a time, and the join is a partitioned hash join on disk: the transaction ids of decisions
and the feedback events go to hash partitions in a temporary directory, each partition is joined on
its own, and the joined summaries are merged back in log order beside `decisions.parquet`, read a
batch at a time. Files are written under temporary names and renamed at the end, so a failed export
leaves no half-written file.

The log holds no raw card number by design (a `pan` is tokenized before anything is recorded) and the
export writes only what the log holds.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.decisions import DecisionStore
from engine.pipeline import ENTITY_FIELDS

DECISIONS_FILE = "decisions.parquet"
FEEDBACK_FILE = "feedback.parquet"
JOINED_FILE = "decisions_with_feedback.parquet"

TIME = pa.timestamp("us", tz="UTC")
TEXTS = pa.list_(pa.string())
FRAUD_LABELS = frozenset({"fraud", "chargeback"})
_SEQ = "_seq"  # position in the decision stream, to restore log order after the join

T = TypeVar("T")
Decision = dict[str, Any]


class ExportError(RuntimeError):
    """The decision log could not be exported (Redis unreachable, output not writable)."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    decisions: int
    feedback: int
    decisions_with_feedback: int  # decisions with at least one feedback event
    unmatched_feedback: int  # events about payments that have no decision in the exported log
    files: dict[str, Path]


def _fired(decision: Decision, kind: str, key: str) -> list[Any]:
    return [f.get(key) for f in (decision.get("reasons") or {}).get(kind) or []]


def _degraded(decision: Decision) -> str | None:
    value = decision.get("degraded")
    if not value:
        return None
    return "; ".join(map(str, value)) if isinstance(value, list) else str(value)


# Where a column is in a logged decision: a path of keys (read in bulk by Arrow, which is what keeps a
# million decisions fast) or a function of the decision (read row by row, for the few that need it).
Source = tuple[str, ...] | Callable[[Decision], Any]

# The columns of a decision before its features.
DECISION_COLUMNS: tuple[tuple[pa.Field, Source], ...] = (
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


def _struct_type(leaves: Iterable[tuple[tuple[str, ...], pa.DataType]]) -> pa.StructType:
    """The Arrow type of nested JSON objects holding these leaves (timestamps are read as text)."""
    tree: dict[str, Any] = {}
    for path, kind in leaves:
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = pa.string() if kind == TIME else kind

    def build(node: dict[str, Any]) -> pa.StructType:
        return pa.struct([(k, build(v) if isinstance(v, dict) else v) for k, v in node.items()])

    return build(tree)


def _leaves(array: pa.StructArray, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], pa.Array]:
    """Every leaf of a struct array by its path; a missing parent object makes its leaves null."""
    out: dict[tuple[str, ...], pa.Array] = {}
    for f, child in zip(array.type, array.flatten(), strict=True):
        path = (*prefix, f.name)
        out.update(_leaves(child, path) if pa.types.is_struct(f.type) else {path: child})
    return out


def _read(records: list[dict[str, Any]], fields: list[tuple[pa.Field, Source]]) -> list[pa.Array]:
    """The columns of these records, each in its field's type."""
    paths = [(source, f.type) for f, source in fields if isinstance(source, tuple)]
    leaves = _leaves(pa.array(records, type=_struct_type(paths)))
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

# What decisions_with_feedback.parquet adds to each decision.
SUMMARY_FIELDS: tuple[pa.Field, ...] = (
    pa.field("label", pa.string()),  # latest label: fraud, chargeback or legitimate
    pa.field("is_fraud", pa.bool_()),  # label is fraud or chargeback; null without a label
    pa.field("label_reported_at", TIME),
    pa.field("bank_outcome", pa.string()),  # latest outcome: approved or declined
    pa.field("decline_code", pa.string()),  # of that outcome
    pa.field("outcome_reported_at", TIME),
    pa.field("refunded", pa.bool_()),
    pa.field("refunded_at", TIME),  # first refund reported
    pa.field("cancelled", pa.bool_()),
    pa.field("cancelled_at", TIME),  # first cancellation reported
    pa.field("feedback_events", pa.int32()),
)
_SUMMARY_SCHEMA = pa.schema([pa.field("transaction_id", pa.string()), *SUMMARY_FIELDS])
_DECISION_KEYS = pa.schema([(_SEQ, pa.int64()), ("transaction_id", pa.string())])
_FEEDBACK_KEYS = pa.schema([(_SEQ, pa.int64()), *FEEDBACK_SCHEMA])
_JOINED_KEYS = pa.schema([(_SEQ, pa.int64()), *SUMMARY_FIELDS])


class DecisionColumns:
    """Turns logged decisions into record batches of one schema, fixed by the first batch."""

    def __init__(self, first: Iterable[Decision]) -> None:
        names: dict[str, None] = {}
        for decision in first:
            names.update(dict.fromkeys(decision.get("features") or {}))
        taken = {f.name for f, _ in DECISION_COLUMNS} | {"other_features"}
        self._fields: list[tuple[pa.Field, Source]] = [
            *DECISION_COLUMNS,
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
        if features.keys() <= self._known:
            return None
        return json.dumps({k: v for k, v in features.items() if k not in self._known}, sort_keys=True)


def feedback_batch(events: list[dict[str, Any]]) -> pa.RecordBatch:
    """One record batch of feedback events (`FEEDBACK_SCHEMA`)."""
    fields: list[tuple[pa.Field, Source]] = [(f, (f.name,)) for f in FEEDBACK_SCHEMA]
    return pa.RecordBatch.from_arrays(_read(events, fields), schema=FEEDBACK_SCHEMA)


def summarize_feedback(events: pa.Table) -> pa.Table:
    """Feedback summarized per transaction: `transaction_id` and `SUMMARY_FIELDS`, one row each.

    `events` has the columns of `FEEDBACK_SCHEMA`, and `_seq` (arrival order) when it is not the
    table's order. The latest label and the latest bank outcome win, by `reported_at` and then by
    arrival: a chargeback reported after a "legitimate" label makes the payment fraud, and a later
    approval has the decline code of no earlier decline. Refunds and cancellations keep the first
    time they were reported. Vectorized (Arrow group-by), so a partition's events never become
    Python objects.
    """
    if _SEQ not in events.column_names:
        events = events.append_column(_SEQ, pa.array(range(events.num_rows), type=pa.int64()))
    order = pc.sort_indices(
        events, sort_keys=[("reported_at", "ascending"), (_SEQ, "ascending")], null_placement="at_start"
    )
    events = events.take(order)
    kind = events["kind"]

    def per_transaction(mask: pa.ChunkedArray, how: str, columns: dict[str, str]) -> pa.Table:
        # `how` (first or last) of each column, in the sorted order, nulls included
        rows = events.filter(mask).select(["transaction_id", *columns.values()])
        keep_nulls = pc.ScalarAggregateOptions(skip_nulls=False)
        grouped = rows.group_by("transaction_id", use_threads=False).aggregate(
            [(source, how, keep_nulls) for source in columns.values()]
        )
        return pa.table(
            [grouped["transaction_id"]] + [grouped[f"{source}_{how}"] for source in columns.values()],
            names=["transaction_id", *columns],
        )

    summary = events.group_by("transaction_id").aggregate([(_SEQ, "count")])
    summary = summary.rename_columns(["transaction_id", "feedback_events"])
    for part in (
        per_transaction(
            pc.and_(pc.equal(kind, "label"), pc.is_valid(events["label"])),
            "last",
            {"label": "label", "label_reported_at": "reported_at"},
        ),
        per_transaction(
            pc.and_(pc.equal(kind, "outcome"), pc.is_valid(events["outcome"])),
            "last",
            {"bank_outcome": "outcome", "decline_code": "decline_code", "outcome_reported_at": "reported_at"},
        ),
        per_transaction(pc.equal(kind, "refund"), "first", {"refunded_at": "reported_at"}),
        per_transaction(pc.equal(kind, "cancel"), "first", {"cancelled_at": "reported_at"}),
    ):
        summary = summary.join(part, keys="transaction_id", join_type="left outer", use_threads=False)
    label = summary["label"]
    computed = {
        "is_fraud": pc.if_else(
            pc.is_valid(label), pc.is_in(label, value_set=pa.array(sorted(FRAUD_LABELS))), None
        ),
        "refunded": pc.is_valid(summary["refunded_at"]),
        "cancelled": pc.is_valid(summary["cancelled_at"]),
    }
    return pa.table(
        [summary["transaction_id"]]
        + [computed[f.name] if f.name in computed else summary[f.name] for f in SUMMARY_FIELDS],
        schema=_SUMMARY_SCHEMA,
    )


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ParquetOut:
    """A Parquet file written batch by batch, in row groups of about `row_group_rows`."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int) -> None:
        self.schema, self.row_group_rows = schema, row_group_rows
        self.writer = pq.ParquetWriter(path, schema, compression="zstd")
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        if self.pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending, self.schema))
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self._flush()
        self.writer.close()


class _Partitions:
    """Rows spread over `n` Arrow IPC files on disk by a hash of their transaction id."""

    def __init__(self, directory: Path, name: str, schema: pa.Schema, n: int, chunk_rows: int) -> None:
        self.paths = [directory / f"{name}-{i}.arrow" for i in range(n)]
        self.schema = schema
        self.chunk_rows = chunk_rows  # rows per batch on disk: what a reader holds at once
        self._writers: dict[int, Any] = {}
        self._sinks: dict[int, Any] = {}

    def write(self, batch: pa.RecordBatch) -> None:
        """Spread rows over the partitions by transaction id."""
        n = len(self.paths)
        if n == 1:
            self._writer(0).write_batch(batch)
            return
        groups: dict[int, list[int]] = {}
        for row, txid in enumerate(batch.column("transaction_id").to_pylist()):
            groups.setdefault(zlib.crc32(txid.encode()) % n, []).append(row)
        for part, rows in groups.items():
            self._writer(part).write_batch(batch.take(pa.array(rows, type=pa.int64())))

    def write_to(self, part: int, table: pa.Table) -> None:
        """Write rows into one given partition."""
        self._writer(part).write_table(table, max_chunksize=self.chunk_rows)

    def _writer(self, part: int) -> Any:
        if part not in self._writers:
            self._sinks[part] = pa.OSFile(str(self.paths[part]), "wb")
            self._writers[part] = ipc.new_stream(self._sinks[part], self.schema)
        return self._writers[part]

    def close(self) -> None:
        for part, writer in self._writers.items():
            writer.close()
            self._sinks[part].close()
        self._writers.clear()

    def read(self, part: int) -> pa.Table:
        path = self.paths[part]
        if not path.exists():
            return self.schema.empty_table()
        with pa.OSFile(str(path), "rb") as source:
            return ipc.open_stream(source).read_all()

    def reader(self, part: int) -> Iterator[pa.RecordBatch]:
        path = self.paths[part]
        if not path.exists():
            return
        with pa.OSFile(str(path), "rb") as source:
            yield from ipc.open_stream(source)


def _join_partition(keys: pa.Table, events: pa.Table) -> pa.Table:
    """Each decision of one partition with its feedback summary, in log order (`_JOINED_KEYS`)."""
    joined = keys.join(summarize_feedback(events), keys="transaction_id", join_type="left outer")
    joined = joined.sort_by(_SEQ)
    filled = {
        "refunded": pc.fill_null(joined["refunded"], False),
        "cancelled": pc.fill_null(joined["cancelled"], False),
        "feedback_events": pc.fill_null(joined["feedback_events"], 0),
    }
    return pa.table(
        [joined[_SEQ]] + [filled.get(f.name, joined[f.name]) for f in SUMMARY_FIELDS], schema=_JOINED_KEYS
    )


class _LogOrderMerge:
    """Merges the joined partitions, each sorted by `_seq`, back into log order, a range at a time."""

    def __init__(self, partitions: _Partitions) -> None:
        self._readers = [partitions.reader(i) for i in range(len(partitions.paths))]
        self._buffers = [_JOINED_KEYS.empty_table() for _ in self._readers]

    def take(self, upto: int) -> pa.Table:
        """Every row with `_seq` below `upto` not taken yet, sorted by `_seq`."""
        parts = []
        for i, reader in enumerate(self._readers):
            buffer = self._buffers[i]
            while buffer.num_rows == 0 or buffer[_SEQ][-1].as_py() < upto:
                batch = next(reader, None)
                if batch is None:
                    break
                buffer = pa.concat_tables([buffer, pa.Table.from_batches([batch], _JOINED_KEYS)])
            below = pc.sum(pc.less(buffer[_SEQ], upto)).as_py() or 0
            parts.append(buffer.slice(0, below))
            self._buffers[i] = buffer.slice(below)
        return pa.concat_tables(parts).sort_by(_SEQ)


def export(
    redis_url: str,
    out_dir: str | Path,
    namespace: str = "af",
    console: Console | None = None,
    *,
    batch: int = 2000,
    partition_rows: int = 1_000_000,
    row_group_rows: int = 50_000,
) -> ExportResult:
    """Write the decision log and its feedback under `out_dir` as three Parquet files.

    `batch` entries are read from Redis and converted at a time; the join uses one partition per
    `partition_rows` decisions and events (a partition is what the join holds in memory at once).
    """
    console = console or Console(stderr=True)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc}") from exc
    client = redis.Redis.from_url(redis_url, socket_timeout=60, socket_connect_timeout=10)
    store = DecisionStore(client, namespace)
    try:
        return _export(store, out, console, batch, partition_rows, row_group_rows)
    except redis.RedisError as exc:
        raise ExportError(f"cannot read the decision log {namespace!r} from Redis: {exc}") from exc
    except OSError as exc:
        raise ExportError(f"cannot write the export to {out}: {exc}") from exc
    finally:
        client.close()


def _export(
    store: DecisionStore, out: Path, console: Console, batch: int, partition_rows: int, row_group_rows: int
) -> ExportResult:
    n_decisions = cast(int, store.client.xlen(store.decisions_stream))
    n_feedback = cast(int, store.client.xlen(store.feedback_stream))
    n_parts = max(1, math.ceil((n_decisions + n_feedback) / max(1, partition_rows)))
    final = {name: out / name for name in (DECISIONS_FILE, FEEDBACK_FILE, JOINED_FILE)}
    partial = {name: path.with_name(path.name + ".partial") for name, path in final.items()}
    metadata = {"antifraud.namespace": store.ns, "antifraud.exported_at": datetime.now(UTC).isoformat()}
    progress = Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp, progress:
            work = Path(tmp)
            decision_keys = _Partitions(work, "decisions", _DECISION_KEYS, n_parts, batch)
            events = _Partitions(work, "feedback", _FEEDBACK_KEYS, n_parts, batch)
            joined = _Partitions(work, "joined", _JOINED_KEYS, n_parts, batch)

            task = progress.add_task("decisions", total=n_decisions)
            decided = _write_decisions(
                store,
                partial[DECISIONS_FILE],
                decision_keys,
                metadata,
                batch,
                row_group_rows,
                lambda n: progress.update(task, completed=n, total=max(n_decisions, n)),
            )
            task = progress.add_task("feedback", total=n_feedback)
            received = _write_feedback(
                store,
                partial[FEEDBACK_FILE],
                events,
                metadata,
                batch,
                row_group_rows,
                lambda n: progress.update(task, completed=n, total=max(n_feedback, n)),
            )
            task = progress.add_task("joining feedback", total=n_parts)
            with_feedback = unmatched = 0
            for part in range(n_parts):
                keys, part_events = decision_keys.read(part), events.read(part)
                result = _join_partition(keys, part_events)
                with_feedback += pc.sum(pc.greater(result["feedback_events"], 0)).as_py() or 0
                known = pc.is_in(part_events["transaction_id"], value_set=keys["transaction_id"])
                unmatched += part_events.num_rows - (pc.sum(known).as_py() or 0)
                joined.write_to(part, result)
                progress.advance(task)
                del keys, part_events, result  # one partition in memory at a time
            joined.close()

            task = progress.add_task("decisions with feedback", total=decided)
            _write_joined(
                partial[DECISIONS_FILE],
                partial[JOINED_FILE],
                joined,
                metadata,
                batch,
                row_group_rows,
                lambda n: progress.update(task, completed=n),
            )
        for name, path in partial.items():
            os.replace(path, final[name])
    except BaseException:
        for path in partial.values():
            path.unlink(missing_ok=True)
        raise
    console.print(
        f"wrote {out}: {decided:,} decisions, {received:,} feedback events; "
        f"{with_feedback:,} decisions have feedback, {unmatched:,} events match no exported decision"
    )
    return ExportResult(decided, received, with_feedback, unmatched, final)


def _write_decisions(
    store: DecisionStore,
    path: Path,
    keys: _Partitions,
    metadata: dict[str, str],
    batch: int,
    row_group_rows: int,
    done: Callable[[int], None],
) -> int:
    """decisions.parquet, and each decision's (position, transaction id) into the key partitions."""
    chunks = _chunks(store.iter_stream(store.decisions_stream, "d", batch), batch)
    first = next(chunks, [])
    columns = DecisionColumns(first)
    out = _ParquetOut(path, columns.schema.with_metadata(metadata), row_group_rows)
    seq = 0
    chunks = itertools.chain([first], chunks) if first else chunks
    del first  # each chunk is freed once converted: a chunk of decisions weighs ~13 kB each in Python
    for chunk in chunks:
        record = columns.batch(chunk)
        out.write(record)
        positions = pa.array(range(seq, seq + record.num_rows), type=pa.int64())
        keys.write(pa.RecordBatch.from_arrays([positions, record["transaction_id"]], schema=_DECISION_KEYS))
        seq += record.num_rows
        done(seq)
    out.close()
    keys.close()
    return seq


def _write_feedback(
    store: DecisionStore,
    path: Path,
    events: _Partitions,
    metadata: dict[str, str],
    batch: int,
    row_group_rows: int,
    done: Callable[[int], None],
) -> int:
    """feedback.parquet, and every event with its position into the event partitions."""
    out = _ParquetOut(path, FEEDBACK_SCHEMA.with_metadata(metadata), row_group_rows)
    seq = 0
    for chunk in _chunks(store.iter_stream(store.feedback_stream, "e", batch), batch):
        record = feedback_batch(chunk)
        out.write(record)
        positions = pa.array(range(seq, seq + record.num_rows), type=pa.int64())
        events.write(pa.RecordBatch.from_arrays([positions, *record.columns], schema=_FEEDBACK_KEYS))
        seq += record.num_rows
        done(seq)
    out.close()
    events.close()
    return seq


def _write_joined(
    decisions_path: Path,
    path: Path,
    joined: _Partitions,
    metadata: dict[str, str],
    batch: int,
    row_group_rows: int,
    done: Callable[[int], None],
) -> None:
    """decisions.parquet read back a batch at a time, with the summaries of the same rows beside it."""
    source = pq.ParquetFile(decisions_path)
    schema = pa.schema(list(source.schema_arrow) + list(SUMMARY_FIELDS), metadata=metadata)
    out = _ParquetOut(path, schema, row_group_rows)
    merge = _LogOrderMerge(joined)
    seq = 0
    for record in source.iter_batches(batch_size=batch):
        summary = merge.take(seq + record.num_rows)
        in_step = summary.num_rows == record.num_rows and (
            record.num_rows == 0 or summary[_SEQ][0].as_py() == seq
        )
        if not in_step:  # every decision was partitioned once: anything else is a bug here
            raise ExportError(f"internal error: feedback summaries out of step at decision {seq}")
        arrays = list(record.columns) + [summary[f.name].combine_chunks() for f in SUMMARY_FIELDS]
        out.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
        seq += record.num_rows
        done(seq)
    out.close()
