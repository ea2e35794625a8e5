"""From a history file to a feature matrix and labels for a date range.

Features are always computed point-in-time over the history *before* the period too (a card's
30-day velocity on the first day of the period needs the 30 days before it), then the rows of the
period are kept. Rows after the period's end are dropped first: a feature never reads the future,
so they cannot change the period's features, and skipping them saves time.

Dates are ISO calendar dates in UTC; a period [start, end) includes `start`, excludes `end`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import pandas as pd

from antifraud.features.offline import OfflineFeatures
from antifraud.features.spec import FeatureSpec, load_spec
from antifraud.training.config import TrainingError
from antifraud.training.dask_cluster import active_client, dask_transform
from antifraud.training.history import dataset_files, load_column_map, load_history

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

Progress = Callable[[str], None]
# What the public functions accept as `progress`: a callback taking one line per step, a rich
# Progress (each step becomes its task's description), or None.
ProgressArg: TypeAlias = "Progress | RichProgress | None"


def no_progress(message: str) -> None:
    """The default progress callback: says nothing."""


def as_progress(progress: ProgressArg) -> Progress:
    """A plain callback from any accepted `progress` argument."""
    if progress is None:
        return no_progress
    if hasattr(progress, "add_task") and hasattr(progress, "update"):
        rich = progress
        task = rich.add_task("antifraud", total=None)
        return lambda message: rich.update(task, description=message)
    return progress


def as_date(value: date | datetime | str, what: str) -> date:
    """An ISO date (2026-01-31) from a string, a date or a datetime; `what` names it in errors."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise TrainingError(f"{what}: {value!r} is not an ISO date such as 2026-01-31") from exc


def check_period(start: date | str, end: date | str, what: str = "period") -> tuple[date, date]:
    """Validate [start, end): both dates, start strictly before end (end is exclusive)."""
    s, e = as_date(start, f"{what} start"), as_date(end, f"{what} end")
    if s >= e:
        raise TrainingError(
            f"{what}: start {s} must be before end {e} (the end date is exclusive: "
            f"--start {s} --end {s + timedelta(days=1)} is the single day {s})"
        )
    return s, e


def utc_midnight(day: date) -> pd.Timestamp:
    """The first instant of a UTC calendar day."""
    return pd.Timestamp(datetime(day.year, day.month, day.day, tzinfo=UTC))


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (histories can be large); of a Parquet dataset, of its files'
    names (relative to the folder) and contents in stream order."""
    digest = hashlib.sha256()
    for file in dataset_files(path):
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_history(
    path: Path,
    columns: Path | None = None,
    require_label: bool = False,
    label_delay: timedelta | None = None,
) -> pd.DataFrame:
    """Load a history file (optionally through a column-map YAML) in the canonical schema.

    `label_delay` is when a label becomes known after its payment, for rows without a
    `label_time` (None: not given, `antifraud.training.history.DEFAULT_LABEL_DELAY`). The frame's `attrs`
    record `label_delay` (a pandas Timedelta), `label_delay_given` and `label_time_defaulted` (how
    many frauds had no label_time). Raises `antifraud.training.history.HistoryError` (a ValueError) for
    unusable files, and `TrainingError` when labels are required but the file has no `label` column.
    """
    mapping = load_column_map(columns) if columns is not None else None
    history = load_history(path, mapping, label_delay)
    if require_label and "label" not in history:
        hint = " or map it with --columns (label: YOUR_COLUMN)" if columns is None else f" in {columns}"
        raise TrainingError(
            f"{path}: no 'label' column (1 fraud, 0 legitimate) to train or evaluate on; add it{hint}"
        )
    return history


@dataclass
class Dataset:
    """The payments of a period: their history rows and their point-in-time features."""

    rows: pd.DataFrame  # canonical history rows of the period, time-sorted
    features: pd.DataFrame  # spec.feature_names columns, same index as `rows`
    start: pd.Timestamp
    end: pd.Timestamp

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def X(self) -> np.ndarray:
        """Feature matrix in spec order."""
        return self.features.to_numpy(dtype=float)

    @property
    def y(self) -> np.ndarray:
        """Labels (1 fraud, 0 legitimate)."""
        return self.rows["label"].to_numpy(dtype=np.int8)

    @property
    def frauds(self) -> int:
        """Number of fraudulent payments."""
        return int(self.y.sum()) if "label" in self.rows else 0

    def between(self, start: pd.Timestamp, end: pd.Timestamp) -> Dataset:
        """The sub-period [start, end) (timestamps)."""
        keep = ((self.rows["timestamp"] >= start) & (self.rows["timestamp"] < end)).to_numpy()
        return Dataset(self.rows[keep], self.features[keep], start, end)


def compute_features(
    history: pd.DataFrame,
    end: pd.Timestamp,
    spec: FeatureSpec | None = None,
    progress: Progress = no_progress,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Point-in-time features of every payment before `end`: (history rows, features)."""
    before = history[(history["timestamp"] < end).to_numpy()]
    client = active_client()
    if client is not None:  # `--dask`: the same values, computed by entity block on the cluster
        progress(f"features on Dask ({client.scheduler_info()['address']})")
        features = dask_transform(before, spec or load_spec())
    else:
        offline = OfflineFeatures(spec or load_spec())
        features = offline.transform(before, progress=lambda entity: progress(f"features: {entity}"))
    return before, features.drop(columns="transaction_id")


def build_dataset(
    history: pd.DataFrame,
    start: date,
    end: date,
    spec: FeatureSpec | None = None,
    progress: Progress = no_progress,
    source: str = "history",
    require_label: bool = True,
) -> Dataset:
    """Features and labels of the payments in [start, end) of a time-sorted canonical history.

    Features are computed over every payment before `end` (earlier ones are their context).
    `source` names the history in error messages.
    """
    start, end = check_period(start, end)
    if require_label and "label" not in history:
        raise TrainingError(f"{source}: no 'label' column (1 fraud, 0 legitimate)")
    t0, t1 = utc_midnight(start), utc_midnight(end)
    in_period = ((history["timestamp"] >= t0) & (history["timestamp"] < t1)).to_numpy()
    if not in_period.any():
        span = (
            f"{history['timestamp'].min():%Y-%m-%d} to {history['timestamp'].max():%Y-%m-%d}"
            if len(history)
            else "no payments"
        )
        raise TrainingError(f"{source}: no payments in [{start}, {end}); the file covers {span}")
    rows, features = compute_features(history, t1, spec, progress)
    keep = (rows["timestamp"] >= t0).to_numpy()
    return Dataset(rows[keep], features[keep], t0, t1)
