"""Bounded feature state (docs/feature-state.md, sections 2.1-2.5): exact windows keep an entity's
last `head` payments one by one and older ones in tail buckets, once the head overflows; distinct
counts and novelty come from a capped set of the values seen most recently, feedback counts from the
last events of each kind, dedupe from a ring of the last transaction ids; card x merchant from the
card's head.

Parity with the offline executor on the overflow paths (a spec of tiny caps, and hot entities with
the default caps), the time-safety rules with tiny heads (late, decades-old and early payments),
the memory of a hot entity staying flat however many payments it records, and the layouts before
taken over.
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
from feature_replay import parity_history, replay_online

from antifraud.features.offline import OfflineFeatures, _DistinctInRanges
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


def tiny_caps() -> FeatureSpec:
    """Every cap tiny (heads 3-4, distinct 2, feedback 2, dedupe 4): each overflow path is taken."""
    return dataclasses.replace(tiny_heads(), distinct_limit=2, feedback_limit=2, dedupe_limit=4)


def _uncapped(spec: FeatureSpec) -> FeatureSpec:
    return dataclasses.replace(
        spec,
        velocity=tuple(dataclasses.replace(v, head=None) for v in spec.velocity),
        head_limit=10**9,
        distinct_limit=10**9,
        feedback_limit=10**9,
    )


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
    """Rows where `feature` met a cap (read tail buckets, saturated, forgot a value): it differs from
    the value with caps that are never reached."""
    exact = OfflineFeatures(_uncapped(spec)).transform(history)[list(names)].to_numpy()
    tiled = OfflineFeatures(spec).transform(history)[list(names)].to_numpy()
    j = list(names).index(feature)
    return ~np.isclose(exact[:, j], tiled[:, j], equal_nan=True)


def test_tiny_caps_online_equals_offline(history: pd.DataFrame, redis_client: redis.Redis) -> None:
    """Heads of 3-4 payments, distinct sets of 2 values, feedback lists of 2 events and dedupe rings
    of 4 ids on 20,000 payments: every card, IP, device, email and card x merchant pair overflows,
    so eviction, tail buckets (dropped as they leave their window), the spread merged from bucket
    partials, the exact path after a quiet spell, saturated distinct and feedback counts and values
    forgotten by a full set all meet the offline executor."""
    spec = tiny_caps()
    names, online = replay_online(history, redis_client, spec)
    offline = OfflineFeatures(spec).transform(history)[names].to_numpy()
    _assert_parity(names, online, offline)
    assert not list(redis_client.scan_iter(match="*:d:*", count=5000))
    # the comparison is not vacuous: the tails were read, and cost some exactness where a window's
    # lowest tail bucket reaches past it (the 30-day tails at 1 d over this 21-day history lose
    # nothing); counts saturated, and full sets forgot values
    tails = ["card_count_7d", "card_max_24h", "customer_count_24h", "email_count_7d"]
    caps = ["card_distinct_merchants_24h", "ip_distinct_cards_7d", "card_new_merchant", "card_declines_24h"]
    for feature in [*tails, "card_merchant_count_24h", *caps]:
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
    hot = np.arange(3, len(sample), len(sample) // 400)[:400]
    sample.loc[hot, "card_id"] = "hot-card"
    # mostly at three merchants: card x merchant, read from the card's head, then counts only the
    # card's last 256 payments
    sample.loc[hot[::4], "merchant_id"] = [f"M{k % 3}" for k in range(len(hot[::4]))]
    spec = load_spec()
    names, online = replay_online(sample, redis_client, spec)
    offline = OfflineFeatures(spec).transform(sample)[names].to_numpy()
    _assert_parity(names, online, offline)
    assert np.nanmax(offline[:, names.index("card_count_7d")]) > 256
    assert _tiled_rows(spec, sample, names, "ip_count_24h").sum() > 100
    assert _tiled_rows(spec, sample, names, "card_merchant_count_30d").sum() > 20


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


def test_a_hot_ip_stays_bounded(redis_client: redis.Redis) -> None:
    """An IP paying for a new card every 20 s: once it has recorded 5,000 payments (28 hours: every
    window and tail of it full), its keys (its state alone: head, tails, the set of its last 64
    cards, the ring of its last 64 ids) total less than 4 KB of MEMORY USAGE, and 5,000 more
    payments add nothing. (The issue's IP, 0.4 s apart, fills its 24-hour tail for a day first:
    `benchmarks/bench_hot_entity.py`.)"""
    online = OnlineFeatures(redis_client)
    prefix = entity_prefix("af", "ip", "198.51.100.1")

    def used() -> tuple[list[bytes], int]:
        keys = sorted(redis_client.scan_iter(match=prefix + ":*", count=1000))
        return keys, sum(int(redis_client.memory_usage(k, samples=0) or 0) for k in keys)

    sizes = []
    for n in range(10_000):
        _pay(online, n, T0 + 20_000 * n, 1000 + n % 97, card=f"card{n}")
        if n + 1 in (5_000, 10_000):
            keys, size = used()
            assert keys == [prefix.encode() + b":s"], keys
            sizes.append(size)
    assert sizes[0] < 4_000, sizes
    assert sizes[1] <= sizes[0], sizes


@pytest.mark.parametrize("rings", [False, True])
def test_a_state_of_the_layout_before_fingerprints_is_taken_over(
    redis_client: redis.Redis, rings: bool
) -> None:
    """The layout before fingerprints (docs/feature-state.md, 2.1 as built) kept a card's distinct
    values as text in its exact-window table (value, last seen, ...; `{0}` once spilled into the ZSET
    `d:<field>`), its transaction ids in the ZSET `ev` and its feedback ids in `f:<event>` (or, for a
    short while, in rings already: `rings`). A retry of one of those ids is still a duplicate, and
    the card's next payment reads the state as a card that never had the old layout: the same
    features, the old keys deleted (its next feedback event of a kind takes that kind's ids over)."""
    spec = tiny_heads(card=4)
    old, new = (
        OnlineFeatures(redis_client, spec, namespace="a"),
        OnlineFeatures(redis_client, spec, namespace="b"),
    )
    times = [T0 + k * 7 * MINUTE for k in range(9)]
    for n, t in enumerate(times[:-2]):
        _pay(old, n, t, 1000 + 37 * n)
        _pay(new, n, t, 1000 + 37 * n)
    for executor in (old, new):
        executor.feedback("decline", "tx2", times[6] + 1, {"card_id": "c0"})
    prefix = entity_prefix("a", "card", "c0")
    block = next(b for b in old._blocks if b.plan.entity == "card")
    layout = int(block.tokens[block.tokens.index("E") + 2])  # the number the old layout gave it
    # the merchants spilled into their ZSET, the countries in the table; no device
    merchants = {f"m{n % 3}": times[n] for n in range(7)}
    redis_client.zadd(prefix + ":d:merchant_id", merchants)
    if not rings:
        redis_client.zadd(prefix + ":ev", {f"tx{n}": t for n, t in enumerate(times[:7])})
        redis_client.zadd(prefix + ":f:decline", {"tx2": times[6] + 1})
    # (and its head had no merchant fingerprints: section 2.5)
    rewrite = """local s = cmsgpack.unpack(redis.call('GET', KEYS[1]))
        local e, h = s[3], {}
        for j = 1, #e[2], 3 do h[#h + 1] = e[2][j]; h[#h + 1] = e[2][j + 1] end
        e[2] = h
        e[1] = tonumber(ARGV[1]); e[#e + 1] = {0}; e[#e + 1] = cjson.decode(ARGV[2]); e[#e + 1] = {}
        table.remove(s, 4)
        if ARGV[3] == '0' then s[1] = 0; s[2] = 0 end
        redis.call('SET', KEYS[1], cmsgpack.pack(s), 'KEEPTTL')"""
    redis_client.eval(rewrite, 1, prefix + ":s", layout, json.dumps(["FR", times[6]]), int(rings))
    retry = {"transaction_id": "tx3", "timestamp": times[3], "card_id": "c0", "amount": 1.0}
    assert old.score(retry).duplicate
    for n, t in enumerate(times[-2:], start=len(times) - 2):
        x, y = _pay(old, n, t, 2000 + n), _pay(new, n, t, 2000 + n)
        _assert_same(x, y, n)
        # the payments of the old head are at an unknown merchant (the new: one of them at m1, m2)
        assert (x["card_merchant_count_24h"], y["card_merchant_count_24h"]) == (0, 1), n
    assert x["card_count_1h"] == 8 and x["card_distinct_merchants_1h"] == 3 and x["card_new_merchant"] == 0
    assert not redis_client.exists(prefix + ":ev", prefix + ":d:merchant_id")
    assert old.score(retry).duplicate
    assert not old.feedback("decline", "tx2", times[8] + 1, {"card_id": "c0"})
    assert redis_client.exists(prefix + ":f:decline") != rings
    assert old.feedback("decline", "tx5", times[8] + 1, {"card_id": "c0"})
    assert not redis_client.exists(prefix + ":f:decline")
    assert not old.feedback("decline", "tx2", times[8] + 2, {"card_id": "c0"})


def _assert_same(x: dict[str, float], y: dict[str, float], n: int, but: str = "card_merchant_") -> None:
    """The same features, but those whose names start with `but` ('': all the same)."""
    assert x.keys() == y.keys()
    same = [k for k in x if not (but and k.startswith(but))]
    assert all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k])) for k in same), n


