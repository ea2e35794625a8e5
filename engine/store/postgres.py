"""The shared decision store: PostgreSQL, for several service hosts writing and reading one store.

`PostgresStore("postgresql://user@host:5432/db?schema=antifraud")` keeps four tables in the schema the
URL names (`schema`, a parameter of this store that is removed before connecting; `antifraud` when
absent), created when missing:

- `decisions`: one row per transaction (`transaction_id` primary key), the columns analysts and the
  searches filter on (times, verdict, scores, versions, amount, currency, the entity fields) and the
  decision as it was logged in `record` (type `json`, which keeps the logged text verbatim: the same
  keys in the same order and every double's digits, where `jsonb` would reorder keys);
- `contributions`: a flagged decision's model contributions, one row per transaction
  (`transaction_id` primary key), logged after its answer as a second record of the transaction: the
  payment's time (for retention), the model version and `record`. Every read of a decision LEFT JOINs
  them and merges them into its `reasons.model` (`with_contributions`);
- `feedback`: one row per feedback event, keyed by the transaction and the stream entry it came from
  (`(transaction_id, stream_id)`: stream entry ids are per Redis, so two hosts' streams can hold the
  same id), with its fields and `record`;
- `audit`: one row per action of a console user (engine/audit.py), keyed by its stream entry and time
  (`(stream_id, at)`), with its fields, `detail` and `record`.

Writes are one transaction of `INSERT ... ON CONFLICT DO NOTHING` (idempotent; durable once
committed). Reads use indexes: `(card_id, timestamp)`, `(customer_id, timestamp)`,
`(merchant_id, timestamp)`, `(verdict, timestamp)`, `(timestamp)`, feedback by transaction, and
contributions by payment time (retention), audit records by time.
One connection per store, used by one thread at a time, reopened after the server went away.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql

from antifraud.engine.decision_record import AuditRecord, ContributionsRecord, Decision, FeedbackRecord
from antifraud.engine.store import Audited, AuditQuery, DecisionQuery, Logged, Written, with_contributions
from antifraud.engine.vocabulary import ENTITY_FIELDS

T = TypeVar("T")

DEFAULT_SCHEMA = "antifraud"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# the decision columns beside `record`: (name, SQL type, the Postgres array type its batch is sent as)
_DECISION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("transaction_id", "text"),
    ("stream_id", "text"),
    ("timestamp", "timestamptz"),
    ("decided_at", "timestamptz"),
    ("verdict", "text"),
    ("score", "double precision"),
    ("risk_score", "integer"),
    ("model_version", "text"),
    ("rules_version", "text"),
    ("degraded", "text"),  # null, or what was missing, joined by "; " (as in the Parquet files)
    ("test", "boolean"),
    ("amount", "double precision"),
    ("currency", "text"),
    *((name, "text") for name in ENTITY_FIELDS),
)
_FEEDBACK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("transaction_id", "text"),
    ("stream_id", "text"),
    ("kind", "text"),
    ("label", "text"),
    ("outcome", "text"),
    ("decline_code", "text"),
    ("reported_at", "timestamptz"),
    ("received_at", "timestamptz"),
)
_CONTRIBUTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("transaction_id", "text"),
    ("stream_id", "text"),
    ("timestamp", "timestamptz"),  # the payment's time
    ("model_version", "text"),
)
_AUDIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("stream_id", "text"),
    ("at", "timestamptz"),
    ("actor", "text"),
    ("role", "text"),
    ("action", "text"),
    ("subject", "text"),
    ("ip", "text"),
)
_NOT_NULL = {
    "transaction_id",
    "stream_id",
    "timestamp",
    "decided_at",
    "verdict",
    "kind",
    "received_at",
    "at",
    "action",
}
# the order of a transaction's feedback: received time, then the stream entry ("<ms>-<seq>") as numbers
_STREAM_ORDER = (
    "received_at, "
    "case when stream_id ~ '^[0-9]+-[0-9]+$' then split_part(stream_id, '-', 1)::numeric end, "
    "case when stream_id ~ '^[0-9]+-[0-9]+$' then split_part(stream_id, '-', 2)::numeric end, "
    "stream_id"
)


def _dumps(record: Decision | FeedbackRecord | ContributionsRecord | AuditRecord) -> str:
    # as engine/decisions.py logs it: NaN becomes null, numpy values are written as numbers
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def split_url(url: str) -> tuple[str, str]:
    """The connection URL without the store's `schema` parameter, and the schema it names."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _IDENTIFIER.match(schema):
        raise ValueError(f"schema {schema!r}: letters, digits and _ only, not starting with a digit")
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _degraded(decision: Decision) -> str | None:
    value = decision.get("degraded")
    return "; ".join(map(str, value)) if value else None


