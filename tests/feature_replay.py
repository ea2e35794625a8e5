"""Replaying a simulated history through the online features, for the parity tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import redis

from antifraud.features.online import OnlineFeatures
from antifraud.features.spec import FeatureSpec
from antifraud.features.stream import payment_record, stream
from antifraud.training.simulator import simulate


def parity_history() -> pd.DataFrame:
    """21 days of 1,200 cards (about 26,000 payments), in time order: the parity tests' history."""
    frame = simulate(days=21, cards=1200, merchants=60, seed=11)
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def replay_online(
    history: pd.DataFrame, client: redis.Redis, spec: FeatureSpec | None = None
) -> tuple[list[str], np.ndarray]:
    """Every payment's online features, replaying the history and its feedback in stream order."""
    online = OnlineFeatures(client, spec)
    values = np.full((len(history), len(online.feature_names)), np.nan)
    for event, row, t_ms in stream(history):
        record = payment_record(history, row)
        if event == "payment":
            result = online.score(record)
            assert not result.duplicate
            values[row] = result.values
        else:
            online.feedback(event, record["transaction_id"], t_ms, record)
    return online.feature_names, values


def dedupe_ring(client: redis.Redis, key: bytes | str) -> list[int]:
    """The transaction fingerprints an entity's state `key` (`<prefix>:s`) holds in its dedupe ring,
    oldest first (docs/feature-state.md, section 2.4)."""
    ring = client.eval("return cmsgpack.unpack(redis.call('GET', KEYS[1]))[1]", 1, key)
    return [int(x) for x in ring[::2]]
