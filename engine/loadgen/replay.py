"""Payments to replay: the sample history's last days, and an endless stream of requests built from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from antifraud.engine.schema import TRANSACTION_COLUMNS
from antifraud.engine.settings import ROOT

SAMPLE = ROOT / "data" / "sample" / "history.parquet"

# A JSON value of a payment body (what a parquet cell becomes after `.item()`).
Value = str | int | float | bool


@dataclass
class Replay:
    """The replay window's payments as JSON-ready dicts (time order) and what Redis was loaded with."""

    bodies: list[dict[str, Value]]
    times_ms: np.ndarray  # each payment's own event time
    window_ms: int  # length of the window: the shift applied each time it is replayed again
    start_ms: int  # the window's start; everything before it is for Redis
    backfilled: int = 0  # events (payments and feedback) loaded into Redis before the window


def load_replay(replay_days: int, sample: Path = SAMPLE) -> tuple[pd.DataFrame, Replay]:
    """The sample history and the payments of its last `replay_days` days, ready to send."""
    from antifraud.training.history import load_history

    history = load_history(sample)
    last = history["timestamp"].max().normalize() + pd.Timedelta(days=1)
    start = last - pd.Timedelta(days=replay_days)
    window = history[history["timestamp"] >= start]
    columns = [c for c in TRANSACTION_COLUMNS if c in window.columns and c != "timestamp"]
    frame = window[columns].astype(object).where(window[columns].notna(), None)
    bodies = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items() if v is not None}
        for rec in frame.to_dict("records")
    ]
    times_ms = (window["timestamp"].astype("int64") // 1_000_000).to_numpy()
    start_ms = int(start.timestamp() * 1000)
    return history, Replay(bodies, times_ms, replay_days * 86_400_000, start_ms)


class RequestSource:
    """Endless stream of unique, time-ordered payments from the replay window, as HTTP requests.

    Each payment gets a fresh transaction id (`lt-<tag>-<position>`, never a duplicate); when the
    window has been sent, it is sent again with its timestamps moved on by the window's length, so
    time only moves forward and velocity features stay realistic.
    """

    def __init__(self, replay: Replay, host: str, port: int, key: str, tag: str) -> None:
        self.replay = replay
        self.tag = tag
        self.position = 0
        self.head = (
            f"POST /v1/score HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def take(self, n: int) -> list[bytes]:
        """The next n requests (built before a cell so the generator does no JSON work during it)."""
        out = []
        size = len(self.replay.bodies)
        for _ in range(n):
            lap, row = divmod(self.position, size)
            body = dict(self.replay.bodies[row])
            body["transaction_id"] = f"lt-{self.tag}-{self.position}"
            ms = int(self.replay.times_ms[row]) + lap * self.replay.window_ms
            body["timestamp"] = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
            payload = json.dumps(body, separators=(",", ":")).encode()
            out.append(self.head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            self.position += 1
        return out