def _aware(moment: datetime) -> datetime:
    """A time in UTC (a naive time is taken as UTC)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _decision(record: str, contributions: str | None) -> Decision:
    """A decision read back with `d.record` and its LEFT JOINed `c.record` (see `_DECISIONS_FROM`)."""
    found = cast(ContributionsRecord, orjson.loads(contributions)) if contributions is not None else None
    return with_contributions(cast(Decision, orjson.loads(record)), found)


class PostgresStore:
    """Decisions, contributions and feedback in three PostgreSQL tables (see the module's doc)."""

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.errors: tuple[type[Exception], ...] = (psycopg.Error, OSError)
        self._conninfo, self.schema = split_url(url)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()

    # --- the connection ----------------------------------------------------------------------------

    def _table(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(name))

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        """The open connection; a new one (and the tables, if missing) after none or a broken one."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        # autocommit: each piece of work is one explicit transaction (`_run`), never an implicit one left open
        conn = psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
        )
        try:
            self._create(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _run(self, work: Callable[[psycopg.Connection[tuple[object, ...]]], T]) -> T:
        """`work` in one transaction on the store's connection, one thread at a time.

        A connection the server dropped (a restart, a failover, an idle timeout) is found broken
        only when used: the work is then run once more on a new connection. Safe for every piece of
        work here: reads, and writes that are idempotent (a batch committed just before the drop adds
        nothing the second time)."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    with conn.transaction():
                        return work(conn)
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.broken:
                        raise
            raise AssertionError("unreachable")

    def _create(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """The schema, tables and indexes, when missing. Under an advisory lock: concurrent `CREATE ...
        IF NOT EXISTS` of the same table by two hosts can fail on the catalog's unique index."""

        def columns(spec: tuple[tuple[str, str], ...]) -> sql.Composed:
            return sql.SQL(", ").join(
                sql.SQL("{} {}{}").format(
                    sql.Identifier(name), sql.SQL(kind), sql.SQL(" not null" if name in _NOT_NULL else "")
                )
                for name, kind in spec
            )

        decisions, feedback = self._table("decisions"), self._table("feedback")
        contributions, audit = self._table("contributions"), self._table("audit")
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [f"antifraud.store.{self.schema}"])
            conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(self.schema)))
            conn.execute(
                sql.SQL(
                    "create table if not exists {} ({}, record json not null, primary key (transaction_id))"
                ).format(decisions, columns(_DECISION_COLUMNS))
            )
            conn.execute(
                sql.SQL(
                    "create table if not exists {} "
                    "({}, record json not null, primary key (transaction_id, stream_id))"
                ).format(feedback, columns(_FEEDBACK_COLUMNS))
            )
            conn.execute(
                sql.SQL(
                    "create table if not exists {} ({}, record json not null, primary key (transaction_id))"
                ).format(contributions, columns(_CONTRIBUTION_COLUMNS))
            )
            conn.execute(
                sql.SQL(
                    "create table if not exists {} ({}, record json not null, primary key (stream_id, at))"
                ).format(audit, columns(_AUDIT_COLUMNS))
            )
            for table, name, keys in (
                (decisions, "decisions_card", ("card_id", "timestamp")),
                (decisions, "decisions_customer", ("customer_id", "timestamp")),
                (decisions, "decisions_merchant", ("merchant_id", "timestamp")),
                (decisions, "decisions_verdict", ("verdict", "timestamp")),
                (decisions, "decisions_timestamp", ("timestamp",)),
                (feedback, "feedback_received", ("received_at",)),
                (contributions, "contributions_timestamp", ("timestamp",)),
                (audit, "audit_at", ("at",)),
            ):
                conn.execute(
                    sql.SQL("create index if not exists {} on {} ({})").format(
                        sql.Identifier(name), table, sql.SQL(", ").join(map(sql.Identifier, keys))
                    )
                )

    # --- writing -----------------------------------------------------------------------------------

    def write(
        self,
        decisions: Sequence[Logged],
        feedback: Sequence[Logged],
        contributions: Sequence[Logged] = (),
        audit: Sequence[Logged] = (),
    ) -> Written:
        """Add a batch in one transaction; records already stored or repeated in the batch are skipped
        (the first kept). Durable on return (committed)."""
        decision_rows: dict[str, list[object]] = {}
        for item in decisions:
            d = cast(Decision, item.record)
            payment = d.get("payment") or {}
            decision_rows.setdefault(
                d["transaction_id"],
                [
                    d["transaction_id"],
                    item.stream_id,
                    d["timestamp"],
                    d["decided_at"],
                    d["verdict"],
                    d.get("score"),
                    d.get("risk_score"),
                    d.get("model_version"),
                    d.get("rules_version"),
                    _degraded(d),
                    bool(d.get("test", False)),
                    d.get("amount"),
                    d.get("currency"),
                    *(payment.get(name) for name in ENTITY_FIELDS),
                    _dumps(d),
                ],
            )
        feedback_rows: dict[tuple[str, str], list[object]] = {}
        for item in feedback:
            f = cast(FeedbackRecord, item.record)
            feedback_rows.setdefault(
                (f["transaction_id"], item.stream_id),
                [
                    f["transaction_id"],
                    item.stream_id,
                    f["kind"],
                    f.get("label"),
                    f.get("outcome"),
                    f.get("decline_code"),
                    f.get("reported_at"),
                    f["received_at"],
                    _dumps(f),
                ],
            )

        contribution_rows: dict[str, list[object]] = {}
        for item in contributions:
            c = cast(ContributionsRecord, item.record)
            contribution_rows.setdefault(
                c["transaction_id"],
                [c["transaction_id"], item.stream_id, c["timestamp"], c.get("model_version"), _dumps(c)],
            )

        audit_rows: dict[tuple[str, str], list[object]] = {}
        for item in audit:
            a = cast(AuditRecord, item.record)
            audit_rows.setdefault(
                (item.stream_id, a["at"]),
                [
                    item.stream_id,
                    a["at"],
                    a["actor"],
                    a["role"],
                    a["action"],
                    a["subject"],
                    a["ip"],
                    _dumps(a),
                ],
            )

        def insert(conn: psycopg.Connection[tuple[object, ...]]) -> Written:
            return Written(
                self._insert(conn, "decisions", _DECISION_COLUMNS, list(decision_rows.values())),
                self._insert(conn, "feedback", _FEEDBACK_COLUMNS, list(feedback_rows.values())),
                self._insert(conn, "contributions", _CONTRIBUTION_COLUMNS, list(contribution_rows.values())),
                self._insert(conn, "audit", _AUDIT_COLUMNS, list(audit_rows.values())),
            )

        return self._run(insert)

    def _insert(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        name: str,
        spec: tuple[tuple[str, str], ...],
        rows: list[list[object]],
    ) -> int:
        """Rows inserted in one statement (one array per column, unnested); returns how many were new."""
        if not rows:
            return 0
        names = [column for column, _ in spec] + ["record"]
        kinds = [kind for _, kind in spec] + ["json"]
        statement = sql.SQL("insert into {} ({}) select * from unnest({}) on conflict do nothing").format(
            self._table(name),
            sql.SQL(", ").join(map(sql.Identifier, names)),
            # json arrays are sent as text: the logged text is kept verbatim
            sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(kind)) for kind in kinds),
        )
        arrays = [list(column) for column in zip(*rows, strict=True)]
        cursor = conn.execute(statement, arrays)
        return max(cursor.rowcount, 0)

    # --- reading -----------------------------------------------------------------------------------

    def _records(self, query: sql.Composed, params: Sequence[object]) -> list[str]:
        return [cast(str, row[0]) for row in self._rows(query, params)]

    def _rows(self, query: sql.Composed, params: Sequence[object]) -> list[tuple[object, ...]]:
        def fetch(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
            return conn.execute(query, params).fetchall()

        return self._run(fetch)

    def _decisions_from(self) -> sql.Composed:
        """The decisions `d`, each with its contributions `c` (or nulls): what every read of a decision
        selects from (`d.record::text, c.record::text`, given to `_decision`)."""
        return sql.SQL("{} as d left join {} as c on c.transaction_id = d.transaction_id").format(
            self._table("decisions"), self._table("contributions")
        )

    def decision(self, transaction_id: str, timestamp: datetime | None = None) -> Decision | None:
        """The stored decision, as it was logged with its contributions merged, or None. With the
        payment's `timestamp`, only a decision of that UTC day is found (as the Parquet store, which
        reads only that day's partition; here the primary key finds it either way)."""
        clauses: list[sql.Composable] = [sql.SQL("d.transaction_id = %s")]
        params: list[object] = [transaction_id]
        if timestamp is not None:
            day = datetime.combine(_aware(timestamp).date(), time(0), tzinfo=UTC)
            clauses.append(sql.SQL('d."timestamp" >= %s and d."timestamp" < %s'))
            params += [day, day + timedelta(days=1)]
        rows = self._rows(
            sql.SQL("select d.record::text, c.record::text from {} where {}").format(
                self._decisions_from(), sql.SQL(" and ").join(clauses)
            ),
            params,
        )
        return _decision(cast(str, rows[0][0]), cast(str | None, rows[0][1])) if rows else None

    def feedback_for(self, transaction_id: str) -> list[FeedbackRecord]:
        """The feedback events about a transaction, in the order they were received (by received time,
        then by stream entry)."""
        rows = self._records(
            sql.SQL("select record::text from {} where transaction_id = %s order by " + _STREAM_ORDER).format(
                self._table("feedback")
            ),
            [transaction_id],
        )
        return [cast(FeedbackRecord, orjson.loads(row)) for row in rows]

    def search(self, query: DecisionQuery) -> list[Decision]:
        """Decisions matching `query`, newest payment first, at most `query.limit`."""
        clauses: list[sql.Composable] = [sql.SQL("true")]
        params: list[object] = []
        for column in ("card_id", "customer_id", "merchant_id", "verdict"):
            value = getattr(query, column)
            if value is not None:
                clauses.append(sql.SQL("d.{} = %s").format(sql.Identifier(column)))
                params.append(str(value))
        if query.start is not None:
            clauses.append(sql.SQL('d."timestamp" >= %s'))
            params.append(_aware(query.start))
        if query.end is not None:
            clauses.append(sql.SQL('d."timestamp" < %s'))
            params.append(_aware(query.end))
        params.append(query.limit)
        statement = sql.SQL(
            "select d.record::text, c.record::text from {} where {} "
            'order by d."timestamp" desc, d.transaction_id desc limit %s'
        ).format(self._decisions_from(), sql.SQL(" and ").join(clauses))
        rows = self._rows(statement, params)
        return [_decision(cast(str, record), cast(str | None, extra)) for record, extra in rows]

    def audit(self, query: AuditQuery) -> list[Audited]:
        """Audit records matching `query`, newest first (time, then stream entry), at most `query.limit`."""
        clauses: list[sql.Composable] = [sql.SQL("true")]
        params: list[object] = []
        for column in ("actor", "action", "subject"):
            value = getattr(query, column)
            if value is not None:
                clauses.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if query.start is not None:
            clauses.append(sql.SQL('"at" >= %s'))
            params.append(_aware(query.start))
        if query.end is not None:
            clauses.append(sql.SQL('"at" < %s'))
            params.append(_aware(query.end))
        params.append(query.limit)
        order = (
            '"at" desc, '
            "case when stream_id ~ '^[0-9]+-[0-9]+$' then split_part(stream_id, '-', 1)::numeric end desc, "
            "case when stream_id ~ '^[0-9]+-[0-9]+$' then split_part(stream_id, '-', 2)::numeric end desc, "
            "stream_id desc"
        )
        rows = self._rows(
            sql.SQL("select stream_id, record::text from {} where {} order by " + order + " limit %s").format(
                self._table("audit"), sql.SQL(" and ").join(clauses)
            ),
            params,
        )
        return [Audited(cast(str, i), cast(AuditRecord, orjson.loads(cast(str, r)))) for i, r in rows]

    # --- retention ---------------------------------------------------------------------------------

    def apply_retention(self, before: datetime) -> int:
        """Delete the decisions and contributions of payments, the feedback received and the audit
        records made before the UTC day of `before`
        (day granularity, as the Parquet store: records of `before`'s own day are kept). Returns how
        many records were deleted."""
        cutoff = datetime.combine(_aware(before).date(), time(0), tzinfo=UTC)

        def delete(conn: psycopg.Connection[tuple[object, ...]]) -> int:
            deleted = 0
            for name, column in (
                ("decisions", "timestamp"),
                ("contributions", "timestamp"),
                ("feedback", "received_at"),
                ("audit", "at"),
            ):
                cursor = conn.execute(
                    sql.SQL("delete from {} where {} < %s").format(self._table(name), sql.Identifier(column)),
                    [cutoff],
                )
                deleted += max(cursor.rowcount, 0)
            return deleted

        return self._run(delete)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- reading everything in order (export-decisions) ------------------------------------------------

    def iter_decisions(
        self, start: datetime | None = None, end: datetime | None = None, batch: int = 5000
    ) -> Iterator[list[Decision]]:
        """Every decision of a payment time in [start, end), as logged with its contributions merged
        (LEFT JOINed), `batch` at a time, in payment time order then transaction id: one query on a
        server-side cursor (the server holds the result, `batch` rows cross the network at a time), on
        a connection of its own so that the store's other reads are not held up meanwhile."""
        for rows in self._iter_records(
            self._decisions_from(),
            "d.record::text, c.record::text",
            'd."timestamp"',
            'd."timestamp", d.transaction_id',
            start,
            end,
            batch,
        ):
            yield [_decision(cast(str, record), cast(str | None, extra)) for record, extra in rows]

    def iter_feedback(
        self, start: datetime | None = None, end: datetime | None = None, batch: int = 5000
    ) -> Iterator[list[FeedbackRecord]]:
        """Every feedback event received in [start, end), as logged, `batch` at a time, in the order
        received (received time, then stream entry), as `iter_decisions` reads."""
        order = _STREAM_ORDER + ", transaction_id"
        for rows in self._iter_records(
            self._table("feedback"), "record::text", "received_at", order, start, end, batch
        ):
            yield [cast(FeedbackRecord, orjson.loads(cast(str, row[0]))) for row in rows]

    def _iter_records(
        self,
        source: sql.Composable,
        columns: str,
        column: str,
        order: str,
        start: datetime | None,
        end: datetime | None,
        batch: int,
    ) -> Iterator[list[tuple[object, ...]]]:
        """The `columns` of the rows of `source` (a FROM clause) with `column` in [start, end), in
        `order` (`columns`, `column` and `order`: fixed SQL of the callers)."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self._run(lambda conn: None)  # the tables, if missing: a new store iterates as empty
        clauses: list[sql.Composable] = [sql.SQL("true")]
        params: list[object] = []
        if start is not None:
            clauses.append(sql.SQL(column + " >= %s"))
            params.append(_aware(start))
        if end is not None:
            clauses.append(sql.SQL(column + " < %s"))
            params.append(_aware(end))
        statement = sql.SQL("select " + columns + " from {} where {} order by " + order).format(
            source, sql.SQL(" and ").join(clauses)
        )
        # not autocommit: a server-side cursor lives in a transaction (one snapshot for the whole read)
        with psycopg.connect(self._conninfo, connect_timeout=max(1, round(self._connect_timeout))) as conn:
            with conn.cursor(name="antifraud_iter") as cursor:
                cursor.itersize = batch
                cursor.execute(statement, params)
                while rows := cursor.fetchmany(batch):
                    yield rows
            conn.rollback()  # read only: nothing to commit
