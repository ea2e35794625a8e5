"""The decisions of a period as plain arrays: what `antifraud monitor` measures.

They are read from the Parquet files of `antifraud export-decisions` (engine/export.py): the CLI
exports the store's period to a temporary directory first, so the store and a file given with
`--decisions` go through the same reader, and the offline tools never open the store themselves
(the import contracts forbid it). `decisions_with_feedback.parquet` brings the labels (`is_fraud`,
`label_reported_at`); `decisions.parquet` alone has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from antifraud.training.config import TrainingError

DECISIONS_FILE = "decisions.parquet"  # engine.export's names: the offline tools may not import it
JOINED_FILE = "decisions_with_feedback.parquet"
_COLUMNS = (
    "transaction_id",
    "timestamp",
    "verdict",
    "score",
    "model_version",
    "degraded",
    "shadow_model_version",
    "shadow_score",
)
_LABELS = ("is_fraud", "label_reported_at")


class MonitorError(TrainingError):
    """Bad input to the monitor: a missing or unreadable decisions file, an empty period."""


@dataclass(frozen=True)
class Decisions:
    """One row per decision of the period, in payment time order."""

    timestamps: pd.DatetimeIndex  # the payments' times, UTC
    transaction_ids: np.ndarray  # str: the consistency check finds each payment in the history
    verdicts: np.ndarray  # str
    scores: np.ndarray  # float, NaN where no model scored
    model_versions: np.ndarray  # str or None
    degraded: np.ndarray  # bool: some signal was missing
    features: dict[str, np.ndarray]  # by feature name, float, NaN missing
    shadow_scores: np.ndarray  # float, NaN outside the shadow share
    shadow_versions: np.ndarray  # str or None
    #: 1 fraud or chargeback, 0 labelled legitimate, -1 no label (yet); None: the file has no labels
    labels: np.ndarray | None
    label_times: pd.DatetimeIndex | None  # when each label was reported (NaT without one)

    def __len__(self) -> int:
        return len(self.verdicts)


def decisions_file(path: Path) -> Path:
    """The file to read: `path` itself, or in an export directory the joined file (labels) when
    present, else decisions.parquet."""
    if path.is_dir():
        for name in (JOINED_FILE, DECISIONS_FILE):
            if (path / name).is_file():
                return path / name
        raise MonitorError(f"{path} holds neither {JOINED_FILE} nor {DECISIONS_FILE}: run export-decisions")
    if not path.is_file():
        raise MonitorError(f"--decisions {path}: no such file or directory")
    return path


def feature_column(name: str, columns: Sequence[str]) -> str | None:
    """The export's column of a feature: `feature_<name>` when the name is taken by a decision column
    (`amount`), else the name itself; None when the file has neither."""
    for column in (f"feature_{name}", name):
        if column in columns:
            return column
    return None


def utc(value: datetime) -> pd.Timestamp:
    """A time as a UTC timestamp; a naive time is UTC."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def read_decisions(
    path: Path, feature_names: Sequence[str], start: datetime | None = None, end: datetime | None = None
) -> Decisions:
    """The decisions of payments in [start, end) (None: unbounded) in an export (directory or file),
    with the features named in `feature_names` (a feature the file lacks is left out). Raises
    MonitorError for a missing, unreadable or foreign file."""
    source = decisions_file(path)
    try:
        schema = pq.read_schema(source)
    except (OSError, ValueError) as exc:
        raise MonitorError(f"{source}: not a readable Parquet file ({exc})") from exc
    columns = list(schema.names)
    if absent := [c for c in _COLUMNS if c not in columns]:
        raise MonitorError(f"{source}: not a decisions export, it lacks {', '.join(absent)}")
    wanted = {name: col for name in feature_names if (col := feature_column(name, columns)) is not None}
    labelled = all(c in columns for c in _LABELS)
    read = [*_COLUMNS, *(_LABELS if labelled else ()), *dict.fromkeys(wanted.values())]
    frame = pq.read_table(source, columns=read).to_pandas()
    stamps = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True))
    keep = np.ones(len(frame), dtype=bool)
    if start is not None:
        keep &= np.asarray(stamps >= utc(start))
    if end is not None:
        keep &= np.asarray(stamps < utc(end))
    frame, stamps = frame[keep], stamps[keep]
    labels = label_times = None
    if labelled:
        fraud = frame["is_fraud"].to_numpy(dtype=object)
        labels = np.array([-1 if pd.isna(f) else int(bool(f)) for f in fraud], dtype=np.int8)
        label_times = pd.DatetimeIndex(pd.to_datetime(frame["label_reported_at"], utc=True))
    return Decisions(
        timestamps=stamps,
        transaction_ids=frame["transaction_id"].to_numpy(dtype=object),
        verdicts=frame["verdict"].to_numpy(dtype=str),
        scores=frame["score"].to_numpy(dtype=float, na_value=np.nan),
        model_versions=frame["model_version"].to_numpy(dtype=object),
        degraded=frame["degraded"].notna().to_numpy(),
        features={name: frame[col].to_numpy(dtype=float, na_value=np.nan) for name, col in wanted.items()},
        shadow_scores=frame["shadow_score"].to_numpy(dtype=float, na_value=np.nan),
        shadow_versions=frame["shadow_model_version"].to_numpy(dtype=object),
        labels=labels,
        label_times=label_times,
    )
