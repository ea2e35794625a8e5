"""One spec, two executors: online (Redis) and offline (history) features must agree exactly.

Replays a simulated history with its feedback events, in stream order, through the online executor
on a real redis-server and compares every feature with the offline executor's value.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import redis
from feature_replay import dedupe_ring, parity_history, replay_online

from antifraud.features.fingerprint import TX_BITS, fingerprint
from antifraud.features.offline import OfflineFeatures
from antifraud.features.online import OnlineFeatures
from antifraud.features.spec import Distinct, Novelty, _windows, load_spec
from antifraud.features.stream import payment_record, stream


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return parity_history()


def test_online_equals_offline_on_20k_payments(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    assert len(history) >= 20_000
    names, online = replay_online(history, redis_client)
    offline = OfflineFeatures().transform(history)[names].to_numpy()
    counts = [
        i
        for i, n in enumerate(names)
        if "_count_" in n
        or "_distinct_" in n
        or "_known_frauds_" in n
        or n.endswith(("s_1h", "s_24h", "s_30d"))
    ]
    # counts must be equal exactly, everything else to 1e-9 relative
    assert np.array_equal(online[:, counts], offline[:, counts], equal_nan=True)
    close = np.isclose(online, offline, rtol=1e-9, atol=1e-9, equal_nan=True)
    bad = [(names[j], int((~close[:, j]).sum())) for j in range(len(names)) if not close[:, j].all()]
    assert not bad, f"features differ online vs offline: {bad}"
    # the comparison is not vacuous: stateful features carry information on this history
    for name in (
        "card_count_24h",
        "card_declines_24h",
        "merchant_fraud_rate_30d",
        "merchant_known_frauds_7d",
        "device_distinct_cards_7d",
        "card_new_device",
        "card_amount_zscore_30d",
        "card_reversals_30d",
    ):
        column = offline[:, names.index(name)]
        assert np.nanstd(column) > 0, name


def test_test_payments_change_nothing(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    """Test payments (`record=False`) sent between the replayed ones, on the same cards and
    merchants, at odd times: every replayed payment still sees exactly the offline features."""
    sample = history.iloc[:3000].reset_index(drop=True)
    online = OnlineFeatures(redis_client)
    values = np.full((len(sample), len(online.feature_names)), np.nan)
    for event, row, t_ms in stream(sample):
        record = payment_record(sample, row)
        if event != "payment":
            online.feedback(event, record["transaction_id"], t_ms, record)
            continue
        if row % 3 == 0:
            shift = [0, -86_400_000, -40 * 86_400_000, 240_000][row % 4]
            probe = {**record, "transaction_id": f"probe{row}", "timestamp": t_ms + shift}
            online.score(probe, record=False)
            online.score(record, record=False)
        values[row] = online.score(record).values
    offline = OfflineFeatures().transform(sample)[online.feature_names].to_numpy()
    assert np.allclose(values, offline, rtol=1e-9, atol=1e-9, equal_nan=True)
    # and no dedupe ring holds a test payment's id
    rings = [dedupe_ring(redis_client, key) for key in redis_client.scan_iter(match="*:s", count=5000)]
    probes = {fingerprint(f"probe{row}", TX_BITS) for row in range(len(sample))}
    assert any(rings) and not probes & set().union(*rings)


def test_retry_is_not_counted_twice(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    online = OnlineFeatures(redis_client)
    first = payment_record(history, 0)
    second = {**payment_record(history, 1), "card_id": first["card_id"]}
    online.score(first)
    again = online.score(first)
    assert again.duplicate
    after = online.score(second)
    assert after.values[online.feature_names.index("card_count_24h")] == 1.0


def test_every_key_has_a_ttl(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    """TTLs bound memory: after a replay with feedback, no key of the online executor lives forever."""
    replay_online(history.iloc[:3000], redis_client)
    keys = list(redis_client.scan_iter(count=5000))
    assert keys
    pipe = redis_client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    forever = [k for k, ttl in zip(keys, pipe.execute(), strict=True) if ttl < 0]
    assert not forever, forever[:5]
    parts = {k.decode().split("}:", 1)[1] for k in keys}
    assert parts == {"s", "p"}, parts


def test_distinct_set_of_an_entity_without_exact_windows(
    history: pd.DataFrame, redis_client: redis.Redis
) -> None:
    """A merchant has no exact windows (no head): its distinct cards and new-card flag come from the
    capped set in its state all the same, and no other key."""
    base = load_spec()
    spec = replace(
        base,
        distinct=(*base.distinct, Distinct("merchant", "card_id", "cards", _windows(["1h", "24h"]))),
        novelty=(*base.novelty, Novelty("merchant", "card_id", "new_card", 24 * 3600 * 1000)),
    )
    sample = history.iloc[:4000].reset_index(drop=True)
    names, online = replay_online(sample, redis_client, spec)
    offline = OfflineFeatures(spec).transform(sample)[names].to_numpy()
    assert {"merchant_distinct_cards_1h", "merchant_distinct_cards_24h", "merchant_new_card"} <= set(names)
    assert np.allclose(online, offline, rtol=1e-9, atol=1e-9, equal_nan=True)
    assert np.nanmax(offline[:, names.index("merchant_distinct_cards_24h")]) > 10
    assert not list(redis_client.scan_iter(match="*:d:*"))


def test_known_frauds_of_busy_terminals(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    """Known-fraud counts and shares per terminal agree online and offline, with labels that arrive
    the same day, weeks later, after their bucket left every window, and (bad data) before the
    payment itself; a label counts only for payments after it, in the bucket of the payment it is about."""
    rng = np.random.default_rng(5)
    sample = history.iloc[::5].reset_index(drop=True).copy()
    sample["terminal_id"] = [f"t{code % 6}" for code in pd.factorize(sample["merchant_id"])[0]]
    fraud = rng.random(len(sample)) < 0.04
    delay = pd.to_timedelta(rng.uniform(-2, 40 * 24, len(sample)), unit="h")
    sample["label"] = fraud.astype("int8")
    sample["label_time"] = (sample["timestamp"] + delay).where(fraud, pd.NaT)
    names, online = replay_online(sample, redis_client)
    offline = OfflineFeatures().transform(sample)[names].to_numpy()
    # the simulator replaces a card once its fraud is reported, so the card-level fraud count is
    # exercised here, where labels fall on cards that keep paying
    for prefix in (
        "terminal_known_frauds_",
        "terminal_fraud_rate_",
        "merchant_known_frauds_",
        "card_frauds_",
    ):
        columns = [i for i, n in enumerate(names) if n.startswith(prefix)]
        same = np.allclose(online[:, columns], offline[:, columns], rtol=1e-12, atol=0, equal_nan=True)
        assert same, prefix
    assert (offline[:, names.index("card_frauds_30d")] > 0).any()
    known = offline[:, names.index("terminal_known_frauds_30d")]
    assert np.nanmax(known) >= 5
    assert (offline[:, names.index("terminal_known_frauds_1d")] > 0).any()
    lagged = offline[:, names.index("terminal_known_frauds_7d_lag14d")]
    recent = offline[:, names.index("terminal_known_frauds_7d")]
    assert (lagged > 0).any() and not np.array_equal(lagged, recent)
