"""History files: read and write payment histories in the canonical schema.

Why one module of about 700 lines: every column's cleaning rule, its check and its error message
(naming file, column, row and value) belong together, and the writer must round-trip exactly what
the reader accepts; split by column kind, the parts would import each other.

A history file is CSV (``.csv``), gzipped CSV (``.csv.gz``) or Parquet (``.parquet``) with one
payment per row: the transaction columns of ``antifraud.engine.schema`` plus, optionally, the history
columns (label, bank outcome, refund, cancellation, each with the time it became known). A
Parquet dataset, a folder of ``.parquet`` files, is read as one file: its files in name order
(``dataset_files``), rows in file order.

``load_history`` returns a frame with these conventions, whatever the file's format:

* columns: ``TRANSACTION_COLUMNS`` in schema order (missing optional ones added, all missing),
  then ``HISTORY_COLUMNS`` (``label`` only when the file has one), then the file's extra
  columns (e.g. ``fraud_pattern``) unchanged: from a CSV they are strings, an empty cell is ``""``;
* strings: ``object`` dtype holding ``str``, missing as ``None``; surrounding blanks are stripped
  and an empty string counts as missing. Country and currency codes are upper-cased, ``email``,
  ``channel`` and ``bank_outcome`` lower-cased;
* timestamps: ``datetime64[ns, UTC]``, missing as ``NaT``. Text is read as ISO 8601 / RFC 3339; a
  timestamp without an offset is taken as UTC (exports often drop the ``Z``);
* ``amount``: ``float64``; ``label``: ``int8`` (0/1); ``card_on_file``/``authenticated``: pandas
  nullable ``boolean`` (``true/false``, ``1/0``, ``yes/no``, ``t/f``, ``y/n`` in text);
* ``currency`` may be absent: missing currencies become ``"XXX"`` (ISO 4217 "no currency"), so
  amounts of an unknown currency stay apart from real ones instead of being guessed;
* ``label_time`` defaults to ``timestamp + label_delay`` where missing, when the file has a
  ``label`` (for a legitimate payment: the time by which a chargeback would have come); the delay
  is ``DEFAULT_LABEL_DELAY`` (30 days) unless given. ``frame.attrs`` records it: ``label_delay``
  (a ``pandas.Timedelta``), ``label_delay_given`` (bool) and ``label_time_defaulted`` (how many
  fraud rows had no ``label_time`` and got the delay: a wrong delay skews every label-based feature);
  ``outcome_time`` defaults to ``timestamp`` where ``bank_outcome`` is known;
* a ``pan`` column (raw card numbers) is tokenized into ``card_id`` with the keyed hash of
  ``antifraud.engine.schema.tokenize_pan`` (``card_bin`` keeps the first six digits) and dropped at once;
* rows are stably sorted by ``timestamp`` (file order breaks ties), with a fresh ``RangeIndex``.

A file that cannot be used raises ``HistoryError`` naming the file, the column and, for a bad
value, the first offending data row (1-based, header not counted, in file order) and the value.

``write_history`` writes the same formats; timestamps are stored at millisecond precision (in CSV
as ``2026-01-31T12:00:00.123Z``), Parquet with zstd compression.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from antifraud.engine.schema import HISTORY_COLUMNS, REQUIRED_COLUMNS, TRANSACTION_COLUMNS, tokenize_pan

__all__ = ["DEFAULT_LABEL_DELAY", "HistoryError", "load_column_map", "load_history", "write_history"]

PathLike = str | os.PathLike[str]

NO_CURRENCY = "XXX"  # ISO 4217: "no currency involved"
# When a label became known, for rows whose file does not say: card chargebacks mostly arrive within
# a month. Label-based features depend on it, so a file without `label_time` should say its delay.
DEFAULT_LABEL_DELAY = timedelta(days=30)
TIME_COLUMNS = ("timestamp", "label_time", "outcome_time", "refund_time", "cancel_time")
BOOL_COLUMNS = ("card_on_file", "authenticated")
# Canonical names a column map may target; `pan` is accepted on the way in, never kept.
CANONICAL_COLUMNS: tuple[str, ...] = (*TRANSACTION_COLUMNS, *HISTORY_COLUMNS, "pan")

_MAX_AMOUNT = 1e9  # engine.schema.Transaction.amount's bound
_TRUE = frozenset({"true", "t", "1", "yes", "y"})
_FALSE = frozenset({"false", "f", "0", "no", "n"})
# Text must look like a date before pandas sees it: pandas reads "now" and "today" as the clock.
_LOOKS_LIKE_DATE = r"\d{4}-\d{2}-\d{2}"
_DECIMAL = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TIME = "an RFC 3339 timestamp"
# Errors pandas and pyarrow raise on unreadable input: a zoo of types, all meaning "not a usable file".
_READ_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError, zlib.error, pa.ArrowException)


class HistoryError(ValueError):
    """A history file that cannot be used; the message names the file, the column and the row."""


class _Rule:
    """How a text column is cleaned and checked (mirrors the constraints of ``Transaction``)."""

    def __init__(
        self,
        case: str = "",
        pattern: str = "",
        max_len: int = 0,
        choices: tuple[str, ...] = (),
        what: str = "",
    ) -> None:
        self.case, self.pattern, self.max_len, self.choices = case, pattern, max_len, choices
        self.what = what or (f"one of {', '.join(choices)}" if choices else f"at most {max_len} characters")


_IDENTIFIER = _Rule(max_len=128)
_COUNTRY = _Rule(case="upper", pattern=r"[A-Z]{2}", what="a 2-letter ISO country code")
_TEXT_RULES: dict[str, _Rule] = {
    "transaction_id": _IDENTIFIER,
    "card_id": _IDENTIFIER,
    "merchant_id": _IDENTIFIER,
    "currency": _Rule(case="upper", pattern=r"[A-Z]{3}", what="a 3-letter ISO currency code"),
    "customer_id": _IDENTIFIER,
    "email": _Rule(case="lower", max_len=254),
    "ip": _Rule(max_len=64),
    "device_id": _IDENTIFIER,
    "card_bin": _Rule(pattern=r"[0-9]{6,8}", what="a BIN of 6 to 8 digits"),
    "card_country": _COUNTRY,
    "ip_country": _COUNTRY,
    "billing_country": _COUNTRY,
    "shipping_country": _COUNTRY,
    "mcc": _Rule(pattern=r"[0-9]{4}", what="a 4-digit merchant category code"),
    "channel": _Rule(case="lower", choices=("ecom", "pos", "moto")),
    "payment_method": _Rule(max_len=32),
    "terminal_id": _IDENTIFIER,
    "bank_outcome": _Rule(case="lower", choices=("approved", "declined")),
    "decline_code": _Rule(max_len=32),
}


# --------------------------------------------------------------------------------------------- loading


def load_history(
    path: PathLike,
    columns: Mapping[str, str] | None = None,
    label_delay: timedelta | None = None,
) -> pd.DataFrame:
    """Read a CSV, CSV.gz or Parquet history and normalise it to the canonical schema.

    ``columns`` maps canonical names to the file's own column names (e.g. ``{"card_id":
    "CUSTOMER_ID"}``); a mapped file column is renamed, not copied, and a file column already
    bearing a mapped canonical name is dropped in favour of the mapping. ``label_delay`` is the
    time for a label to become known where ``label_time`` is missing (None: ``DEFAULT_LABEL_DELAY``).
    See the module docstring for the conventions, and for what ``frame.attrs`` records.
    Raises ``HistoryError`` on anything unusable (never a raw pandas or pyarrow error).
    """
    path = Path(path)
    raw = _read(path)
    if columns:
        raw = _apply_column_map(raw, _checked_column_map(columns, "the column map"), path)
    return _normalize(raw, path, label_delay)


def load_column_map(path: PathLike) -> dict[str, str]:
    """Read a column map from YAML: one ``canonical_name: file_column_name`` pair per line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError) as exc:
        raise HistoryError(f"{path}: cannot read the column map: {_short(exc)}") from exc
    if not isinstance(data, dict):
        raise HistoryError(f"{path}: a column map is a YAML mapping such as `card_id: CUSTOMER_ID`")
    return _checked_column_map(data, str(path))