def test_a_card_head_without_merchants_is_taken_over(redis_client: redis.Redis) -> None:
    """Before card x merchant was folded into the card (docs/feature-state.md, 2.5 as built), the
    card's head held (time, amount) pairs and each pair was its own entity with its own key. The
    card's next payment keeps its head and tails, its old payments at an unknown merchant until they
    leave the head (by its cap or by age): the card's features are those of a card that was never
    of the layout before, card x merchant counts only the payments since. The pair's keys are no
    longer read nor written, and expire with their TTL."""
    spec = tiny_heads(card=4)
    flat = dataclasses.replace(spec, within={})
    before, after, fresh = (
        OnlineFeatures(redis_client, flat, namespace="a"),
        OnlineFeatures(redis_client, spec, namespace="a"),
        OnlineFeatures(redis_client, spec, namespace="b"),
    )
    times = [T0 + k * 7 * MINUTE for k in range(12)]
    for n, t in enumerate(times[:6]):
        _assert_same(_pay(before, n, t, 1000 + 37 * n), _pay(fresh, n, t, 1000 + 37 * n), n, but="")
    pair = entity_prefix("a", "card_merchant", "c0|m0") + ":s"
    kept, ttl = redis_client.get(pair), redis_client.pttl(pair)
    assert kept is not None and 0 < ttl <= 30 * DAY
    counts = []
    for n, t in enumerate(times[6:], start=6):
        x, y = _pay(after, n, t, 1000 + 37 * n), _pay(fresh, n, t, 1000 + 37 * n)
        _assert_same(x, y, n)
        counts.append((x["card_merchant_count_24h"], y["card_merchant_count_24h"]))
    # m0, m1, m2, m0, m1, m2: the old payments 2-5 leave the head as the new ones come
    assert counts == [(0, 1), (0, 1), (0, 1), (1, 1), (1, 1), (1, 1)]
    assert redis_client.get(pair) == kept and 0 < redis_client.pttl(pair) <= ttl
    assert not list(redis_client.scan_iter(match="b:{card_merchant:*", count=1000))


