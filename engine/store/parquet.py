"""The embedded decision store: Parquet files partitioned by day under one directory, read with DuckDB.

Layout (Hive partitions, so DuckDB, pandas, Spark and Polars all read it as it is):

    <root>/decisions/day=YYYY-MM-DD/part-<time>-<id>.parquet       the payment's UTC day
    <root>/contributions/day=YYYY-MM-DD/part-<time>-<id>.parquet   the payment's UTC day too
    <root>/feedback/day=YYYY-MM-DD/part-<time>-<id>.parquet        the day the event was received (UTC)
    <root>/audit/day=YYYY-MM-DD/part-<time>-<id>.parquet           the day of the console's action (UTC)
    <root>/store.lock                                           the writers' lock

Each `write` adds at most one file per day and kind, named by its write time (ns); its idempotency
check reads only the day's files written since its oldest stream entry, less a clock margin, so its
cost does not grow with the day. `compact()` merges a day's files into
`compact-<first>-<last>-<made>.parquet`, which replaces the files written from `first` to `last`:
reads skip those from the moment it exists, so they never see a record twice (docs/decisions.md).
A file is written under a hidden temporary name
in its day's directory (`.part-....tmp`, which the `*.parquet` globs never match), fsynced, renamed
into place and its directory fsynced: a crash leaves either the whole file or no visible file.

The columns are flat for analysts (`DECISION_EXTRA` and engine/store/arrow.py's `DECISION_COLUMNS`,
then one float column per feature), and each row also keeps the record as it was logged, as JSON
text, in `record`: the store reads decisions back from it, so a decision comes back key for key as it
was logged (a feature that was NaN comes back as null, as in the JSON log).

A flagged decision's model contributions are computed after its answer and logged as a second record
of the transaction (`ContributionsRecord`): they are kept apart, under the payment's day like the
decision, and every read of a decision merges them into its `reasons.model` (`with_contributions`):
`decision` and `search` with one more query over the days of the decisions read, `iter_decisions` with
a LEFT JOIN within each day.

One host: writers take an exclusive `flock` on `store.lock` for each write and retention, which
serializes the writers of one machine; a shared network file system is not supported (use
PostgreSQL when several hosts share one store). Readers take no lock.

In a notebook:

    import duckdb
    duckdb.sql("select * from read_parquet('var/store/decisions/*/*.parquet', hive_partitioning=true, "
               "union_by_name=true)")

or `ParquetStore(path).connect()`, a DuckDB connection with `decisions`, `contributions`, `feedback` and
`audit` views.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar, cast

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from antifraud.engine.decision_record import AuditRecord, ContributionsRecord, Decision, FeedbackRecord
from antifraud.engine.store import Audited, AuditQuery, DecisionQuery, Logged, Written, with_contributions
from antifraud.engine.store.arrow import (
    DecisionColumns,
    Source,
    audit_batch,
    contributions_batch,
    feedback_batch,
)
from antifraud.engine.vocabulary import ENTITY_FIELDS

T = TypeVar("T")

Kind: TypeAlias = Literal["decisions", "feedback", "contributions", "audit"]
KINDS: tuple[Kind, ...] = ("decisions", "contributions", "feedback", "audit")
#: the kinds whose records are keyed by their stream entry (the others by transaction id)
_BY_ENTRY: tuple[Kind, ...] = ("feedback", "audit")

#: the columns every decision row has beside `DECISION_COLUMNS` and its features
DECISION_EXTRA: tuple[tuple[pa.Field, Source[Decision]], ...] = (
    (pa.field("test", pa.bool_()), ("test",)),
    # the rest of the payment (its fields other than the entities and `metadata`), as JSON text
    (
        pa.field("payment_other", pa.string()),
        lambda d: _json_or_none(
            {k: v for k, v in (d.get("payment") or {}).items() if k not in ENTITY_FIELDS and k != "metadata"}
        ),
    ),
    (pa.field("metadata", pa.string()), lambda d: _json_or_none((d.get("payment") or {}).get("metadata"))),
    (pa.field("reasons", pa.string()), lambda d: _json_or_none(d.get("reasons"))),
)
#: the columns the store adds last to every row: the stream entry it came from and the logged JSON
STREAM_ID = pa.field("stream_id", pa.string())
RECORD = pa.field("record", pa.string())

_ZSTD = "zstd"

#: the order stream entries were logged in ("<ms>-<seq>", as numbers)
_ENTRY_ORDER = (
    "try_cast(split_part(stream_id, '-', 1) as ubigint), try_cast(split_part(stream_id, '-', 2) as ubigint), "
    "stream_id"
)

#: how far this host's clock may be behind Redis's (or Redis's entry ids ahead of its clock) without
#: a redelivered record being stored twice: the idempotency check reads the files of the day written
#: since the batch's oldest entry time minus this (docs/decisions.md, "Constant write cost")
CLOCK_MARGIN_MS = 60_000


def _json_or_none(value: object) -> str | None:
    return orjson.dumps(value).decode() if value else None


def _dumps(record: Decision | FeedbackRecord | ContributionsRecord | AuditRecord) -> bytes:
    # as engine/decisions.py logs it: NaN becomes null, numpy values are written as numbers
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def _utc_day(iso: str) -> date:
    """The UTC day of an ISO 8601 time (a time without offset is taken as UTC)."""
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date()


class _Row(NamedTuple):
    """A record to write: its stream entry, its JSON (the `record` column) and the record itself,
    from which the flat columns are read (not from the JSON again: parsing it was a fifth of the
    sink's CPU)."""

    stream_id: str
    blob: bytes
    record: Decision | FeedbackRecord | ContributionsRecord | AuditRecord


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Span(NamedTuple):
    """The write times (ns, this host's clock) a data file's name carries: a written file's `first`,
    `last` and `made` are its write time; a compacted file's `first`..`last` are those of the files it
    replaced and `made` when it was made."""

    first: int
    last: int
    made: int


def _span(name: str) -> Span | None:
    """The span of `part-<ns>-<id>.parquet` or `compact-<first>-<last>-<made>.parquet`; None for
    any other name (temporary files, files not ours)."""
    fields = name.removesuffix(".parquet").split("-")
    if not name.endswith(".parquet") or not all(f.isdigit() for f in fields[1 : len(fields) - 1]):
        return None
    if fields[0] == "part" and len(fields) == 3:
        return Span(int(fields[1]), int(fields[1]), int(fields[1]))
    if fields[0] == "compact" and len(fields) == 4 and fields[3].isdigit():
        return Span(int(fields[1]), int(fields[2]), int(fields[3]))
    return None


def _replaced(name: str, span: Span, compacts: Sequence[tuple[str, Span]]) -> bool:
    """Whether a compacted file replaces this one: one made later whose span holds its span. Until a
    compaction has deleted its inputs (or after a crash between its two steps) they are still on
    disk; every read skips them, so no record is read twice."""
    return any(
        other != name and c.first <= span.first and span.last <= c.last and c.made > span.made
        for other, c in compacts
    )


def _day_files(directory: Path) -> tuple[list[tuple[Path, Span]], list[tuple[Path, Span]]]:
    """A day directory's data files, as (live, replaced): the live ones are what reads see."""
    try:
        names = [(entry.name, span) for entry in os.scandir(directory) if (span := _span(entry.name))]
    except FileNotFoundError:
        return [], []  # no file yet, or removed by retention
    compacts = [(name, span) for name, span in names if name.startswith("compact-")]
    live: list[tuple[Path, Span]] = []
    replaced: list[tuple[Path, Span]] = []
    for name, span in names:
        (replaced if compacts and _replaced(name, span, compacts) else live).append((directory / name, span))
    return live, replaced


def _stream_ms(stream_id: str) -> int | None:
    """The time (ms, Redis's clock) a stream entry id starts with; None if it is not an entry id."""
    head = stream_id.partition("-")[0]
    return int(head) if head.isdigit() else None


class ParquetStore:
    """Decisions and feedback as day-partitioned Parquet files under `root` (see the module's doc)."""

    def __init__(self, root: str | Path, clock_margin_ms: int = CLOCK_MARGIN_MS) -> None:
        self.root = Path(root).expanduser().absolute()
        self.clock_margin_ms = clock_margin_ms
        self.url = f"parquet://{self.root}"
        self.errors: tuple[type[Exception], ...] = (duckdb.Error, OSError)
        self._db = duckdb.connect(":memory:")
        self._thread_lock = threading.Lock()
        self._lock_file: int | None = None
        self._swept = False

    # --- paths -------------------------------------------------------------------------------------

    def _dir(self, kind: Kind, day: date | None = None) -> Path:
        base = self.root / kind
        return base if day is None else base / f"day={day.isoformat()}"

    def _files(self, kind: Kind, days: Iterable[date] | None = None) -> list[str]:
        """The data files reads see: every day's files (or those of `days`) but those a compacted file
        replaces."""
        base = self._dir(kind)
        if days is not None:
            listed = [str(self._dir(kind, day)) for day in sorted(set(days))]
        else:
            listed = (
                sorted(entry.path for entry in os.scandir(base) if entry.name.startswith("day="))
                if base.is_dir()
                else []
            )
        return [str(path) for day in listed for path, _ in _day_files(Path(day))[0]]

    # --- writing -----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The one-writer-per-host lock: a thread lock (flock is per open file, not per thread) and
        an exclusive flock on `store.lock` (other processes)."""
        with self._thread_lock:
            if self._lock_file is None:
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock_file = os.open(self.root / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                if not self._swept:
                    self._sweep()
                    self._swept = True
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove the temporary files a crashed writer left (we hold the lock: no writer is active),
        and the inputs a compaction interrupted between its two steps left (reads already skip them)."""
        for kind in KINDS:
            for tmp in self._dir(kind).glob("day=*/.part-*.tmp"):
                tmp.unlink(missing_ok=True)
            for directory in self._dir(kind).glob("day=*"):
                self._finish_compaction(directory)

    @staticmethod
    def _finish_compaction(directory: Path) -> int:
        """Delete the files of a day a compacted file replaces; the store lock is held."""
        _, replaced = _day_files(directory)
        for path, _ in replaced:
            path.unlink(missing_ok=True)
        if replaced:
            _fsync_dir(directory)
        return len(replaced)

    def write(
        self,
        decisions: Sequence[Logged],
        feedback: Sequence[Logged],
        contributions: Sequence[Logged] = (),
        audit: Sequence[Logged] = (),
    ) -> Written:
        """Add a batch; records already stored or repeated in the batch are skipped. Durable on return
        (fsynced files and directories)."""
        with self._locked():
            new_decisions = self._write_kind("decisions", decisions)
            new_feedback = self._write_kind("feedback", feedback)
            new_contributions = self._write_kind("contributions", contributions)
            new_audit = self._write_kind("audit", audit)
        return Written(new_decisions, new_feedback, new_contributions, new_audit)

    def _write_kind(self, kind: Kind, logged: Sequence[Logged]) -> int:
        key = "stream_id" if kind in _BY_ENTRY else "transaction_id"
        by_day: dict[date, dict[str, _Row]] = {}
        for item in logged:
            record = item.record
            blob = _dumps(record)
            if kind == "feedback":
                ident, day = item.stream_id, _utc_day(cast(FeedbackRecord, record)["received_at"])
            elif kind == "audit":
                ident, day = item.stream_id, _utc_day(cast(AuditRecord, record)["at"])
            else:  # a decision, or contributions (under the payment's day, as their decision)
                paid = cast(Decision | ContributionsRecord, record)
                ident, day = paid["transaction_id"], _utc_day(paid["timestamp"])
            # the first of a batch's duplicates wins; a record's day never changes (its payment time
            # or its received time), so an earlier copy is always in the same day's partition
            by_day.setdefault(day, {}).setdefault(ident, _Row(item.stream_id, blob, record))
        added = 0
        for day, rows in sorted(by_day.items()):
            live, _ = _day_files(self._dir(kind, day))
            for ident in self._existing(live, key, list(rows), self._since_ns(rows.values())):
                del rows[ident]
            if rows:
                # after every compacted file's span, even if this host's clock went back: a compacted
                # file must never be taken to replace a file written after it
                floor = max(
                    (span.last + 1 for path, span in live if path.name.startswith("compact-")), default=0
                )
                self._write_file(kind, day, list(rows.values()), floor)
                added += len(rows)
        return added

    def _since_ns(self, rows: Iterable[_Row]) -> int:
        """The write time (ns) before which no file of the day can hold a copy of these rows: a copy
        is only ever a redelivery of the same stream entry (Redis logs a transaction once, SET NX,
        and a feedback event's key is its entry), and any write of an entry happened after Redis
        added it, at the time its id starts with; less the clock margin. 0 (every file) when an id
        is not a stream entry id."""
        times = [_stream_ms(row.stream_id) for row in rows]
        if not times or None in times:
            return 0
        return max(0, (min(cast(list[int], times)) - self.clock_margin_ms) * 1_000_000)

    def _existing(
        self, live: list[tuple[Path, Span]], key: str, idents: list[str], since_ns: int
    ) -> list[str]:
        """Which of `idents` the day's files written at or after `since_ns` already hold: the cost of a
        write does not grow with the files of its day, only with those of the last clock margin."""
        files = [str(path) for path, span in live if span.last >= since_ns]
        if not files:
            return []
        sql = (
            f"select distinct {key} from read_parquet(?, union_by_name=true) "  # key: a fixed name
            f"where {key} in (select unnest(?::varchar[]))"
        )
        return [row[0] for row in self._fetch(sql, [files, idents])]

    def _fetch(self, sql: str, params: list[object]) -> list[tuple[str, ...]]:
        """The rows of a query, on a cursor of its own: a DuckDB connection is shared by threads only
        through one cursor each."""
        with self._db.cursor() as cursor:
            return cast(list[tuple[str, ...]], cursor.execute(sql, params).fetchall())

    def _table(self, kind: Kind, rows: list[_Row]) -> pa.Table:
        """The rows as an Arrow table: the flat columns, then `stream_id` and `record`."""
        records = [cast(Any, row.record) for row in rows]
        if kind == "decisions":
            columns = DecisionColumns(records, DECISION_EXTRA, reserved=(STREAM_ID.name, RECORD.name))
            batch = columns.batch(records)
        elif kind == "contributions":
            batch = contributions_batch(records)
        elif kind == "audit":
            batch = audit_batch(records)
        else:
            batch = feedback_batch(records)
        stream_ids = pa.array([row.stream_id for row in rows], pa.string())
        logged = pa.array([row.blob for row in rows], pa.binary()).cast(pa.string())
        table = pa.Table.from_batches([batch])
        return table.append_column(STREAM_ID, stream_ids).append_column(RECORD, logged)

    def _write_file(self, kind: Kind, day: date, rows: list[_Row], floor_ns: int = 0) -> Path:
        directory = self._dir(kind, day)
        tmp = self._write_temp(directory, self._table(kind, rows), floor_ns)
        return self._publish(tmp)

    def _write_temp(self, directory: Path, table: pa.Table, floor_ns: int = 0) -> Path:
        """The table in a hidden, fsynced temporary file of `directory`, which no read sees; named
        `part-<write time, ns, at least floor_ns>-<id>.parquet` once published."""
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(directory.parent)  # the new day's directory entry survives a crash
            _fsync_dir(directory.parent.parent)
        name = f"part-{max(time.time_ns(), floor_ns):020d}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = directory / f".{name}.tmp"
        with open(tmp, "wb") as out:
            # no dictionary pages: with zstd the files are as small (550 bytes a decision either way)
            # and the write costs 12.6 instead of 17.1 us a decision (real decisions, 87 features)
            pq.write_table(table, out, compression=_ZSTD, use_dictionary=False)
            out.flush()
            os.fsync(out.fileno())
        return tmp

    @staticmethod
    def _publish(tmp: Path) -> Path:
        """Rename a temporary file into place and make the rename durable."""
        final = tmp.with_name(tmp.name.removeprefix(".").removesuffix(".tmp"))
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        return final

    # --- reading -----------------------------------------------------------------------------------

    def _query(
        self, kind: Kind, where: str, params: list[object], tail: str = "", days: Iterable[date] | None = None
    ) -> list[str]:
        """The `record` column of the rows of `kind` matching `where` (in the partitions of `days`, or
        every day's)."""
        sql = (
            "select record from read_parquet(?, hive_partitioning=true, union_by_name=true) "
            f"where {where} {tail}"
        )
        chosen = None if days is None else list(days)

        def read() -> list[str]:
            files = self._files(kind, chosen)  # listed again on a retry
            return [row[0] for row in self._fetch(sql, [files, *params])] if files else []

        return self._retry(read)

    def _retry(self, read: Callable[[], list[T]]) -> list[T]:
        # retention or a compaction may delete files between their listing and DuckDB's reading them:
        # list and read again
        try:
            return read()
        except duckdb.IOException:
            return read()

    def decision(self, transaction_id: str, timestamp: datetime | None = None) -> Decision | None:
        """The stored decision, as it was logged with its contributions merged, or None. With the
        payment's `timestamp`, only that UTC day's partitions are read (decisions and contributions);
        without, every day's decisions, then the contributions of the day of the one found."""
        days = None if timestamp is None else [_aware(timestamp).date()]
        rows = self._query("decisions", "transaction_id = ?", [transaction_id], "limit 1", days)
        return self._merged([cast(Decision, orjson.loads(rows[0]))])[0] if rows else None

    def _merged(self, decisions: list[Decision]) -> list[Decision]:
        """The decisions with their contributions (`with_contributions`): one query over the
        contributions of their days, whatever their number."""
        if not decisions:
            return decisions
        days = {_utc_day(d["timestamp"]) for d in decisions}
        ids = [d["transaction_id"] for d in decisions]
        sql = (
            "select transaction_id, record from read_parquet(?, union_by_name=true) "
            f"where transaction_id in (select unnest(?::varchar[])) order by {_ENTRY_ORDER}"
        )

        def read() -> list[tuple[str, str]]:
            files = self._files("contributions", days)
            return cast(list[tuple[str, str]], self._fetch(sql, [files, ids])) if files else []

        found: dict[str, ContributionsRecord] = {}
        for txid, record in self._retry(read):
            if txid not in found:  # the first logged copy (a copy is rare: see `_existing`)
                found[txid] = cast(ContributionsRecord, orjson.loads(record))
        return [with_contributions(d, found.get(d["transaction_id"])) for d in decisions]

    def feedback_for(self, transaction_id: str) -> list[FeedbackRecord]:
        """The feedback events about a transaction, in the order they were received (by received time,
        then by stream entry)."""
        rows = self._query(
            "feedback",
            "transaction_id = ?",
            [transaction_id],
            "order by received_at, try_cast(split_part(stream_id, '-', 1) as ubigint), "
            "try_cast(split_part(stream_id, '-', 2) as ubigint), stream_id",
        )
        return [cast(FeedbackRecord, orjson.loads(row)) for row in rows]

    def search(self, query: DecisionQuery) -> list[Decision]:
        """Decisions matching `query`, newest payment first, at most `query.limit`."""
        where, params = _conditions(query)
        rows = self._query("decisions", where, params, "order by timestamp desc, transaction_id desc limit ?")
        return self._merged([cast(Decision, orjson.loads(row)) for row in rows])

    def audit(self, query: AuditQuery) -> list[Audited]:
        """Audit records matching `query`, newest first, at most `query.limit`: the day partitions of
        the query's time range only, when it has one."""
        clauses, params = ["true"], list[object]()
        for column in ("actor", "action", "subject"):
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = ?")  # column: a fixed name
                params.append(value)
        if query.start is not None:
            clauses.append('"at" >= ?')
            params.append(_aware(query.start))
        if query.end is not None:
            clauses.append('"at" < ?')
            params.append(_aware(query.end))
        days = None
        if query.start is not None and query.end is not None:
            first, last = _aware(query.start).date(), _aware(query.end).date()
            days = [date.fromordinal(n) for n in range(first.toordinal(), last.toordinal() + 1)]
        sql = (
            "select stream_id, record from read_parquet(?, union_by_name=true) "
            f'where {" and ".join(clauses)} order by "at" desc, '
            "try_cast(split_part(stream_id, '-', 1) as ubigint) desc, "
            "try_cast(split_part(stream_id, '-', 2) as ubigint) desc, stream_id desc limit ?"
        )

        def read() -> list[tuple[str, ...]]:
            files = self._files("audit", days)
            return self._fetch(sql, [files, *params, query.limit]) if files else []

        return [
            Audited(ident, cast(AuditRecord, orjson.loads(record))) for ident, record in self._retry(read)
        ]

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new DuckDB connection with the views `decisions`, `contributions` (the model contributions
        of flagged decisions, logged after them), `feedback` and `audit` over the store's files
        (a kind with no file yet has no view), for notebooks and ad hoc queries. The views are over
        the files of the moment of the call, without the inputs of a compaction (which a plain glob
        would see twice for an instant, or until the next compaction after a crash): connect again
        to see later writes, and after a compaction."""
        db = duckdb.connect(":memory:")
        for kind in KINDS:
            if files := self._files(kind):
                listed = ", ".join("'" + name.replace("'", "''") + "'" for name in files)
                db.execute(
                    f"create view {kind} as select * from read_parquet([{listed}], "
                    "hive_partitioning=true, union_by_name=true)"
                )
        return db

    # --- retention ---------------------------------------------------------------------------------

    def apply_retention(self, before: datetime) -> int:
        """Delete whole day partitions older than the UTC day of `before`: decisions and contributions
        by payment day, feedback by received day, audit records by the day of the action. Day
        granularity: records of `before`'s own day are kept, even those before `before`. Returns how
        many records were deleted."""
        cutoff = (before if before.tzinfo else before.replace(tzinfo=UTC)).astimezone(UTC).date()
        deleted = 0
        with self._locked():
            for kind in KINDS:
                base = self._dir(kind)
                for directory in sorted(base.glob("day=*")):
                    try:
                        day = date.fromisoformat(directory.name.removeprefix("day="))
                    except ValueError:
                        continue  # not one of ours
                    if day >= cutoff:
                        continue
                    for path in directory.glob("*.parquet"):
                        deleted += pq.read_metadata(path).num_rows
                        path.unlink()
                    for leftover in directory.iterdir():  # temporary files of a crashed writer
                        leftover.unlink()
                    directory.rmdir()
                if base.is_dir():
                    _fsync_dir(base)
        return deleted

    # --- compaction --------------------------------------------------------------------------------

    #: how much memory DuckDB may use while compacting
    compact_memory_limit = "512MB"
    #: the files a compaction sorts together, at most this many bytes on disk (one sorted run each)
    compact_group_bytes = 32 * 1024 * 1024

    def compact(self, day: date | None = None) -> int:
        """Merge the files of `day`, or of every day before today (UTC), into one file per day and
        kind: decisions and contributions sorted by payment time then transaction id, one per
        transaction id; feedback
        by received time then stream entry, one per entry. Returns how many files were merged away.

        Crash-safe in two steps: the merged file, `compact-<first>-<last>-<made>.parquet`, is written
        and published atomically (fsynced) first, then its inputs are deleted. Its name says which
        files it replaces (those of its day written from `first` to `last`), so reads skip them from
        the moment it is published and no record is read twice, even after a crash between the steps
        (the next compaction, or a writer's first write, deletes them). The merge runs without the
        store lock, so the sink keeps writing (its new files are not inputs); the lock is taken to
        publish and delete. Compactions of one store take turns on `compact.lock`.
        """
        import tempfile  # only here and in iterations: the rest of the store never sorts much

        self.root.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.root / "compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = 0
            with tempfile.TemporaryDirectory(prefix="antifraud-store-compact-") as spill:
                db = duckdb.connect(
                    ":memory:", config={"memory_limit": self.compact_memory_limit, "temp_directory": spill}
                )
                try:
                    for kind in KINDS:
                        for directory in self._compactable(kind, day):
                            for tmp in directory.glob(".compact-*.tmp"):  # a crashed compaction's
                                tmp.unlink(missing_ok=True)
                            merged += self._compact_day(db, kind, directory)
                finally:
                    db.close()
            return merged
        finally:
            os.close(lock)  # releases the flock

    def _compactable(self, kind: Kind, day: date | None) -> list[Path]:
        """The day directories `compact(day)` merges: that day's, or those of the days before today."""
        if day is not None:
            return [self._dir(kind, day)]
        today = datetime.now(UTC).date()
        days: list[Path] = []
        for directory in sorted(self._dir(kind).glob("day=*")):
            try:
                if date.fromisoformat(directory.name.removeprefix("day=")) < today:
                    days.append(directory)
            except ValueError:
                continue  # not one of ours
        return days

    def _compact_day(self, db: duckdb.DuckDBPyConnection, kind: Kind, directory: Path) -> int:
        """Merge one day directory's files (see `compact`); how many files were merged away."""
        with self._locked():
            self._finish_compaction(directory)
            inputs, _ = _day_files(directory)
        if len(inputs) < 2:
            return 0
        first, last = min(span.first for _, span in inputs), max(span.last for _, span in inputs)
        # `made` after every input: it replaces them, and a compaction of it later replaces it
        made = max(time.time_ns(), last + 1)
        tmp = directory / f".compact-{first:020d}-{last:020d}-{made:020d}.parquet.tmp"
        entry = (
            "try_cast(split_part(stream_id, '-', 1) as ubigint), "
            "try_cast(split_part(stream_id, '-', 2) as ubigint), stream_id"
        )
        # the first logged copy of a record wins, as in `write`: a copy is only there if clocks
        # differed by more than the margin, or an id was logged again once Redis forgot it
        key, order = {
            "feedback": ("stream_id", f"received_at, {entry}"),
            "audit": ("stream_id", f'"at", {entry}'),
        }.get(kind, ("transaction_id", "timestamp, transaction_id"))  # decisions, contributions
        listed = ", ".join(_quote(str(path)) for path, _ in inputs)

        def source(files: str) -> str:
            return (
                f"read_parquet([{files}], union_by_name=true, hive_partitioning=false, filename=true, "
                "file_row_number=true)"
            )

        rows = source(listed)
        # the copies (rare), found on the keys alone: a window over whole rows holds the day in memory
        db.execute("create or replace temp table copies (filename varchar, file_row_number bigint)")
        db.execute(
            f"insert into copies select filename, file_row_number from (select filename, file_row_number, "
            f"row_number() over (partition by {key} order by {entry}, filename, file_row_number) as n "
            f"from {rows} where {key} in (select {key} from {rows} group by {key} having count(*) > 1)) "
            "where n > 1"
        )
        keep = (
            "select * exclude (filename, file_row_number) from {} as r where not exists (select 1 from "
            "copies as c where c.filename = r.filename and c.file_row_number = r.file_row_number) "
        )
        schema = db.sql(keep.format(rows) + "limit 0").to_arrow_table().schema
        # sorted a group of files at a time, each group one or more row groups, groups in write order:
        # DuckDB 2.0's sort of these wide rows ran out of memory on 100,000 decisions instead of
        # spilling, so a whole day is never sorted at once (see docs/decisions.md)
        with open(tmp, "wb") as out:
            with pq.ParquetWriter(out, schema, compression=_ZSTD) as writer:
                for group in _groups(inputs, self.compact_group_bytes):
                    part = ", ".join(_quote(str(path)) for path in group)
                    table = db.sql(keep.format(source(part)) + f"order by {order}").to_arrow_table()
                    for name in schema.names:  # a column the group's files lack: nulls
                        if name not in table.column_names:
                            table = table.append_column(
                                schema.field(name), pa.nulls(len(table), schema.field(name).type)
                            )
                    writer.write_table(table.select(schema.names).cast(schema))
            out.flush()
            os.fsync(out.fileno())
        with self._locked():
            now = {path.name for path, _ in _day_files(directory)[0]}
            names = {path.name for path, _ in inputs}
            # an input gone (retention), or a file written meanwhile inside the span (this host's
            # clock went back): the merged file would hide or repeat records; leave the day as it is
            late = [name for name in now - names if (span := _span(name)) and first <= span.first <= last]
            if not names <= now or late:
                tmp.unlink(missing_ok=True)
                return 0
            self._publish(tmp)
            for path, _ in inputs:
                path.unlink()
            _fsync_dir(directory)
        return len(inputs)

    def close(self) -> None:
        """Close DuckDB and the lock file."""
        self._db.close()
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    # --- reading everything in order (export-decisions) ------------------------------------------------

    #: how much memory DuckDB may use to sort one day of an iteration before it spills to disk
    iter_memory_limit = "512MB"

    def iter_decisions(
        self, start: datetime | None = None, end: datetime | None = None, batch: int = 5000
    ) -> Iterator[list[Decision]]:
        """Every decision of a payment time in [start, end), as logged with its contributions merged,
        `batch` at a time, in payment time order then transaction id. Day by day (the partitions are
        the payment's UTC day): one ordered DuckDB query per day, the day's decisions LEFT JOINed with
        the day's contributions, fetched `batch` rows at a time; a copy of a record seen twice (files
        being compacted) is skipped, as copies sort next to each other."""
        for rows in self._iter_days("decisions", "timestamp", "timestamp, transaction_id", start, end, batch):
            yield [
                with_contributions(
                    cast(Decision, orjson.loads(record)),
                    cast(ContributionsRecord, orjson.loads(extra)) if extra is not None else None,
                )
                for record, extra in rows
            ]

    def iter_feedback(
        self, start: datetime | None = None, end: datetime | None = None, batch: int = 5000
    ) -> Iterator[list[FeedbackRecord]]:
        """Every feedback event received in [start, end), as logged, `batch` at a time, in the order
        received (received time, then stream entry), day by day as `iter_decisions`."""
        order = (
            "received_at, try_cast(split_part(stream_id, '-', 1) as ubigint), "
            "try_cast(split_part(stream_id, '-', 2) as ubigint), stream_id, transaction_id"
        )
        for rows in self._iter_days("feedback", "received_at", order, start, end, batch):
            yield [cast(FeedbackRecord, orjson.loads(record)) for record, _ in rows]

    def _iter_days(
        self,
        kind: Kind,
        column: str,
        order: str,
        start: datetime | None,
        end: datetime | None,
        batch: int,
    ) -> Iterator[list[tuple[str, str | None]]]:
        """The `record` of the rows of `kind` with `column` in [start, end), in `order`, in lists of at
        most `batch`: the day partitions in order, each one ordered query. Beside each decision's
        record, the `record` of its contributions (the first logged copy), or None; beside feedback,
        None."""
        import tempfile  # only here: the rest of the store never sorts more than a search's limit

        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        low = _aware(start) if start is not None else None
        high = _aware(end) if end is not None else None
        days: list[Path] = []
        for directory in sorted(self._dir(kind).glob("day=*")):
            try:
                day = date.fromisoformat(directory.name.removeprefix("day="))
            except ValueError:
                continue  # not one of ours
            if (low is None or day >= low.date()) and (high is None or day <= high.date()):
                days.append(directory)
        if not days:
            return
        where: list[str] = ["true"]
        params: list[object] = []
        if low is not None:
            where.append(f"{column} >= ?")  # column: a fixed name
            params.append(low)
        if high is not None:
            where.append(f"{column} < ?")
            params.append(high)
        key = "transaction_id" if kind == "decisions" else "transaction_id, stream_id"
        tail = f"where {' and '.join(where)} order by {order}"
        plain = f"select {key}, record, null from read_parquet(?, union_by_name=true) {tail}"
        # the contributions' columns renamed: the decisions' names in `tail` stay unambiguous
        joined = (
            f"select {key}, record, c_record from read_parquet(?, union_by_name=true) left join ("
            "select transaction_id as c_id, record as c_record from read_parquet(?, union_by_name=true) "
            f"qualify row_number() over (partition by transaction_id order by {_ENTRY_ORDER}) = 1"
            f") on c_id = transaction_id {tail}"
        )
        beside = self._dir("contributions") if kind == "decisions" else None
        # a connection of its own: a memory limit for the sort, and its spill files in a directory
        # removed with the iteration (an in-memory database would spill to ./.tmp)
        with tempfile.TemporaryDirectory(prefix="antifraud-store-sort-") as spill:
            db = duckdb.connect(
                ":memory:", config={"memory_limit": self.iter_memory_limit, "temp_directory": spill}
            )
            try:
                for directory in days:
                    extra = beside / directory.name if beside is not None else None
                    yield from self._iter_day(
                        db, (plain, joined), directory, extra, params, batch, key.count(",") + 1
                    )
            finally:
                db.close()

    @staticmethod
    def _iter_day(
        db: duckdb.DuckDBPyConnection,
        sql: tuple[str, str],
        directory: Path,
        joined: Path | None,
        params: list[object],
        batch: int,
        width: int,
    ) -> Iterator[list[tuple[str, str | None]]]:
        """One day's rows (see `_iter_days`): the first `width` columns are the record's identity. With
        `joined` (the same day's contributions directory) and files in it, the second query of `sql`
        joins them; the first otherwise."""
        for attempt in (1, 2):
            files = sorted(str(path) for path in directory.glob("*.parquet"))
            if not files:
                return  # removed by retention meanwhile, or never written
            # live files only (a compaction's inputs skipped); copies are dropped by the query itself
            extra = [str(path) for path, _ in _day_files(joined)[0]] if joined is not None else []
            statement, args = (sql[1], [files, extra, *params]) if extra else (sql[0], [files, *params])
            previous: tuple[str, ...] | None = None
            sent = 0
            try:
                cursor = db.execute(statement, args)
                while rows := cursor.fetchmany(batch):
                    records: list[tuple[str, str | None]] = []
                    for row in rows:
                        ident = tuple(row[:width])
                        if ident != previous:  # a copy of the previous row (compaction) is skipped
                            records.append((row[width], row[width + 1]))
                            previous = ident
                    if records:
                        sent += len(records)
                        yield records
                return
            except duckdb.IOException:
                # a file listed above was deleted before DuckDB opened it (compaction, retention): list
                # the day again, unless rows of it were already given (they would be given twice)
                if attempt == 2 or sent:
                    raise


def _conditions(query: DecisionQuery) -> tuple[str, list[object]]:
    """The SQL condition of a search and its parameters (the limit last)."""
    clauses: list[str] = ["true"]
    params: list[object] = []
    for column in ("card_id", "customer_id", "merchant_id", "verdict"):
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(str(value))
    if query.start is not None:
        start = _aware(query.start)
        # the day partition first: DuckDB skips the files of earlier days without opening them
        clauses.append("day >= ?::date and timestamp >= ?")
        params += [start.date(), start]
    if query.end is not None:
        end = _aware(query.end)
        clauses.append("day <= ?::date and timestamp < ?")
        params += [end.date(), end]
    params.append(query.limit)
    return " and ".join(clauses), params


def _aware(moment: datetime) -> datetime:
    """A time in UTC (a naive time is taken as UTC)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _groups(files: Sequence[tuple[Path, Span]], limit: int) -> Iterator[list[Path]]:
    """The files in write order, in consecutive groups of at most `limit` bytes (at least one file)."""
    group: list[Path] = []
    size = 0
    for path, _ in sorted(files, key=lambda item: (item[1].last, item[1].first, item[0].name)):
        length = path.stat().st_size
        if group and size + length > limit:
            yield group
            group, size = [], 0
        group.append(path)
        size += length
    if group:
        yield group
