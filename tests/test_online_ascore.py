"""`OnlineFeatures.ascore` is `score` on the event loop: the same features, the same recording, the
same duplicates, and a peek that writes nothing; payments in flight together each get their own."""

from __future__ import annotations

import asyncio

import numpy as np
import redis

from antifraud.features.online import OnlineFeatures
from antifraud.features.stream import payment_record, stream
from antifraud.training.simulator import simulate


def _payments() -> list[dict[str, object]]:
    history = simulate(days=7, cards=60, merchants=20, seed=5)
    history = history.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return [dict(payment_record(history, row)) for event, row, _ in stream(history) if event == "payment"]


def test_ascore_equals_score_in_order_and_in_flight(redis_client: redis.Redis) -> None:
    payments = _payments()
    blocking = OnlineFeatures(redis_client, namespace="sync")
    looping = OnlineFeatures(redis_client, namespace="async")
    expected = [blocking.score(p) for p in payments]

    async def run() -> list[object]:
        # in flight ten at a time: distinct payments, whose calls Redis runs in the order sent
        out = []
        for i in range(0, len(payments), 10):
            out += await asyncio.gather(*[looping.ascore(p) for p in payments[i : i + 10]])
        return out

    got = asyncio.run(run())
    assert len(got) == len(expected) > 100
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine.values, theirs.values)  # type: ignore[attr-defined]
        assert mine.duplicate is theirs.duplicate is False  # type: ignore[attr-defined]

    async def again() -> tuple[bool, bool, int]:
        keys_before = len(redis_client.keys("async:*"))
        retry = await looping.ascore(payments[-1])
        peek = await looping.ascore({**payments[-1], "transaction_id": "peeked"}, record=False)
        return retry.duplicate, peek.duplicate, len(redis_client.keys("async:*")) - keys_before

    duplicate, peek_duplicate, new_keys = asyncio.run(again())
    assert duplicate and not peek_duplicate and new_keys == 0
