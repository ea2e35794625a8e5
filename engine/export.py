"""The decision store and its feedback as Parquet, for notebooks: `antifraud export-decisions`.

A query over the durable decision store (engine/store/, docs/decisions.md): the Redis streams are
only a buffer the sink drains. Writes, in one directory:

- `decisions.parquet`: one row per decision of a payment time in [start, end) (everything by
  default), in payment time order then transaction id: ids, times, verdict, score, versions,
  degradation, the rules that fired, amount, currency and the payment's entities, then one column per
  feature, named as in the feature spec so that `frame[booster.feature_name()]` is the model's input.
  A feature named like a decision column (`amount`) is written as `feature_<name>`; the decision's
  column holds the payment's value. Features that appear only after the first batch (the spec changed
  while the store was written) are kept as JSON in `other_features`.
- `feedback.parquet`: the feedback events in the order they were received: all of them, or with a
  start, those received from one day before it on (feedback follows its payment, by up to the 540
  days of a dispute; the day covers clocks that disagree). The end does not bound it: a chargeback
  about a payment of the period may come long after the period.
- `decisions_with_feedback.parquet`: `decisions.parquet`, in the same order, plus the feedback about
  each payment summarized (`SUMMARY_FIELDS`): the latest label and bank outcome by `reported_at`,
  refunds and cancellations; a payment without feedback has nulls, `refunded`/`cancelled` false.

Memory stays bounded whatever the size of the store: the store gives decisions and events a batch at
a time (`Store.iter_decisions`, `Store.iter_feedback`), each batch is converted and written at once,
and the join is a partitioned hash join on disk (engine/joins.py): the transaction ids of
`decisions.parquet` and the events of `feedback.parquet`, read back a batch at a time, go to hash
partitions in a temporary directory, each partition is joined on its own, and the joined summaries
are merged back in order beside `decisions.parquet`, read a batch at a time. Files are written under
temporary names and renamed at the end, so a failed export leaves no half-written file.

The store holds no raw card number by design (a `pan` is tokenized before anything is recorded) and
the export writes only what the store holds.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from antifraud.engine.decision_record import Decision
from antifraud.engine.joins import SEQ, InOrder, Partitions, join_partitions
from antifraud.engine.store import Store, open_store
from antifraud.engine.store.arrow import FEEDBACK_SCHEMA, TIME, DecisionColumns, feedback_batch
from antifraud.engine.vocabulary import FRAUD_LABELS

DECISIONS_FILE = "decisions.parquet"
FEEDBACK_FILE = "feedback.parquet"
JOINED_FILE = "decisions_with_feedback.parquet"

T = TypeVar("T")

#: feedback is read from this long before the period's start: a payment's timestamp is its sender's
#: clock, an event's received time the service's
FEEDBACK_MARGIN = timedelta(days=1)


class ExportError(RuntimeError):
    """The store could not be exported (unreachable, unreadable, or the output not writable)."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    decisions: int
    feedback: int
    decisions_with_feedback: int  # decisions with at least one feedback event
    unmatched_feedback: int  # events about payments that have no decision in the export
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
    store_url: str,
    out: str | Path,
    start: datetime | None = None,
    end: datetime | None = None,
    console: Console | None = None,
    *,
    batch: int = 2000,
    partition_rows: int = 1_000_000,
    row_group_rows: int = 50_000,
) -> ExportResult:
    """Write the decisions of payments in [start, end) (None: unbounded; a naive time is UTC) and
    their feedback from the store at `store_url` (`open_store`) under `out`, as three Parquet files.

    `batch` records are read from the store and converted at a time; the join uses one partition per
    `partition_rows` decisions and events (a partition is what the join holds in memory at once).
    """
    console = console or Console(stderr=True)
    start, end = (None if t is None else _utc(t) for t in (start, end))
    if start is not None and end is not None and start >= end:
        raise ExportError(f"the start {start.isoformat()} is not before the end {end.isoformat()}")
    directory = Path(out)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {directory}: {exc}") from exc
    try:
        store = open_store(store_url)
    except Exception as exc:  # each backend fails its own way (a bad URL, DuckDB, psycopg)
        raise ExportError(f"cannot open the store {redact(store_url)}: {exc}") from exc
    try:
        return _export(store, directory, start, end, console, batch, partition_rows, row_group_rows)
    except OSError as exc:
        raise ExportError(f"cannot write the export to {directory}: {exc}") from exc
    finally:
        store.close()


