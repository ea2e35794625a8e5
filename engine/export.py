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
batch at a time, and the join is a partitioned hash join on disk (engine/joins.py): the transaction
ids of decisions and the feedback events go to hash partitions in a temporary directory, each
partition is joined on its own, and the joined summaries are merged back in log order beside
`decisions.parquet`, read a batch at a time. Files are written under temporary names and renamed
at the end, so a failed export leaves no half-written file.

The log holds no raw card number by design (a `pan` is tokenized before anything is recorded) and the
export writes only what the log holds.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from antifraud.engine.decisions import DecisionStore
from antifraud.engine.joins import SEQ, InOrder, Partitions, join_partitions
from antifraud.engine.store.arrow import FEEDBACK_SCHEMA, TIME, DecisionColumns, feedback_batch
from antifraud.engine.vocabulary import FRAUD_LABELS

DECISIONS_FILE = "decisions.parquet"
FEEDBACK_FILE = "feedback.parquet"
JOINED_FILE = "decisions_with_feedback.parquet"

T = TypeVar("T")


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
_DECISION_KEYS = pa.schema([(SEQ, pa.int64()), ("transaction_id", pa.string())])
_FEEDBACK_KEYS = pa.schema([(SEQ, pa.int64()), *FEEDBACK_SCHEMA])
_JOINED_KEYS = pa.schema([(SEQ, pa.int64()), *SUMMARY_FIELDS])


def summarize_feedback(events: pa.Table) -> pa.Table:
    """Feedback summarized per transaction: `transaction_id` and `SUMMARY_FIELDS`, one row each.

    `events` has the columns of `FEEDBACK_SCHEMA`, and `_seq` (arrival order) when it is not the
    table's order. The latest label and the latest bank outcome win, by `reported_at` and then by
    arrival: a chargeback reported after a "legitimate" label makes the payment fraud, and a later
    approval has the decline code of no earlier decline. Refunds and cancellations keep the first
    time they were reported. Vectorized (Arrow group-by), so a partition's events never become
    Python objects.
    """
    if SEQ not in events.column_names:
        events = events.append_column(SEQ, pa.array(range(events.num_rows), type=pa.int64()))
    order = pc.sort_indices(
        events, sort_keys=[("reported_at", "ascending"), (SEQ, "ascending")], null_placement="at_start"
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

    summary = events.group_by("transaction_id").aggregate([(SEQ, "count")])
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


@dataclass
class _JoinCounts:
    """What the join found, partition by partition."""

    with_feedback: int = 0  # decisions with at least one feedback event
    unmatched: int = 0  # events about no exported decision

    def add(self, keys: pa.Table, events: pa.Table, joined: pa.Table) -> None:
        self.with_feedback += pc.sum(pc.greater(joined["feedback_events"], 0)).as_py() or 0
        known = pc.is_in(events["transaction_id"], value_set=keys["transaction_id"])
        self.unmatched += events.num_rows - (pc.sum(known).as_py() or 0)


def _join_partition(keys: pa.Table, events: pa.Table) -> pa.Table:
    """Each decision of one partition with its feedback summary, in log order (`_JOINED_KEYS`)."""
    joined = keys.join(summarize_feedback(events), keys="transaction_id", join_type="left outer")
    joined = joined.sort_by(SEQ)
    filled = {
        "refunded": pc.fill_null(joined["refunded"], False),
        "cancelled": pc.fill_null(joined["cancelled"], False),
        "feedback_events": pc.fill_null(joined["feedback_events"], 0),
    }
    return pa.table(
        [joined[SEQ]] + [filled.get(f.name, joined[f.name]) for f in SUMMARY_FIELDS], schema=_JOINED_KEYS
    )


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
            decision_keys = Partitions(work, "decisions", _DECISION_KEYS, n_parts, batch)
            events = Partitions(work, "feedback", _FEEDBACK_KEYS, n_parts, batch)
            joined = Partitions(work, "joined", _JOINED_KEYS, n_parts, batch)

            def write_log(
                name: str, records: Iterator[pa.RecordBatch], schema: pa.Schema, keys: Partitions, total: int
            ) -> int:
                task = progress.add_task(name.removesuffix(".parquet"), total=total)
                return _write_log(
                    records,
                    schema.with_metadata(metadata),
                    partial[name],
                    keys,
                    row_group_rows,
                    lambda n: progress.update(task, completed=n, total=max(total, n)),
                )

            decided = write_log(DECISIONS_FILE, *_decision_batches(store, batch), decision_keys, n_decisions)
            received = write_log(FEEDBACK_FILE, *_feedback_batches(store, batch), events, n_feedback)
            task = progress.add_task("joining feedback", total=n_parts)
            counts = _JoinCounts()

            def joined_part(keys: pa.Table, part_events: pa.Table, result: pa.Table) -> None:
                counts.add(keys, part_events, result)
                progress.advance(task)

            join_partitions(decision_keys, events, joined, _join_partition, joined_part)
            with_feedback, unmatched = counts.with_feedback, counts.unmatched

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


def _decision_batches(store: DecisionStore, batch: int) -> tuple[Iterator[pa.RecordBatch], pa.Schema]:
    """The decision log as record batches, and their schema (fixed by the first batch's features)."""
    chunks = _chunks(store.decisions(batch), batch)
    first = next(chunks, [])
    columns = DecisionColumns(first)
    chunks = itertools.chain([first], chunks) if first else chunks
    del first  # each chunk is freed once converted: a chunk of decisions weighs ~13 kB each in Python
    return (columns.batch(chunk) for chunk in chunks), columns.schema


def _feedback_batches(store: DecisionStore, batch: int) -> tuple[Iterator[pa.RecordBatch], pa.Schema]:
    """The feedback events as record batches, and their schema (`FEEDBACK_SCHEMA`)."""
    return (feedback_batch(chunk) for chunk in _chunks(store.feedback(batch), batch)), FEEDBACK_SCHEMA


def _write_log(
    records: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    path: Path,
    keys: Partitions,
    row_group_rows: int,
    done: Callable[[int], None],
) -> int:
    """Record batches of a stream into a Parquet file, and each row with its position in the stream
    (the columns the partitions keep) into the partitions; returns the number of rows."""
    out = _ParquetOut(path, schema, row_group_rows)
    seq = 0
    for record in records:
        out.write(record)
        keys.write_numbered(record, seq)
        seq += record.num_rows
        done(seq)
    out.close()
    keys.close()
    return seq


def _write_joined(
    decisions_path: Path,
    path: Path,
    joined: Partitions,
    metadata: dict[str, str],
    batch: int,
    row_group_rows: int,
    done: Callable[[int], None],
) -> None:
    """decisions.parquet read back a batch at a time, with the summaries of the same rows beside it."""
    source = pq.ParquetFile(decisions_path)
    schema = pa.schema(list(source.schema_arrow) + list(SUMMARY_FIELDS), metadata=metadata)
    out = _ParquetOut(path, schema, row_group_rows)
    merge = InOrder(joined)
    seq = 0
    for record in source.iter_batches(batch_size=batch):
        summary = merge.take(seq + record.num_rows)
        in_step = summary.num_rows == record.num_rows and (
            record.num_rows == 0 or summary[SEQ][0].as_py() == seq
        )
        if not in_step:  # every decision was partitioned once: anything else is a bug here
            raise ExportError(f"internal error: feedback summaries out of step at decision {seq}")
        arrays = list(record.columns) + [summary[f.name].combine_chunks() for f in SUMMARY_FIELDS]
        out.write(pa.RecordBatch.from_arrays(arrays, schema=schema))
        seq += record.num_rows
        done(seq)
    out.close()