def _checked_column_map(columns: Mapping[Any, Any], source: str) -> dict[str, str]:
    unknown = [k for k in columns if k not in CANONICAL_COLUMNS]
    if unknown:
        problems = []
        for key in unknown:
            value = columns[key]
            if isinstance(value, str) and value.strip() in CANONICAL_COLUMNS:
                hint = f" (reversed? a line reads `{value.strip()}: {key}`, canonical name first)"
            else:
                hint = _did_you_mean(str(key), CANONICAL_COLUMNS)
            problems.append(f"{_show(key)} is not a canonical column{hint}")
        raise HistoryError(
            f"{source}: {'; '.join(problems)}; the known ones are: {', '.join(CANONICAL_COLUMNS)}"
        )
    for key, value in columns.items():
        if not isinstance(value, str) or not value.strip():
            raise HistoryError(
                f"{source}: the file column for {key!r} must be a column name, got {_show(value)}"
            )
    return {str(k): str(v).strip() for k, v in columns.items()}


def _format_of(path: Path) -> str:
    if path.is_dir():
        return "parquet"  # a Parquet dataset: a folder of .parquet files (`dataset_files`)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise HistoryError(f"{path}: unknown history format; use .csv, .csv.gz or .parquet")


def _read(path: Path) -> pd.DataFrame:
    """The file's table as read, in file order, with stripped column names and a RangeIndex."""
    fmt = _format_of(path)
    if not path.exists():
        raise HistoryError(f"{path}: no such file")
    if path.is_dir():
        if not dataset_files(path):
            raise HistoryError(f"{path}: a folder without .parquet files (a dataset is a folder of them)")
    elif not path.is_file():
        raise HistoryError(f"{path}: not a file (a history is one .csv, .csv.gz or .parquet file)")
    elif path.stat().st_size == 0:
        raise HistoryError(f"{path}: the file is empty")
    try:
        frame = _read_parquet(path) if fmt == "parquet" else _read_csv(path)
    except HistoryError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise HistoryError(f"{path}: the file is empty (no header line)") from exc
    except UnicodeError as exc:
        raise HistoryError(f"{path}: not UTF-8 text, or not a CSV file ({_short(exc)})") from exc
    except _READ_ERRORS as exc:
        raise HistoryError(f"{path}: cannot read it as {fmt.upper()}: {_short(exc)}") from exc
    names = [str(c).strip() for c in frame.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HistoryError(f"{path}: column {_show(dupes[0])} appears more than once in the header")
    frame.columns = pd.Index(names)
    if len(frame) == 0:
        raise HistoryError(f"{path}: no data rows (columns found: {_list(names)})")
    return frame.reset_index(drop=True)


def _read_csv(path: Path) -> pd.DataFrame:
    # Everything is read as text and parsed here, so that a bad value can be reported with its
    # row. na_filter=False: pandas would otherwise turn "NA" (Namibia) or "null" into missing.
    options: dict[str, Any] = {"dtype": str, "na_filter": False, "encoding": "utf-8-sig"}
    header = pd.read_csv(path, header=None, nrows=1, **options)
    # pandas renames a repeated header name to "name.1": look at the raw header to refuse it.
    names = [str(v).strip() for v in header.iloc[0].tolist()] if len(header) else []
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HistoryError(f"{path}: column {_show(dupes[0])} appears more than once in the header")
    with warnings.catch_warnings():
        # index_col=False: a first row longer than the header would silently become the index;
        # pandas only warns that it drops the extra field, which here is an error.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(path, index_col=False, **options)
        except pd.errors.ParserWarning:
            row = _first_long_row(path, len(names))
            raise HistoryError(
                f"{path}: row {row} has more fields than the header's {len(names)} "
                "(a comma inside a value must be quoted)"
            ) from None


def _first_long_row(path: Path, width: int) -> int:
    """The 1-based data row with more than ``width`` fields (0 if none is found)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        for row, fields in enumerate(csv.reader(handle)):
            if row and len(fields) > width:
                return row
    return 0


def dataset_files(path: Path) -> list[Path]:
    """The files of a history: the file itself, or a Parquet dataset's .parquet files (recursively)
    in name order, which is their stream order (name them so, e.g. part-00000.parquet)."""
    if not path.is_dir():
        return [path]
    return sorted((p for p in path.rglob("*") if p.is_file() and _is_parquet(p)), key=lambda p: str(p))


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith((".parquet", ".pq"))


def _read_parquet(path: Path) -> pd.DataFrame:
    if path.is_dir():
        tables = [pq.read_table(p) for p in dataset_files(path)]
        return pa.concat_tables(tables, promote_options="default").to_pandas()
    return pq.read_table(path).to_pandas()


def _apply_column_map(frame: pd.DataFrame, columns: dict[str, str], path: Path) -> pd.DataFrame:
    absent = [(canon, src) for canon, src in columns.items() if src not in frame.columns]
    if absent:
        found = [str(c) for c in frame.columns]
        reads = "; ".join(
            f"{canon!r} from column {_show(src)}{_did_you_mean(src, found)}" for canon, src in absent
        )
        raise HistoryError(
            f"{path}: the column map reads {reads}, which the file does not have "
            f"(columns found: {_list(frame.columns)})"
        )
    sources = set(columns.values())
    kept = {name: frame[name] for name in frame.columns if name not in sources and name not in columns}
    return pd.DataFrame({**kept, **{canon: frame[src] for canon, src in columns.items()}})


# --------------------------------------------------------------------------------------- normalising


def _normalize(raw: pd.DataFrame, path: Path, label_delay: timedelta | None) -> pd.DataFrame:
    """The canonical frame from the file's columns (see the module docstring), or HistoryError."""
    _require_columns(raw, path)
    n = len(raw)
    out: dict[str, Any] = {}
    for name in (*TRANSACTION_COLUMNS, *HISTORY_COLUMNS):
        present = name in raw.columns
        if name == "label":
            if present:
                out[name] = _labels(raw[name], path)
        elif name in TIME_COLUMNS:
            out[name] = _timestamps(raw[name], name, path) if present else _no_times(n)
        elif name in BOOL_COLUMNS:
            out[name] = _booleans(raw[name], name, path) if present else _no_booleans(n)
        elif name == "amount":
            out[name] = _amounts(raw[name], path)
        else:
            out[name] = _texts(raw[name], name, path) if present else np.full(n, None, dtype=object)
    if "pan" in raw.columns:
        _tokenize_pans(raw["pan"], out, path)
    out["currency"][pd.isna(out["currency"])] = NO_CURRENCY
    for name in ("transaction_id", "timestamp", "card_id", "merchant_id"):
        _require_values(out[name], name, path)
    _refuse_duplicate_ids(out["transaction_id"], path)
    delay = pd.Timedelta(DEFAULT_LABEL_DELAY if label_delay is None else label_delay)
    if delay <= pd.Timedelta(0):
        raise HistoryError(f"{path}: the label delay must be positive, got {delay}")
    defaulted = _apply_time_defaults(out, delay)
    for name in raw.columns:
        if name not in out and name != "pan":
            out[name] = raw[name]
    frame = _sorted(pd.DataFrame(out))
    frame.attrs.update(
        label_delay=delay, label_delay_given=label_delay is not None, label_time_defaulted=defaulted
    )
    return frame


def _require_columns(raw: pd.DataFrame, path: Path) -> None:
    """Raise one HistoryError naming every missing required column, with a guess for each."""
    found = [str(c) for c in raw.columns]
    needed = [c for c in REQUIRED_COLUMNS if c != "currency"]  # currency has a default, see above
    if "pan" in found:
        needed.remove("card_id")  # tokenized from the pan
    missing = [c for c in needed if c not in found]
    if not missing:
        return
    guesses = {c: _closest(c, [f for f in found if f not in CANONICAL_COLUMNS]) for c in missing}
    example = next(((c, g) for c, g in guesses.items() if g), (missing[0], "MY_NAME"))
    hint = (
        "if the file names them differently, map them with --columns "
        f"(a YAML file with one line per column, such as `{example[0]}: {example[1]}`)"
    )
    if len(raw.columns) == 1:
        header = str(raw.columns[0])
        for sep, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in header:
                hint = f"the header looks {label}-separated: history CSV files must be comma-separated"
    named = ", ".join(f"{c!r}" + (f" (did you mean {guesses[c]!r}?)" if guesses[c] else "") for c in missing)
    what = "column" if len(missing) == 1 else "columns"
    raise HistoryError(f"{path}: missing required {what} {named} (columns found: {_list(found)}); {hint}")


def _closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most like `name`, ignoring case and `_`/`-`/blanks, or None when none is close."""

    def key(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    keyed = {key(c): c for c in reversed(candidates)}  # first candidate wins on equal keys
    match = difflib.get_close_matches(key(name), list(keyed), n=1, cutoff=0.75)
    return keyed[match[0]] if match else None


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    guess = _closest(name, list(candidates))
    return f" (did you mean {guess!r}?)" if guess else ""


def _texts(column: pd.Series, name: str, path: Path) -> np.ndarray:
    """A text column as an object array of str, missing as None, cleaned and checked by its rule."""
    codes, values = _distinct_text(column, name, path)
    rule = _TEXT_RULES[name]
    if rule.case == "upper":
        values = values.str.upper()
    elif rule.case == "lower":
        values = values.str.lower()
    empty = (values == "").to_numpy()
    if rule.choices:
        bad = ~values.isin(rule.choices).to_numpy()
    elif rule.pattern:
        bad = ~values.str.fullmatch(rule.pattern).to_numpy(dtype=bool)
    else:
        bad = (values.str.len() > rule.max_len).to_numpy()
    _raise_first_bad(column, codes, bad & ~empty, name, path, f"is not {rule.what}")
    cleaned = values.to_numpy(dtype=object)
    cleaned[empty] = None
    return _then_none(cleaned)[codes]  # code -1 (missing) picks the trailing None


def _timestamps(column: pd.Series, name: str, path: Path) -> pd.Series:
    """A time column as datetime64[ns, UTC]; text is RFC 3339 / ISO 8601, naive values are UTC."""
    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        parsed = column.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(dtype):
        parsed = column.dt.tz_localize("UTC")
    elif pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        present = column.notna().to_numpy()
        if present.any():
            _raise_at(column, int(present.argmax()), name, path, "is a number, not " + _TIME)
        return _no_times(len(column))
    else:
        codes, text = _distinct_text(column, name, path)
        distinct = _parse_iso8601(text)
        bad = (text != "").to_numpy() & distinct.isna().to_numpy()
        _raise_first_bad(column, codes, bad, name, path, "is not " + _TIME)
        parsed = pd.Series(_then_nat(distinct.array)[codes], index=column.index).dt.tz_localize("UTC")
    try:
        return parsed.dt.as_unit("ns")
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        # Parquet may hold dates that nanoseconds cannot (beyond 1677-2262): name the first.
        bounds = (pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC"))
        out = ((parsed < bounds[0]) | (parsed > bounds[1])).to_numpy(dtype=bool)
        _raise_at(column, int(out.argmax()), name, path, "is out of the supported range (1677-2262)")
        raise


def _parse_iso8601(text: pd.Series) -> pd.Series:
    """Parse stripped text as ISO 8601 to UTC; NaT where it is not a timestamp."""
    text = text.str.upper()  # RFC 3339 allows a lower-case t and z, pandas does not
    dated = text.str.match(_LOOKS_LIKE_DATE).to_numpy(dtype=bool)
    # After the date, a Z or a sign can only be the UTC offset.
    aware = text.str.slice(10).str.contains(r"[Z+-]", regex=True).to_numpy(dtype=bool)
    parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    # Naive and offset-bearing values are parsed apart: in one call pandas 2.3 applies the offset
    # of an earlier value to a later naive one, silently shifting it.
    for part in (dated & aware, dated & ~aware):
        if part.any():
            parsed[part] = pd.to_datetime(text[part], utc=True, format="ISO8601", errors="coerce")
    return parsed


def _amounts(column: pd.Series, path: Path) -> np.ndarray:
    values = _numbers(column, "amount", path)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0) | (values > _MAX_AMOUNT)
    if bad.any():
        row = int(bad.argmax())
        value = values[row]
        if _is_blank(column.iloc[row]):
            raise HistoryError(f"{path}: column 'amount', row {row + 1}: value is missing (required)")
        what = (
            "is not a number"
            if not np.isfinite(value)
            else "is negative"
            if value < 0
            else f"is above {_MAX_AMOUNT:g}"
        )
        _raise_at(column, row, "amount", path, what)
    return values


def _labels(column: pd.Series, path: Path) -> np.ndarray:
    values = _numbers(column, "label", path)
    bad = ~np.isin(values, (0.0, 1.0))  # NaN is not in the set: a missing label is an error too
    if bad.any():
        row = int(bad.argmax())
        if _is_blank(column.iloc[row]):
            raise HistoryError(
                f"{path}: column 'label', row {row + 1}: value is missing (0 or 1 on every row)"
            )
        _raise_at(column, row, "label", path, "is not 0 or 1")
    return values.astype(np.int8)


def _numbers(column: pd.Series, name: str, path: Path) -> np.ndarray:
    """Numbers as float64, NaN where missing or not a plain decimal number."""
    if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    codes, text = _distinct_text(column, name, path)
    plain = text.str.fullmatch(_DECIMAL).to_numpy(dtype=bool)
    values = np.full(len(text) + 1, np.nan)  # the last one for missing values (code -1)
    # Python's float() rounds correctly; pandas' own parser can be off by one unit in the last place.
    values[:-1][plain] = [float(v) for v in text[plain]]
    return values[codes]


def _booleans(column: pd.Series, name: str, path: Path) -> pd.api.extensions.ExtensionArray:
    codes, uniques = _factorize(column, name, path)
    n = len(uniques)
    values, missing, bad = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for i, raw in enumerate(uniques):  # few distinct values: a Python loop is fine
        if isinstance(raw, bool | np.bool_):
            values[i] = bool(raw)
            continue
        text = str(raw).strip().lower()
        if text.endswith(".0") and text[:-2] in ("0", "1"):  # 1.0 / 0.0 from a float column
            text = text[:-2]
        values[i], missing[i], bad[i] = text in _TRUE, text == "", text not in _TRUE | _FALSE | {""}
    _raise_first_bad(column, codes, bad, name, path, "is not a boolean (true/false)")
    mask = np.append(missing, True)[codes]
    return pd.arrays.BooleanArray(np.append(values, False)[codes], mask)


def _tokenize_pans(column: pd.Series, out: dict[str, Any], path: Path) -> None:
    """Replace raw card numbers by their keyed token in card_id; the PAN goes no further."""
    codes, digits = _distinct_text(column, "pan", path)
    empty = (digits == "").to_numpy()
    bad = ~digits.str.fullmatch(r"[0-9]{12,19}").to_numpy(dtype=bool) & ~empty
    if bad.any():
        row = int(bad[codes].argmax()) if (codes >= 0).any() else 0
        # Never echo a card number, not even a malformed one, into a message or a log.
        raise HistoryError(f"{path}: column 'pan', row {row + 1}: not a card number of 12-19 digits")
    try:
        tokens = np.array(
            [None if e else tokenize_pan(p) for p, e in zip(digits, empty, strict=True)], dtype=object
        )
    except ValueError as exc:  # the HMAC secret is not configured
        raise HistoryError(f"{path}: column 'pan': {exc}") from exc
    bins = np.array([None if e else p[:6] for p, e in zip(digits, empty, strict=True)], dtype=object)
    token, bin6 = _then_none(tokens)[codes], _then_none(bins)[codes]
    has_pan = pd.notna(token)
    both = has_pan & pd.notna(out["card_id"])
    if both.any():
        raise HistoryError(
            f"{path}: row {int(both.argmax()) + 1} has both a card_id and a pan: send one of them"
        )
    out["card_id"] = np.where(has_pan, token, out["card_id"])
    out["card_bin"] = np.where(pd.isna(out["card_bin"]), bin6, out["card_bin"])


def _require_values(values: Any, name: str, path: Path) -> None:
    missing = np.asarray(pd.isna(values))
    if missing.any():
        raise HistoryError(
            f"{path}: column {name!r}, row {int(missing.argmax()) + 1}: value is missing (required)"
        )


def _refuse_duplicate_ids(ids: np.ndarray, path: Path) -> None:
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        row = int(dup.argmax())
        first = int((ids == ids[row]).argmax())
        raise HistoryError(
            f"{path}: column 'transaction_id', row {row + 1}: duplicate {_show(ids[row])} "
            f"(first at row {first + 1})"
        )


def _apply_time_defaults(out: dict[str, Any], label_delay: pd.Timedelta) -> int:
    """Fill label_time and outcome_time where missing; returns how many frauds got the delay."""
    timestamp = out["timestamp"]
    defaulted = 0
    if "label" in out:
        unknown = out["label_time"].isna()
        defaulted = int((unknown.to_numpy() & (out["label"] == 1)).sum())
        # A legitimate payment has no chargeback time: it is "known legitimate" once the delay passed.
        out["label_time"] = out["label_time"].where(~unknown, timestamp + label_delay)
    answered = pd.notna(out["bank_outcome"]) & out["outcome_time"].isna().to_numpy()
    out["outcome_time"] = out["outcome_time"].where(~answered, timestamp)
    return defaulted


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    timestamp = frame["timestamp"]
    if not timestamp.is_monotonic_increasing:
        frame = frame.iloc[np.argsort(timestamp.to_numpy(dtype="datetime64[ns]"), kind="stable")]
    return frame.reset_index(drop=True)


def _no_times(n: int) -> pd.Series:
    return pd.Series(pd.NaT, index=pd.RangeIndex(n), dtype="datetime64[ns, UTC]")


def _no_booleans(n: int) -> pd.api.extensions.ExtensionArray:
    return pd.arrays.BooleanArray(np.zeros(n, dtype=bool), np.ones(n, dtype=bool))


# ------------------------------------------------------------------------------------------- errors


def _raise_first_bad(
    column: pd.Series, codes: np.ndarray, bad_unique: np.ndarray, name: str, path: Path, what: str
) -> None:
    """Raise for the first row whose distinct value (``codes`` into ``bad_unique``) is bad."""
    if not bad_unique.any():
        return
    bad_rows = np.append(bad_unique, False)[codes]
    _raise_at(column, int(bad_rows.argmax()), name, path, what)


def _raise_at(column: pd.Series, row: int, name: str, path: Path, what: str) -> None:
    raise HistoryError(f"{path}: column {name!r}, row {row + 1}: {_show(column.iloc[row])} {what}")


def _factorize(column: pd.Series, name: str, path: Path) -> tuple[np.ndarray, Any]:
    """Codes and distinct values of a column; missing values get code -1."""
    try:
        return pd.factorize(column)
    except TypeError:  # unhashable cells: lists or structs from a Parquet file
        raise HistoryError(f"{path}: column {name!r} holds lists or records, not plain values") from None


def _distinct_text(column: pd.Series, name: str, path: Path) -> tuple[np.ndarray, pd.Series]:
    """Codes into the column's distinct values as stripped text (most columns repeat a lot)."""
    codes, uniques = _factorize(column, name, path)
    try:
        return codes, pd.Series(uniques, dtype=object).astype(str).str.strip()
    except UnicodeError:  # bytes that are not UTF-8 (a Parquet binary column)
        raise HistoryError(f"{path}: column {name!r} holds binary values, not UTF-8 text") from None


def _then_nat(values: Any) -> np.ndarray:
    """``values`` (UTC datetimes) with a trailing NaT, for factorize's missing code -1."""
    return np.concatenate(
        [np.asarray(values, dtype="datetime64[ns]"), np.array(["NaT"], dtype="datetime64[ns]")]
    )


def _then_none(values: np.ndarray) -> np.ndarray:
    """``values`` with a trailing None, so that factorize's missing code -1 indexes to None."""
    return np.concatenate([values.astype(object), np.array([None], dtype=object)])


def _is_blank(value: Any) -> bool:
    return not value.strip() if isinstance(value, str) else bool(pd.isna(value))


def _show(value: object, limit: int = 60) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _list(names: Any, limit: int = 20) -> str:
    shown = [_show(str(n), 40) for n in list(names)[:limit]]
    more = len(list(names)) - limit
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ------------------------------------------------------------------------------------------- writing


def write_history(df: pd.DataFrame, path: PathLike) -> None:
    """Write a history as ``.csv``, ``.csv.gz`` or ``.parquet`` (by extension), timestamps in ms.

    The output is deterministic: the same frame gives the same bytes (the gzip header carries
    no time or name). Parent directories are created.
    """
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        _write_parquet(df, path)
    elif path.name.lower().endswith(".gz"):
        with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            _write_csv(df, lambda text: gz.write(text.encode("utf-8")))
    else:
        with path.open("w", encoding="utf-8", newline="") as handle:
            _write_csv(df, handle.write)


def _write_csv(df: pd.DataFrame, write: Callable[[str], Any]) -> None:
    text = df.copy()
    for name in text.columns:
        column = text[name]
        if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column.dtype):
            text[name] = _rfc3339(column)
        elif isinstance(column.dtype, pd.BooleanDtype) or pd.api.types.is_bool_dtype(column.dtype):
            text[name] = column.map({True: "true", False: "false"}).astype(object)
    buffer = io.StringIO()
    text.to_csv(buffer, index=False, na_rep="", lineterminator="\n")
    write(buffer.getvalue())


def _rfc3339(column: pd.Series) -> np.ndarray:
    """RFC 3339 UTC text with milliseconds and Z (vectorised: strftime is slow on large files)."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    values = column.to_numpy(dtype="datetime64[ns]").astype("datetime64[ms]")
    text = np.char.add(np.datetime_as_string(values, unit="ms"), "Z").astype(object)
    text[np.isnat(values)] = None
    return text


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    # pyarrow stores `attrs` in the file's metadata: a loaded frame's (a Timedelta) is not JSON,
    # and it describes how that frame was read, not the data.
    plain = df.copy(deep=False)
    plain.attrs = {}
    table = pa.Table.from_pandas(plain, preserve_index=False)
    fields = [
        pa.field(f.name, pa.timestamp("ms", tz="UTC")) if pa.types.is_timestamp(f.type) else f
        for f in table.schema
    ]
    # Truncating to ms on purpose: the history format's resolution, as in CSV.
    table = table.cast(pa.schema(fields, metadata=table.schema.metadata), safe=False)
    pq.write_table(table, path, compression="zstd")
