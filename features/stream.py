"""A history as the stream of events production would have seen: payments and their feedback.

Order: by time; at equal times payments come before feedback (a feedback event only counts for
payments strictly after it), then file order. The parity test and the online benchmarks replay
this stream through the online executor; the offline executor encodes the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from features.offline import timestamps_ms

# feedback event name -> (history column holding its time, condition on the row)
FEEDBACK_COLUMNS = {
    "decline": "outcome_time",
    "refund": "refund_time",
    "cancel": "cancel_time",
    "fraud": "label_time",
}


def _feedback_rows(history: pd.DataFrame, event: str) -> np.ndarray:
    column = FEEDBACK_COLUMNS[event]
    if column not in history:
        return np.zeros(len(history), dtype=bool)
    has_time = history[column].notna().to_numpy()
    if event == "decline":
        outcome = history["bank_outcome"].astype("string") if "bank_outcome" in history else None
        return (
            has_time & (outcome == "declined").fillna(False).to_numpy(dtype=bool)
            if outcome is not None
            else np.zeros(len(history), dtype=bool)
        )
    if event == "fraud":
        return has_time & (pd.to_numeric(history["label"], errors="coerce") == 1).to_numpy()
    return has_time


def stream(history: pd.DataFrame) -> Iterator[tuple[str, int, int]]:
    """Yield (event, row, time_ms): event is 'payment' or a feedback event name."""
    kinds, rows, times = (
        [np.zeros(len(history), dtype=np.int64)],
        [np.arange(len(history))],
        [timestamps_ms(history["timestamp"])],
    )
    names = ["payment", *FEEDBACK_COLUMNS]
    for k, event in enumerate(FEEDBACK_COLUMNS, start=1):
        selected = np.nonzero(_feedback_rows(history, event))[0]
        kinds.append(np.full(len(selected), k))
        rows.append(selected)
        times.append(timestamps_ms(history[FEEDBACK_COLUMNS[event]].iloc[selected]))
    kind, row, time = np.concatenate(kinds), np.concatenate(rows), np.concatenate(times)
    order = np.lexsort((row, kind > 0, time))
    for i in order:
        yield names[kind[i]], int(row[i]), int(time[i])


def payment_record(history: pd.DataFrame, row: int) -> dict[str, Any]:
    """One history row as the mapping the online executor reads (missing values as None)."""
    record = history.iloc[row].to_dict()
    return {
        str(k): (None if v is None or (not isinstance(v, str) and pd.isna(v)) else v)
        for k, v in record.items()
    }