def redact(url: str) -> str:
    """A store URL without its password, to be printed or written into the files."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}"))


def _utc(moment: datetime) -> datetime:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _read(records: Iterator[T], store: Store, what: str) -> Iterator[T]:
    """The store's batches, its failures (whatever the backend raises) as an `ExportError`."""
    while True:
        try:
            item = next(records)
        except StopIteration:
            return
        except Exception as exc:
            raise ExportError(f"cannot read the {what} from the store {redact(store.url)}: {exc}") from exc
        yield item


def _export(
    store: Store,
    out: Path,
    start: datetime | None,
    end: datetime | None,
    console: Console,
    batch: int,
    partition_rows: int,
    row_group_rows: int,
) -> ExportResult:
    final = {name: out / name for name in (DECISIONS_FILE, FEEDBACK_FILE, JOINED_FILE)}
    partial = {name: path.with_name(path.name + ".partial") for name, path in final.items()}
    metadata = {"antifraud.store": redact(store.url), "antifraud.exported_at": datetime.now(UTC).isoformat()}
    metadata |= {
        f"antifraud.{k}": t.isoformat() for k, t in (("start", start), ("end", end)) if t is not None
    }
    progress = Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp, progress:
            # the store cannot count cheaply: the sizes are known once the first two files are written
            decisions_task = progress.add_task("decisions", total=None)
            records, schema = _decision_batches(
                _read(store.iter_decisions(start, end, batch), store, "decisions")
            )
            decided = _write_file(
                records,
                schema.with_metadata(metadata),
                partial[DECISIONS_FILE],
                row_group_rows,
                lambda n: progress.update(decisions_task, completed=n),
            )
            feedback_task = progress.add_task("feedback", total=None)
            since = None if start is None else start - FEEDBACK_MARGIN
            events_read = _read(store.iter_feedback(since, None, batch), store, "feedback")
            received = _write_file(
                (feedback_batch(chunk) for chunk in events_read),
                FEEDBACK_SCHEMA.with_metadata(metadata),
                partial[FEEDBACK_FILE],
                row_group_rows,
                lambda n: progress.update(feedback_task, completed=n),
            )

            work = Path(tmp)
            n_parts = max(1, math.ceil((decided + received) / max(1, partition_rows)))
            decision_keys = Partitions(work, "decisions", _DECISION_KEYS, n_parts, batch)
            events = Partitions(work, "feedback", _FEEDBACK_KEYS, n_parts, batch)
            joined = Partitions(work, "joined", _JOINED_KEYS, n_parts, batch)
            _partition(partial[DECISIONS_FILE], ["transaction_id"], decision_keys, batch)
            _partition(partial[FEEDBACK_FILE], FEEDBACK_SCHEMA.names, events, batch)

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
    period = "" if start is None and end is None else f" (payments {_period(start, end)})"
    console.print(
        f"wrote {out}: {decided:,} decisions{period}, {received:,} feedback events; "
        f"{with_feedback:,} decisions have feedback, {unmatched:,} events match no exported decision"
    )
    return ExportResult(decided, received, with_feedback, unmatched, final)


def _period(start: datetime | None, end: datetime | None) -> str:
    since = "" if start is None else f"from {start.isoformat()}"
    until = "" if end is None else f"before {end.isoformat()}"
    return " ".join(part for part in (since, until) if part)


def _decision_batches(chunks: Iterator[list[Decision]]) -> tuple[Iterator[pa.RecordBatch], pa.Schema]:
    """The decisions as record batches, and their schema (fixed by the first batch's features)."""
    first = next(chunks, [])
    columns = DecisionColumns(first)
    chunks = itertools.chain([first], chunks) if first else chunks
    del first  # each chunk is freed once converted: a chunk of decisions weighs ~13 kB each in Python
    return (columns.batch(chunk) for chunk in chunks), columns.schema


def _write_file(
    records: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    path: Path,
    row_group_rows: int,
    done: Callable[[int], None],
) -> int:
    """Record batches into a Parquet file; returns the number of rows."""
    out = _ParquetOut(path, schema, row_group_rows)
    rows = 0
    for record in records:
        out.write(record)
        rows += record.num_rows
        done(rows)
    out.close()
    return rows


def _partition(path: Path, columns: list[str], keys: Partitions, batch: int) -> None:
    """Columns of a written file, read back a batch at a time, into the join's partitions, each row
    numbered by its position in the file."""
    seq = 0
    for record in pq.ParquetFile(path).iter_batches(batch_size=batch, columns=columns):
        keys.write_numbered(record, seq)
        seq += record.num_rows
    keys.close()


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
