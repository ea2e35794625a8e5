"""History files: round trips, column maps, defaults, and clear errors on bad files."""

from __future__ import annotations

import gzip
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antifraud.engine.schema import HISTORY_COLUMNS, PAN_SECRET_ENV, TRANSACTION_COLUMNS
from antifraud.training.history import (
    DEFAULT_LABEL_DELAY,
    HistoryError,
    load_column_map,
    load_history,
    write_history,
)
from antifraud.training.simulator import simulate

MINIMAL_HEADER = "transaction_id,timestamp,card_id,merchant_id,amount"


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    return simulate(days=10, cards=150, merchants=40, seed=5)


def write_text(tmp_path: Path, text: str, name: str = "history.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(HistoryError) as caught:
        load_history(path, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip_keeps_every_value(simulated: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"history{suffix}"
    write_history(simulated, path)
    loaded = load_history(path)
    expected = simulated.copy()
    # Legitimate rows get the default label time: by then a chargeback would have come.
    legit = expected["label_time"].isna()
    expected.loc[legit, "label_time"] = expected.loc[legit, "timestamp"] + pd.Timedelta(days=30)
    pd.testing.assert_frame_equal(loaded, expected)


def test_csv_timestamps_are_rfc3339_with_milliseconds(simulated: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    write_history(simulated.head(5), path)
    first = pd.read_csv(path, dtype=str).iloc[0]
    assert first["timestamp"].endswith("Z")
    assert pd.Series(first["timestamp"]).str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z").all()


def test_writing_is_deterministic(simulated: pd.DataFrame, tmp_path: Path) -> None:
    for suffix in (".csv.gz", ".parquet"):
        first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        write_history(simulated, first)
        write_history(simulated, second)
        assert first.read_bytes() == second.read_bytes()


def test_parquet_with_naive_timestamps_and_numeric_ids(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "transaction_id": [3, 1, 2],
            "timestamp": pd.to_datetime(["2026-01-02 10:00", "2026-01-01 10:00", "2026-01-01 10:00"]),
            "card_id": ["c1", "c2", "c3"],
            "merchant_id": ["m", "m", "m"],
            "amount": [1, 2, 3],
            "label": [True, False, False],
        }
    )
    path = tmp_path / "h.parquet"
    frame.to_parquet(path)
    loaded = load_history(path)
    assert str(loaded["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert loaded["transaction_id"].tolist() == ["1", "2", "3"]  # sorted by time, ties in file order
    assert loaded["label"].dtype == np.int8 and loaded["label"].tolist() == [0, 0, 1]
    assert loaded["amount"].dtype == np.float64


# ------------------------------------------------------------------------------- mapping, defaults


def test_column_map_renames_file_columns(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        "TX,WHEN,CUSTOMER_ID,SHOP,EUR,card_id\n"
        "a,2026-01-01T00:00:00Z,cust1,shop1,10.5,ignored\n"
        "b,2026-01-01T00:00:01Z,cust2,shop1,3,ignored\n",
    )
    columns = {"transaction_id": "TX", "timestamp": "WHEN", "card_id": "CUSTOMER_ID", "merchant_id": "SHOP"}
    loaded = load_history(path, columns={**columns, "amount": "EUR"})
    assert loaded["card_id"].tolist() == ["cust1", "cust2"]  # the mapping wins over the file's card_id
    assert loaded["amount"].tolist() == [10.5, 3.0]
    assert "CUSTOMER_ID" not in loaded.columns and "TX" not in loaded.columns


def test_column_map_from_yaml(tmp_path: Path) -> None:
    good = write_text(tmp_path, "card_id: CUSTOMER_ID\nmerchant_id: 'SHOP'\n", "map.yaml")
    assert load_column_map(good) == {"card_id": "CUSTOMER_ID", "merchant_id": "SHOP"}
    typo = write_text(tmp_path, "cardid: CUSTOMER_ID\n", "typo.yaml")
    with pytest.raises(HistoryError, match="'cardid' is not a canonical column"):
        load_column_map(typo)
    for text in ("- a\n- b\n", "card_id: [1, 2]\n", "card_id: {\n"):
        with pytest.raises(HistoryError, match=r"map\.yaml"):
            load_column_map(write_text(tmp_path, text, "map.yaml"))


def test_column_map_naming_an_absent_column(tmp_path: Path) -> None:
    path = write_text(tmp_path, f"{MINIMAL_HEADER}\na,2026-01-01,c,m,1\n")
    message = error_of(path, columns={"card_id": "CUSTOMER_ID"})
    assert "'CUSTOMER_ID'" in message and "card_id" in message and "columns found" in message
    # every absent source at once, each with the file column it most likely meant
    message = error_of(path, columns={"card_id": "CARDID", "amount": "Amount", "label": "IS_FRAUD"})
    assert "'CARDID' (did you mean 'card_id'?)" in message
    assert "'Amount' (did you mean 'amount'?)" in message and "'IS_FRAUD'" in message


def test_column_map_typos_and_reversed_lines_are_named(tmp_path: Path) -> None:
    path = write_text(tmp_path, "timestmp: WHEN\nCUSTOMER_ID: card_id\nlabel: IS_FRAUD\n", "map.yaml")
    with pytest.raises(HistoryError) as caught:
        load_column_map(path)
    message = str(caught.value)
    assert "'timestmp' is not a canonical column (did you mean 'timestamp'?)" in message
    assert "reversed? a line reads `card_id: CUSTOMER_ID`" in message


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        f"{MINIMAL_HEADER},label,bank_outcome,card_country,note\n"
        "b,2026-01-02T00:00:00+01:00,c,m,2,1,declined,NA,\n"
        "a,2026-01-01 23:00:00,c,m,1,0,,na,hello\n"
        "c,2026-01-01T23:00:00.000Z,c,m,0,0,APPROVED,,x\n",
    )
    loaded = load_history(path, label_delay=timedelta(days=7))
    assert list(loaded.columns) == [*TRANSACTION_COLUMNS, *HISTORY_COLUMNS, "note"]
    # Three rows at the same instant (one with an offset, one naive = UTC): file order is kept.
    assert loaded["transaction_id"].tolist() == ["b", "a", "c"]
    assert isinstance(loaded.index, pd.RangeIndex)
    assert (loaded["currency"] == "XXX").all()
    assert loaded["card_country"].tolist() == ["NA", "NA", None]  # Namibia is not a missing value
    assert (loaded["label_time"] == loaded["timestamp"] + pd.Timedelta(days=7)).all()
    assert loaded["bank_outcome"].tolist() == ["declined", None, "approved"]
    assert loaded["outcome_time"].isna().tolist() == [False, True, False]
    assert loaded["note"].tolist() == ["", "hello", "x"]  # extra columns are kept as read
    assert loaded["email"].isna().all() and loaded["card_on_file"].isna().all()
    assert str(loaded["card_on_file"].dtype) == "boolean"
    assert loaded["email"].dtype == object and loaded["email"].tolist() == [None] * 3


def test_label_delay_default_and_given(tmp_path: Path) -> None:
    """Without label_time, a label becomes known DEFAULT_LABEL_DELAY after the payment unless told;
    the frame says which delay it used and how many frauds got it."""
    path = write_text(
        tmp_path,
        f"{MINIMAL_HEADER},label,label_time\n"
        "a,2026-01-01T00:00:00Z,c,m,1,1,\n"
        "b,2026-01-02T00:00:00Z,c,m,1,1,2026-01-05T00:00:00Z\n"
        "c,2026-01-03T00:00:00Z,c,m,1,0,\n",
    )
    loaded = load_history(path)
    assert timedelta(days=30) == DEFAULT_LABEL_DELAY
    assert loaded.attrs == {
        "label_delay": pd.Timedelta(days=30),
        "label_delay_given": False,
        "label_time_defaulted": 1,  # the legitimate row does not count, the labelled fraud neither
    }
    assert loaded["label_time"].tolist() == [
        pd.Timestamp("2026-01-31T00:00:00Z"),
        pd.Timestamp("2026-01-05T00:00:00Z"),
        pd.Timestamp("2026-02-02T00:00:00Z"),
    ]
    week = load_history(path, label_delay=timedelta(days=7))
    assert week.attrs["label_delay"] == pd.Timedelta(days=7) and week.attrs["label_delay_given"] is True
    assert week["label_time"].iloc[0] == pd.Timestamp("2026-01-08T00:00:00Z")
    assert week["label_time"].iloc[1] == pd.Timestamp("2026-01-05T00:00:00Z")  # the file's own time wins
    assert "must be positive" in error_of(path, label_delay=timedelta(0))


def test_booleans_and_case(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        f"{MINIMAL_HEADER},card_on_file,authenticated,channel,currency\n"
        "a,2026-01-01,c,m,1,TRUE,0,ECOM,eur\n"
        "b,2026-01-02,c,m,1,no,yes,pos,\n",
    )
    loaded = load_history(path)
    assert loaded["card_on_file"].tolist() == [True, False]
    assert loaded["authenticated"].tolist() == [False, True]
    assert loaded["channel"].tolist() == ["ecom", "pos"]
    assert loaded["currency"].tolist() == ["EUR", "XXX"]
    assert "label" not in loaded.columns and loaded["label_time"].isna().all()


def test_pan_column_is_tokenized_and_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_text(
        tmp_path, "transaction_id,timestamp,pan,merchant_id,amount\na,2026-01-01,4111111111111111,m,1\n"
    )
    monkeypatch.delenv(PAN_SECRET_ENV, raising=False)
    assert PAN_SECRET_ENV in error_of(path)
    monkeypatch.setenv(PAN_SECRET_ENV, "a-test-secret-of-32-characters!!")
    loaded = load_history(path)
    assert "pan" not in loaded.columns
    assert loaded["card_id"].iloc[0].startswith("tok_") and loaded["card_bin"].iloc[0] == "411111"
    assert "4111111111111111" not in loaded.to_csv()
    bad = write_text(
        tmp_path, "transaction_id,timestamp,pan,merchant_id,amount\na,2026-01-01,4111-1111,m,1\n"
    )
    message = error_of(bad)
    assert "'pan', row 1" in message and "4111" not in message  # never echo a card number


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{MINIMAL_HEADER}\na,yesterday,c,m,1\n", "column 'timestamp', row 1: 'yesterday'"),
        (f"{MINIMAL_HEADER}\na,2026-01-01,c,m,1\nb,now,c,m,1\n", "column 'timestamp', row 2: 'now'"),
        (
            f"{MINIMAL_HEADER}\na,2026-01-01,c,m,1\nb,2026-01-01,c,m,-5\n",
            "column 'amount', row 2: '-5' is negative",
        ),
        (f"{MINIMAL_HEADER}\na,2026-01-01,c,m,1\nb,2026-01-01,c,m,1 EUR\n", "row 2: '1 EUR' is not a number"),
        (f"{MINIMAL_HEADER}\na,2026-01-01,c,m,\n", "column 'amount', row 1: value is missing"),
        (f"{MINIMAL_HEADER},label\na,2026-01-01,c,m,1,0\nb,2026-01-01,c,m,1,yes\n", "'label', row 2: 'yes'"),
        (f"{MINIMAL_HEADER},label\na,2026-01-01,c,m,1,\n", "column 'label', row 1"),
        (
            f"{MINIMAL_HEADER}\na,2026-01-01,c,m,1\nb,2026-01-01,c,m,1\na,2026-01-01,c,m,1\n",
            "row 3: duplicate 'a'",
        ),
        (f"{MINIMAL_HEADER}\na,2026-01-01,,m,1\n", "column 'card_id', row 1: value is missing"),
        (f"{MINIMAL_HEADER}\na,2026-01-01,c,m,1\nb, ,c,m,1\n", "column 'timestamp', row 2: value is missing"),
        (f"{MINIMAL_HEADER},card_country\na,2026-01-01,c,m,1,France\n", "'card_country', row 1: 'France'"),
        (f"{MINIMAL_HEADER},mcc\na,2026-01-01,c,m,1,541\n", "'mcc', row 1: '541' is not a 4-digit"),
        (f"{MINIMAL_HEADER},channel\na,2026-01-01,c,m,1,web\n", "'channel', row 1: 'web' is not one of"),
        (f"{MINIMAL_HEADER},card_on_file\na,2026-01-01,c,m,1,maybe\n", "'card_on_file', row 1: 'maybe'"),
        (f"{MINIMAL_HEADER}\na,2026-01-01,c,m,1,extra\n", "row 1 has more fields than the header"),
        (f"{MINIMAL_HEADER},amount\na,2026-01-01,c,m,1,2\n", "'amount' appears more than once"),
        (f"{MINIMAL_HEADER}\n", "no data rows"),
        ("", "the file is empty"),
        ("\n\n", "empty"),
        ('"unterminated\n', "cannot read it as CSV"),
    ],
)
def test_bad_csv_names_column_and_row(tmp_path: Path, text: str, expected: str) -> None:
    path = write_text(tmp_path, text)
    message = error_of(path)
    assert str(path) in message
    assert expected in message


def test_missing_column_lists_what_was_found(tmp_path: Path) -> None:
    path = write_text(tmp_path, "transaction_id,timestamp,CUSTOMER,merchant_id,amount\na,2026-01-01,c,m,1\n")
    message = error_of(path)
    assert "missing required column 'card_id'" in message
    assert "'CUSTOMER'" in message and "--columns" in message


def test_every_missing_column_is_named_at_once(tmp_path: Path) -> None:
    path = write_text(tmp_path, "transaction_id,Time_Stamp,cardid,shop,value\na,2026-01-01,c,m,1\n")
    message = error_of(path)
    assert "missing required columns 'timestamp' (did you mean 'Time_Stamp'?)" in message
    assert "'card_id' (did you mean 'cardid'?)" in message
    assert "'merchant_id', 'amount' (columns found" in message  # nothing close: no guess
    assert "`timestamp: Time_Stamp`" in message  # the hint shows a map line that would work


def test_wrong_delimiter_is_explained(tmp_path: Path) -> None:
    path = write_text(tmp_path, "transaction_id;timestamp;card_id;merchant_id;amount\na;2026-01-01;c;m;1\n")
    assert "semicolon-separated" in error_of(path)


@pytest.mark.parametrize("name", ["h.csv", "h.csv.gz", "h.parquet"])
def test_binary_garbage(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 4)
    assert str(path) in error_of(path)


def test_gzipped_csv_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "h.csv.gz"
    path.write_bytes(gzip.compress(f"{MINIMAL_HEADER}\na,2026-01-01,caf\xe9,m,1\n".encode("latin-1")))
    assert "UTF-8" in error_of(path)


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    assert ".parquet" in error_of(write_text(tmp_path, MINIMAL_HEADER, "history.xlsx"))
    assert "no such file" in error_of(tmp_path / "absent.csv")
    folder = tmp_path / "dataset.parquet"
    folder.mkdir()
    assert "without .parquet files" in error_of(folder)  # an empty folder is no Parquet dataset


# ---------------------------------------------------------------------------------------- property

SUFFIXES = st.sampled_from([".csv", ".csv.gz", ".parquet"])
# Random text, mixed with plausible values so that some rows get past the first checks.
CELL = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01", "1", "0", "12.50", "-1", "true", "FR", "5411"]),
    st.sampled_from(["", "NA", "ecom", "declined", "4111111111111111", "1e999", "nan", "x" * 300]),
)
COLUMN_NAMES = st.sampled_from([*TRANSACTION_COLUMNS, *HISTORY_COLUMNS, "pan", "other"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), suffix=SUFFIXES)
def test_random_bytes_give_history_error(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"garbage{suffix}"
        path.write_bytes(data)
        with pytest.raises(HistoryError):
            load_history(path)


def garbage_csv(
    folder: str, extra: list[str], rows: list[list[str]], separator: str, gz: bool
) -> tuple[Path, list[str], str]:
    """A CSV history (gzipped or not) with the required columns and `extra` ones over `rows`:
    its path, header and text."""
    header = ["transaction_id", "timestamp", "card_id", "merchant_id", "amount", *extra]
    text = "\n".join(separator.join(line) for line in [header, *rows]) + "\n"
    path = Path(folder) / ("h.csv.gz" if gz else "h.csv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path, header, text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.lists(COLUMN_NAMES, max_size=4),
    rows=st.lists(st.lists(CELL, min_size=5, max_size=9), min_size=0, max_size=5),
    separator=st.sampled_from([",", ";", "\t"]),
    gz=st.booleans(),
)
def test_garbage_csv_never_raises_anything_but_history_error(
    extra: list[str], rows: list[list[str]], separator: str, gz: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path, _, _ = garbage_csv(folder, extra, rows, separator, gz)
        try:
            loaded = load_history(path)
        except HistoryError:
            return
        assert list(loaded.columns[: len(TRANSACTION_COLUMNS)]) == list(TRANSACTION_COLUMNS)
        assert loaded["timestamp"].is_monotonic_increasing


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stamps=st.lists(
        st.datetimes(
            min_value=datetime(1980, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.timezones()
        ),
        min_size=1,
        max_size=6,
    ),
    amounts=st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=6, max_size=6),
)
def test_valid_csv_loads_sorted_in_utc(stamps: list[datetime], amounts: list[float]) -> None:
    lines = [MINIMAL_HEADER] + [f"t{i},{s.isoformat()},c,m,{amounts[i]!r}" for i, s in enumerate(stamps)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "h.csv"
        path.write_text("\n".join(lines) + "\n")
        loaded = load_history(path)
    order = sorted(range(len(stamps)), key=lambda i: stamps[i].astimezone(UTC))  # stable, as the loader
    assert loaded["transaction_id"].tolist() == [f"t{i}" for i in order]
    assert loaded["amount"].tolist() == [amounts[i] for i in order]
    assert loaded["timestamp"].tolist() == [pd.Timestamp(stamps[i]).tz_convert("UTC") for i in order]
