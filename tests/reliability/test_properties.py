"""Property tests, larger than the normal suite's: the history loader and the rule language.

The strategies are the normal suite's own (tests/test_history.py, tests/test_rules_safety.py),
imported, not copied; the runs here are several times larger and the history properties stronger:

- a garbage history file (random bytes; random CSV text with plausible and hostile cells; random
  Parquet tables of wrong types) either loads in canonical form or raises HistoryError naming the
  file and the row or the column (or saying the whole file is unusable), never anything else; and
  when the message points at `column 'C', row N: 'V'`, data row N of column C really holds V;
- random rule text, token soup, syntax trees and well-typed trees either compile to an expression
  that evaluates without raising (scalar and vectorized) or raise ExpressionError, nothing else.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from antifraud.engine.schema import PAN_SECRET_ENV, TRANSACTION_COLUMNS
from antifraud.training.history import HistoryError, load_history

from .helpers import FIGURES, normal_suite

SECTION = "1. bad input: properties"
COMMAND = ".venv/bin/pytest -q -s tests/reliability/test_properties.py"
SEED = int(os.environ.get("RELIABILITY_SEED", "20260301"))
SCALE = float(os.environ.get("RELIABILITY_SCALE", "1"))  # < 1 for a quick run while editing


HISTORY = normal_suite("test_history")
RULES = normal_suite("test_rules_safety")


def _settings(examples: int) -> Any:
    return settings(
        max_examples=max(10, int(examples * SCALE)),
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )


# --------------------------------------------------------------------------------------------------
# History loader

WHOLE_FILE = (
    "the file is empty",
    "no data rows",
    "cannot read it as",
    "not UTF-8",
    "no such file",
    "unknown history format",
)
POINTER = re.compile(r"column '([^']+)', row (\d+): (.*)$", re.S)


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.verified = 0
        self.started = self.last = time.perf_counter()

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.last = time.perf_counter()

    def report(self, what: str) -> None:
        FIGURES.add(
            SECTION,
            f"history loader, {what}: examples / outcomes / row-and-value pointers verified",
            f"{sum(self.outcomes.values()):,} in {self.last - self.started:.0f} s / "
            f"{dict(self.outcomes.most_common())} / {self.verified:,}",
            COMMAND,
        )


def _check_message(message: str, path: Path) -> str:
    """The kind of a HistoryError message; fails the test if it names neither row nor column."""
    assert str(path) in message, message
    if POINTER.search(message):
        return "column + row"
    if re.search(r"\brow \d+\b", message):
        return "row"
    if re.search(r"\bcolumns?\b", message):  # one error names every missing column
        return "column"
    if any(phrase in message for phrase in WHOLE_FILE):
        return "whole file"
    raise AssertionError(f"HistoryError names neither a row nor a column: {message}")


def _verify_pointer(message: str, rows: list[list[str]], header: list[str]) -> bool:
    """For `column 'C', row N: ...`: data row N exists, and holds what the message shows of it
    (`'V' is not ...`: the cell is V, as repr, maybe cut; `value is missing`: it is blank;
    `duplicate 'V' (first at row M)`: rows N and M both hold V)."""
    found = POINTER.search(message)
    if not found or found.group(1) not in header:
        return False
    column, row = header.index(found.group(1)), int(found.group(2))
    assert 1 <= row <= len(rows), message
    shown, cell = found.group(3), rows[row - 1][column]
    if shown.startswith("value is missing"):
        assert cell.strip() == "", (message, rows[row - 1])
    elif shown.startswith("duplicate "):
        first = int(re.search(r"first at row (\d+)", shown).group(1))  # type: ignore[union-attr]
        assert cell.strip() == rows[first - 1][column].strip() and first < row, (message, rows)
    elif shown[:1] in "'\"":
        text = repr(cell)
        text = text if len(text) <= 60 else text[:57] + "..."
        assert shown.startswith(text), (message, rows[row - 1])
    return True


HISTORY_TALLY: dict[str, Tally] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_history_tallies() -> Any:
    yield
    for what, tally in HISTORY_TALLY.items():
        tally.report(what)


@seed(SEED)
@_settings(1500)
@given(data=st.binary(max_size=600), suffix=HISTORY.SUFFIXES)
def test_random_bytes_give_a_history_error_about_the_file(data: bytes, suffix: str) -> None:
    tally = HISTORY_TALLY.setdefault("random bytes", Tally())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"garbage{suffix}"
        path.write_bytes(data)
        with pytest.raises(HistoryError) as caught:
            load_history(path)
        tally.count(_check_message(str(caught.value), path))


@seed(SEED)
@_settings(2500)
@given(
    extra=st.lists(HISTORY.COLUMN_NAMES, max_size=4),
    rows=st.lists(st.lists(HISTORY.CELL, min_size=5, max_size=9), min_size=0, max_size=6),
    separator=st.sampled_from([",", ",", ",", ";", "\t"]),
    gz=st.booleans(),
)
def test_garbage_csv_loads_or_names_the_row_or_column(
    extra: list[str], rows: list[list[str]], separator: str, gz: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally = HISTORY_TALLY.setdefault("random CSV", Tally())
    monkeypatch.setenv(PAN_SECRET_ENV, "reliability-secret-0123456789")
    with tempfile.TemporaryDirectory() as folder:
        path, header, text = HISTORY.garbage_csv(folder, extra, rows, separator, gz)
        try:
            loaded = load_history(path)
        except HistoryError as exc:
            message = str(exc)
            tally.count(_check_message(message, path))
            # only where the text is unambiguous CSV: every row as wide as the header, no quoting
            simple = separator == "," and len(set(header)) == len(header)
            simple = simple and all(len(r) == len(header) for r in rows)
            simple = simple and not any(c in cell for r in rows for cell in r for c in '",\r\n\x00')
            if simple:
                parsed = list(csv.reader(io.StringIO(text)))
                if _verify_pointer(message, parsed[1:], parsed[0]):
                    tally.verified += 1
            return
        tally.count("loaded")
        assert list(loaded.columns[: len(TRANSACTION_COLUMNS)]) == list(TRANSACTION_COLUMNS)
        assert loaded["timestamp"].is_monotonic_increasing
        assert loaded["transaction_id"].is_unique


# Parquet files whose columns have the wrong types: numbers where text is expected, lists,
# structs, binary, naive and aware timestamps, nulls everywhere.
def _column(kind: str, n: int, draw: Any) -> pa.Array:
    if kind == "text":
        return pa.array(draw(st.lists(st.one_of(st.none(), HISTORY.CELL), min_size=n, max_size=n)))
    if kind == "int":
        return pa.array(
            draw(st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)), min_size=n, max_size=n))
        )
    if kind == "float":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.floats()), min_size=n, max_size=n)))
    if kind == "bool":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n)))
    if kind == "binary":
        return pa.array(draw(st.lists(st.binary(max_size=6), min_size=n, max_size=n)), type=pa.binary())
    if kind == "list":
        return pa.array(draw(st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=n, max_size=n)))
    if kind == "struct":
        return pa.array([{"a": i} for i in range(n)])
    if kind == "null":
        return pa.nulls(n)
    stamps = draw(
        st.lists(
            st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
            min_size=n,
            max_size=n,
        )
    )
    return pa.array(stamps, type=pa.timestamp("ms", tz="UTC" if kind == "utc" else None))


KINDS = ["text", "int", "float", "bool", "binary", "list", "struct", "null", "utc", "naive"]


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(1, 5))
    names = ["transaction_id", "timestamp", "card_id", "merchant_id", "amount"]
    names += draw(st.lists(HISTORY.COLUMN_NAMES, max_size=3, unique=True))
    names = list(dict.fromkeys(names))
    typical = {"transaction_id": "text", "timestamp": "utc", "card_id": "text", "merchant_id": "text"}
    columns = {}
    for name in names:
        kind = typical.get(name, "float" if name == "amount" else "text")
        if draw(st.integers(0, 2)) == 0:
            kind = draw(st.sampled_from(KINDS))
        columns[name] = _column(kind, n, draw)
    return pa.table(columns)


@seed(SEED)
@_settings(800)
@given(table=parquet_tables())
def test_garbage_parquet_loads_or_names_the_row_or_column(
    table: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally = HISTORY_TALLY.setdefault("random Parquet", Tally())
    monkeypatch.setenv(PAN_SECRET_ENV, "reliability-secret-0123456789")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "h.parquet"
        pq.write_table(table, path)
        try:
            loaded = load_history(path)
        except HistoryError as exc:
            tally.count(_check_message(str(exc), path))
            return
        tally.count("loaded")
        assert list(loaded.columns[: len(TRANSACTION_COLUMNS)]) == list(TRANSACTION_COLUMNS)
        assert isinstance(loaded["timestamp"].dtype, pd.DatetimeTZDtype)
        assert np.isfinite(loaded["amount"].to_numpy(dtype=float)).all()


# --------------------------------------------------------------------------------------------------
# Rule language


RULE_TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _print_rule_tally() -> Any:
    started = time.perf_counter()
    yield
    if RULE_TALLY:
        FIGURES.add(
            SECTION,
            "rule language fuzz: examples by generator (each compiled twice, evaluated on 3 rows)",
            f"{dict(RULE_TALLY)} in {time.perf_counter() - started:.0f} s",
            COMMAND,
        )


@seed(SEED)
@_settings(3000)
@given(text=st.text(max_size=160), data=st.data())
def test_random_rule_text_compiles_safely_or_is_refused(text: str, data: st.DataObject) -> None:
    RULE_TALLY["random text"] += 1
    RULES.check_safe(text, data)


@seed(SEED)
@_settings(3000)
@given(tokens=st.lists(st.sampled_from(RULES.TOKENS), max_size=40), data=st.data())
def test_rule_token_soup_compiles_safely_or_is_refused(tokens: list[str], data: st.DataObject) -> None:
    RULE_TALLY["token soup"] += 1
    RULES.check_safe(" ".join(tokens), data)


@seed(SEED)
@_settings(3000)
@given(tree=RULES.TREES, data=st.data())
def test_random_syntax_trees_compile_safely_or_are_refused(tree: Any, data: st.DataObject) -> None:
    RULE_TALLY["syntax trees"] += 1
    RULES.test_random_syntax_trees.hypothesis.inner_test(tree, data)


@seed(SEED)
@_settings(2000)
@given(data=st.data(), kind=st.sampled_from(["bool", "number", "string"]))
def test_well_typed_rule_trees_evaluate_without_raising(data: st.DataObject, kind: str) -> None:
    RULE_TALLY["well-typed trees"] += 1
    RULES.test_random_well_typed_trees_evaluate_without_raising.hypothesis.inner_test(data, kind)
