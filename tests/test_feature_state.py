"""Bounded feature state (docs/feature-state.md, section 2.1): exact windows keep an entity's last
`head` payments one by one and older ones in tail buckets, once the head overflows.

Parity with the offline executor on the overflow paths (a spec of tiny heads, and hot entities with
the default spec), the time-safety rules with tiny heads (late, decades-old and early payments),
and the state's size staying flat however many payments a hot entity records.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import redis
from feature_replay import dedupe_ring, parity_history, replay_online

from antifraud.features.fingerprint import TX_BITS, fingerprint
from antifraud.features.offline import OfflineFeatures
from antifraud.features.online import OnlineFeatures, entity_prefix, to_milli
from antifraud.features.spec import FeatureSpec, load_spec

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_772_323_200_000  # 2026-03-01 UTC


def tiny_heads(card: int = 4, others: int = 3) -> FeatureSpec:
    """The default spec with heads of a few payments: every busy entity overflows its head."""
    base = load_spec()
    velocity = tuple(dataclasses.replace(v, head=card if v.entity == "card" else None) for v in base.velocity)
    return dataclasses.replace(base, velocity=velocity, head_limit=others)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return parity_history()


def _assert_parity(names: list[str], online: np.ndarray, offline: np.ndarray) -> None:
    counts = [i for i, n in enumerate(names) if "_count_" in n or "_distinct_" in n]
    assert np.array_equal(online[:, counts], offline[:, counts], equal_nan=True)
    close = np.isclose(online, offline, rtol=1e-9, atol=1e-9, equal_nan=True)
    bad = [(names[j], int((~close[:, j]).sum())) for j in range(len(names)) if not close[:, j].all()]
    assert not bad, f"features differ online vs offline: {bad}"


def _tiled_rows(spec: FeatureSpec, history: pd.DataFrame, names: Sequence[str], feature: str) -> np.ndarray:
    """Rows where `feature` read tail buckets: it differs from the value with heads that never fill."""
    huge = dataclasses.replace(
        spec, velocity=tuple(dataclasses.replace(v, head=None) for v in spec.velocity), head_limit=10**9
    )
    exact = OfflineFeatures(huge).transform(history)[list(names)].to_numpy()
    tiled = OfflineFeatures(spec).transform(history)[list(names)].to_numpy()
    j = list(names).index(feature)
    return ~np.isclose(exact[:, j], tiled[:, j], equal_nan=True)


def test_tiny_heads_online_equals_offline(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    """Heads of 3-4 payments on 20,000 payments: every card, IP, device, email and card x merchant
    pair overflows, so eviction, tail buckets (dropped as they leave their window), the spread merged
    from bucket partials and the exact path after a quiet spell all meet the offline executor."""
    spec = tiny_heads()
    names, online = replay_online(history, redis_client, spec)
    offline = OfflineFeatures(spec).transform(history)[names].to_numpy()
    _assert_parity(names, online, offline)
    # distinct values past the head went to `d:` ZSETs (the others stayed in the state)
    spilled = {k.decode().rsplit(":", 1)[1] for k in redis_client.scan_iter(match="*:d:*", count=5000)}
    assert {"merchant_id", "card_id"} <= spilled
    # the comparison is not vacuous: the tails were read, and cost some exactness where a window's
    # lowest tail bucket reaches past it (the 30-day tails at 1 d over this 21-day history lose nothing)
    tiled_features = ("card_count_7d", "card_max_24h", "customer_count_24h", "email_count_7d")
    for feature in (*tiled_features, "card_merchant_count_24h"):
        assert _tiled_rows(spec, history, names, feature).sum() > 20, feature
    # the spread merged from the tail buckets' partials, on most payments of a card
    tiled = offline[:, names.index("card_count_30d")] > 4
    assert tiled.sum() > len(history) / 2
    assert np.nanstd(offline[tiled, names.index("card_amount_zscore_30d")]) > 0


def test_hot_entities_with_the_default_heads(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    """The design's hot entities overflow the default heads (64; 256 for a card): an IP shared by
    every sixth payment (~200 a day, from ~1,300 cards) and a card with 400 payments at many
    merchants in 6 days. Both executors agree."""
    sample = history.iloc[:8000].reset_index(drop=True).copy()
    sample.loc[np.arange(0, len(sample), 6), "ip"] = "203.0.113.7"
    sample.loc[np.arange(3, len(sample), len(sample) // 400)[:400], "card_id"] = "hot-card"
    spec = load_spec()
    names, online = replay_online(sample, redis_client, spec)
    offline = OfflineFeatures(spec).transform(sample)[names].to_numpy()
    _assert_parity(names, online, offline)
    assert np.nanmax(offline[:, names.index("card_count_7d")]) > 256
    assert _tiled_rows(spec, sample, names, "ip_count_24h").sum() > 100


def _pay(online: OnlineFeatures, n: int, t: int, cents: int, card: str = "c0") -> dict[str, float]:
    body = {
        "transaction_id": f"tx{n}",
        "timestamp": t,
        "card_id": card,
        "merchant_id": f"m{n % 3}",
        "terminal_id": "term",
        "ip": "198.51.100.1",
        "ip_country": "FR",
        "amount": cents / 100,
        "currency": "EUR",
        "channel": "ecom",
    }
    result = online.score(body)
    assert not result.duplicate
    return dict(zip(online.feature_names, result.values.tolist(), strict=True))


CARD_WINDOWS = {"10m": 10 * MINUTE, "1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
FAR_PAST = 31_536_000_000  # 1971


def test_tiny_heads_keep_the_time_rules(redis_client: redis.Redis) -> None:
    """Late, decades-old and early payments with a head of 4 (docs/features.md, "Time"): a window
    reads at the effective time te = max(t, the latest payment); it never counts a payment older than
    te - w nor more than were sent, and always counts those of the last 4 recorded arrivals inside it
    (the head). A second executor gets the same payments and, now and then, one stamped decades ago:
    it answers every later payment exactly as the first."""
    rng = np.random.default_rng(7)
    spec = tiny_heads(card=4)
    online = OnlineFeatures(redis_client, spec, namespace="a")
    poisoned = OnlineFeatures(redis_client, spec, namespace="b")
    head: list[tuple[int, int]] = []  # the last 4 recorded arrivals: (time, milli)
    sent: list[tuple[int, int]] = []
    now = T0
    for n in range(400):
        now += int(rng.choice([0, rng.integers(0, 5 * MINUTE), rng.integers(0, 6 * HOUR)]))
        t = now + int(rng.choice([0, 0, 0, -rng.integers(0, 3 * HOUR), -rng.integers(0, 20 * DAY), 90_000]))
        cents = int(rng.integers(100, 50_000))
        x = _pay(online, n, t, cents)
        if n % 25 == 7:
            _pay(poisoned, 100_000 + n, FAR_PAST + n * MINUTE, cents)
        y = _pay(poisoned, n, t, cents)
        assert np.allclose(list(x.values()), list(y.values()), rtol=0, atol=0, equal_nan=True), n
        te = max([t, *(s for s, _ in sent)])
        for label, ms in CARD_WINDOWS.items():
            inside = [m for s, m in sent if s >= te - ms]
            floor = [m for s, m in head if s >= te - ms]
            count, total = x[f"card_count_{label}"], x[f"card_sum_{label}"]
            assert len(floor) <= count <= len(inside), (n, label)
            assert sum(floor) / 1000 - 1e-6 <= total <= sum(inside) / 1000 + 1e-6, (n, label)
            if inside:
                assert x[f"card_max_{label}"] <= max(inside) / 1000
        if t >= te - 30 * DAY:  # recorded: inside the longest window at its effective time
            sent.append((t, to_milli(cents / 100)))
            head = [*head, (t, to_milli(cents / 100))][-4:]
    assert len(sent) > 300


def test_a_hot_ip_state_stays_bounded(redis_client: redis.Redis) -> None:
    """The issue's IP, 0.4 s apart from distinct cards: its state string (head, tails and the ring of
    its last 64 transaction ids) stops growing once the head and the ring are full (the
    distinct-card set is a later step of the design)."""
    online = OnlineFeatures(redis_client)
    key = entity_prefix("af", "ip", "198.51.100.1") + ":s"
    sizes = []
    for n in range(1500):
        _pay(online, n, T0 + 400 * n, 1000 + n % 97, card=f"card{n}")
        if n + 1 in (200, 600, 1500):
            sizes.append(int(redis_client.memory_usage(key) or 0))
    assert sizes[-1] < 2_400, sizes
    assert sizes[-1] <= sizes[0] + 200, sizes


def test_a_state_written_before_heads_is_taken_over(redis_client: redis.Redis) -> None:
    """A card state of the layout before heads (every event: time, amount, merchant, country,
    device) is read on the card's next payment as the new layout would hold it: its events become
    the head (the oldest folded into the tails past the cap), its field values the distinct values."""
    spec = tiny_heads(card=4)
    old, new = (
        OnlineFeatures(redis_client, spec, namespace="a"),
        OnlineFeatures(redis_client, spec, namespace="b"),
    )
    times = [T0 + k * 7 * MINUTE for k in range(9)]
    events: list[object] = [5]  # the stride: time, amount and three field values per event
    for n, t in enumerate(times[:-2]):
        _pay(old, n, t, 1000 + 37 * n)
        _pay(new, n, t, 1000 + 37 * n)
        events += [t, to_milli((1000 + 37 * n) / 100), f"m{n % 3}", "FR", ""]
    state = [0, 0, events, [], [], [], times[-3]]
    blob = redis_client.eval("return cmsgpack.pack(cjson.decode(ARGV[1]))", 0, json.dumps(state))
    redis_client.set(entity_prefix("a", "card", "c0") + ":s", blob, px=DAY)
    for n, t in enumerate(times[-2:], start=len(times) - 2):
        x, y = _pay(old, n, t, 2000 + n), _pay(new, n, t, 2000 + n)
        assert x.keys() == y.keys()
        assert all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in x), n
    assert x["card_count_1h"] == 8 and x["card_distinct_merchants_1h"] == 3


def _legacy_state(client: redis.Redis, prefix: str) -> None:
    """Rewrite an entity's state as the layout before the dedupe rings wrote it: [1] and [2] the
    numbers that layout kept there (its record's TTL and trim stamps) and no feedback rings."""
    client.eval(
        "local s = cmsgpack.unpack(redis.call('GET', KEYS[1])); s[1] = 7; s[2] = 7; "
        "redis.call('SET', KEYS[1], cmsgpack.pack(s), 'KEEPTTL')",
        1,
        prefix + ":s",
    )


def test_a_state_written_before_the_rings_is_taken_over(redis_client: redis.Redis) -> None:
    """The layout before the rings kept a block's transaction ids in the ZSET `ev` and feedback ids
    in `f:<event>`: a retry of one of them is still a duplicate, the next payment and the next
    feedback take them over into the state (the same fingerprints the client computes) and delete
    the old keys."""
    online = OnlineFeatures(redis_client)
    prefix = entity_prefix("af", "card", "c0")
    ids = [f"old{k}" for k in range(70)]
    _pay(online, 0, T0, 1000)
    _legacy_state(redis_client, prefix)
    redis_client.zadd(prefix + ":ev", {txid: T0 - 1000 + k for k, txid in enumerate(ids)})
    redis_client.zadd(prefix + ":f:decline", {"old3": T0 - 500})
    body = {"transaction_id": "old10", "timestamp": T0 - 990, "card_id": "c0", "amount": 1.0}
    assert online.score(body).duplicate
    assert redis_client.exists(prefix + ":ev")  # a duplicate writes nothing
    _pay(online, 1, T0 + MINUTE, 1000)
    assert not redis_client.exists(prefix + ":ev")
    # the record's last 64 ids by time became the ring; a full ring lets its first go for this payment
    expected = [fingerprint(txid, TX_BITS) for txid in ids[-64:]]
    assert dedupe_ring(redis_client, prefix + ":s") == [*expected[1:], fingerprint("tx1", TX_BITS)]
    assert online.score({**body, "transaction_id": "old69"}).duplicate
    assert not online.feedback("decline", "old3", T0 + 2 * MINUTE, body)
    assert redis_client.exists(prefix + ":f:decline")
    assert online.feedback("decline", "tx1", T0 + 2 * MINUTE, body)
    assert not redis_client.exists(prefix + ":f:decline")
    assert not online.feedback("decline", "old3", T0 + 3 * MINUTE, body)
