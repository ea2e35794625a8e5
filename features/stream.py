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

from antifraud.engine.vocabulary import HISTORY_EVENTS
from antifraud.features.offline import feedback_events, timestamps_ms


def stream(history: pd.DataFrame) -> Iterator[tuple[str, int, int]]:
    """Yield (event, row, time_ms): event is 'payment' or a feedback event (`HistoryEvent`).

    The feedback events are `antifraud.features.offline.feedback_events`: the offline executor reads the same.
    """
    found = feedback_events(history)
    kinds, rows, times = (
        [np.zeros(len(history), dtype=np.int64)],
        [np.arange(len(history))],
        [timestamps_ms(history["timestamp"])],
    )
    names = ["payment", *HISTORY_EVENTS]
    for k, event in enumerate(HISTORY_EVENTS, start=1):
        selected, when = found.get(event, (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
        kinds.append(np.full(len(selected), k))
        rows.append(selected)
        times.append(when)
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