def test_distinct_values_of_ranges() -> None:
    """The offline executor's distinct counts rest on `_DistinctInRanges` (the values of [lo, hi)
    from the next-occurrence array): against a direct count, on sequences of every length up to 70
    with valueless elements."""
    rng = np.random.default_rng(3)
    for n in range(1, 71):
        values = rng.integers(-1, max(2, n // 3), n)
        nxt = np.full(n, n)
        seen: dict[int, int] = {}
        for j in range(n - 1, -1, -1):
            nxt[j] = seen.get(int(values[j]), n)
            seen[int(values[j])] = j
        nxt[values < 0] = -1
        lo = rng.integers(0, n + 1, 200)
        hi = np.maximum(lo, rng.integers(0, n + 1, 200))
        expected = [len({v for v in values[a:b] if v >= 0}) for a, b in zip(lo, hi, strict=True)]
        assert _DistinctInRanges(nxt).count(lo, hi).tolist() == expected, n


# op B's parts (closed buckets as one MessagePack string, b0, layout, closed sums, open buckets)
# turned back into the plain bucket list of the layout before them
_PLAIN_BUCKETS = """local s = cmsgpack.unpack(redis.call('GET', KEYS[1]))
    for i = 5, #s do
      local v = s[i]
      if type(v) == 'table' and type(v[1]) == 'string' then
        local all, open = cmsgpack.unpack(v[1]), v[5]
        for j = 1, #open do all[#all + 1] = open[j] end
        s[i] = all
      end
    end
    redis.call('SET', KEYS[1], cmsgpack.pack(s), 'KEEPTTL')"""


def test_bucket_lists_of_the_layout_before_are_taken_over(redis_client: redis.Redis) -> None:
    """A merchant's and a terminal's buckets (docs/feature-state.md, "5.1 as built"): a
    call reads its closed buckets' sums while the current bucket is the one it wrote them at, so that
    it decodes a handful of numbers, not every bucket. A state of the plain bucket list of the layout
    before is taken over on its next payment, and fraud labels about closed and open buckets, late
    payments into closed ones and new buckets read what a state never of that layout reads."""
    spec = load_spec()
    before, fresh = (
        OnlineFeatures(redis_client, spec, namespace="a"),
        OnlineFeatures(redis_client, spec, namespace="b"),
    )
    # three payments a day at three merchants over twelve days; every fourth a day late
    times = [T0 + (n // 3) * DAY + (n % 3) * 5 * HOUR for n in range(36)]
    stamps = [t - DAY if n % 4 == 3 else t for n, t in enumerate(times)]
    state_keys = [entity_prefix("a", "merchant", "m0") + ":s", entity_prefix("a", "terminal", "term") + ":s"]
    for n, t in enumerate(stamps):
        if n in (13, 25):  # the terminal then reads its closed sums (its second payment of the day)
            for key in state_keys:
                redis_client.eval(_PLAIN_BUCKETS, 1, key)
        x, y = _pay(before, n, t, 1000 + 37 * n), _pay(fresh, n, t, 1000 + 37 * n)
        _assert_same(x, y, n, but="")
        if n % 5 == 4:
            # a fraud label about a payment of some days ago (a closed bucket) and of this one (open)
            for m in (n - 4, n):
                payment = {
                    "card_id": "c0",
                    "merchant_id": f"m{m % 3}",
                    "terminal_id": "term",
                    "timestamp": stamps[m],
                }
                for executor in (before, fresh):
                    assert executor.feedback("fraud", f"tx{m}", times[n] + MINUTE, payment)
    assert x["merchant_known_frauds_30d"] > 0 and x["terminal_known_frauds_7d_lag7d"] > 0
    state = redis_client.eval("return cmsgpack.unpack(redis.call('GET', KEYS[1]))[7][1]", 1, state_keys[0])
    assert isinstance(state, bytes)  # the daily buckets' closed part, written anew
