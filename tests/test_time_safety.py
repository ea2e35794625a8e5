"""Time that cannot be poisoned: the online feature state under any payment and feedback times.

The API refuses payments stamped more than the clock-skew tolerance ahead of the service's clock;
everything else reaches `OnlineFeatures`: late payments, payments stamped decades ago, payments a
few minutes ahead, feedback reported at odd times, retries and retries with changed fields. The
property test sends random sequences of them to a real redis-server and checks every answer
against a model of what the state must hold (docs/features.md, "Time"): each entity reads at its
effective time te = max(t, its latest recorded payment), a payment is recorded at its own time,
and a duplicate records nothing anywhere. The model also checks what the issue asked for in
general terms: no negative durations, no age beyond the history sent, no count above the
payments sent, no count that drops while the effective time stands still, ratios in range.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.features.online import OnlineFeatures, OnlineResult, to_milli
from antifraud.features.spec import load_spec

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
SKEW = 5 * MINUTE  # the API's default tolerance for payments stamped ahead of its clock
LATE = load_spec().dedupe_horizon_ms  # how far back a late payment may still move a card's first time
CARD_WINDOWS = {"10m": 10 * MINUTE, "1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}


@pytest.fixture(scope="module")
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """One client for the module (hypothesis reruns the test body: function fixtures are not reset)."""
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def online(client: redis.Redis) -> OnlineFeatures:
    return OnlineFeatures(client)


def payment(
    txid: str,
    t_ms: int,
    card: str = "c0",
    merchant: str = "m0",
    device: str | None = "d0",
    amount: float = 10.0,
    country: str = "FR",
) -> dict[str, Any]:
    """A payment as the online executor reads it (canonical fields; absent ones read as None)."""
    return {
        "transaction_id": txid,
        "timestamp": t_ms,
        "card_id": card,
        "merchant_id": merchant,
        "terminal_id": f"term_{merchant}",
        "device_id": device,
        "ip_country": country,
        "amount": amount,
        "currency": "EUR",
        "channel": "ecom",
        "mcc": "5411",
    }


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes | None, int]]:
    """Every key's serialized value and whether it has a TTL (DUMP leaves TTLs out; PTTL moves)."""
    out = {}
    for key in client.scan_iter(count=1000):
        dumped = client.dump(key)
        out[key] = (dumped if isinstance(dumped, bytes) else None, 1 if client.pttl(key) > 0 else 0)
    return out


def pttls(client: redis.Redis) -> dict[bytes, int]:
    return {key: int(client.pttl(key)) for key in client.scan_iter(count=1000)}


# ---------------------------------------------------------------------------------------------
# The model: what the state must answer, from what was recorded


@dataclass
class Recorded:
    txid: str
    t: int
    card: str
    merchant: str
    device: str | None
    milli: int
    country: str


@dataclass
class Model:
    """Everything recorded so far, and the card profiles' first times by the documented rule."""

    payments: list[Recorded] = field(default_factory=list)
    # (event, txid) -> (card, merchant, reported time): the first report only counts
    feedback: dict[tuple[str, str], tuple[str, str, int]] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)
    arrived_first: dict[str, int] = field(default_factory=dict)
    # the card's effective time and counts at its last answer: counts never drop while te stands
    last_read: dict[str, tuple[int, list[float]]] = field(default_factory=dict)

    def of(self, **match: str | None) -> list[Recorded]:
        return [p for p in self.payments if all(getattr(p, k) == v for k, v in match.items())]

    def te(self, t: int, **match: str | None) -> int:
        return max([t, *(p.t for p in self.of(**match))])

    def record(self, p: Recorded) -> None:
        card = self.of(card=p.card)
        if not card:
            self.first[p.card] = p.t
            self.arrived_first[p.card] = p.t
        elif p.t < self.first[p.card] and p.t >= max(q.t for q in card) - LATE:
            self.first[p.card] = p.t
        self.payments.append(p)


def window(events: list[Recorded], te: int, ms: int) -> list[Recorded]:
    return [p for p in events if p.t >= te - ms]


def bucketed(events: list[Recorded], te: int, ms: int, g: int) -> list[Recorded]:
    b = te // g
    return [p for p in events if b - ms // g < p.t // g <= b]


def check(model: Model, online: OnlineFeatures, p: Recorded, result: OnlineResult) -> None:
    """The answer to payment `p` against the model (before `p` is recorded)."""
    x = dict(zip(online.feature_names, result.values.tolist(), strict=True))
    card = model.of(card=p.card)
    te = model.te(p.t, card=p.card)
    counts = []
    for label, ms in CARD_WINDOWS.items():
        inside = window(card, te, ms)
        counts.append(x[f"card_count_{label}"])
        assert x[f"card_count_{label}"] == len(inside), label
        assert x[f"card_count_{label}"] <= len(card)
        assert math.isclose(x[f"card_sum_{label}"], sum(q.milli for q in inside) / 1000, abs_tol=1e-9)
        top = max((q.milli for q in inside), default=None)
        assert math.isnan(x[f"card_max_{label}"]) if top is None else x[f"card_max_{label}"] == top / 1000
    for label, ms in (("1h", HOUR), ("24h", DAY)):
        merchants = {q.merchant for q in window(card, te, ms)}
        countries = {q.country for q in window(card, te, ms)}
        assert x[f"card_distinct_merchants_{label}"] == len(merchants)
        assert x[f"card_distinct_countries_{label}"] == len(countries)
    recent = window(card, te, 30 * DAY)
    assert x["card_new_merchant"] == (0 if any(q.merchant == p.merchant for q in recent) else 1)
    if p.device is None:
        assert math.isnan(x["card_new_device"]) and math.isnan(x["device_count_24h"])
    else:
        assert x["card_new_device"] == (0 if any(q.device == p.device for q in recent) else 1)
        device = model.of(device=p.device)
        dte = model.te(p.t, device=p.device)
        for label, ms in (("1h", HOUR), ("24h", DAY)):
            assert x[f"device_count_{label}"] == len(window(device, dte, ms)), label
        for label, ms in (("24h", DAY), ("7d", 7 * DAY)):
            cards = {q.card for q in window(device, dte, ms)}
            assert x[f"device_distinct_cards_{label}"] == len(cards)
    # card x merchant is kept within the card (docs/feature-state.md, 2.5): read at the card's
    # effective time, among the card's payments the windows hold
    pair = model.of(card=p.card, merchant=p.merchant)
    for label, ms in (("24h", DAY), ("30d", 30 * DAY)):
        assert x[f"card_merchant_count_{label}"] == len(window(pair, te, ms)), label
    merchant = model.of(merchant=p.merchant)
    mte = model.te(p.t, merchant=p.merchant)
    assert x["merchant_count_1h"] == len(bucketed(merchant, mte, HOUR, 5 * MINUTE))
    assert x["merchant_count_24h"] == len(bucketed(merchant, mte, DAY, HOUR))
    assert x["terminal_count_24h"] == len(bucketed(merchant, mte, DAY, HOUR))
    # feedback about the card: counted once reported before the effective time, within the window
    card_feedback = [("decline", "declines_1h", HOUR), ("decline", "declines_24h", DAY)]
    for event, label, ms in [*card_feedback, ("fraud", "frauds_30d", 30 * DAY)]:
        reported = [r for (e, _), (c, _, r) in model.feedback.items() if e == event and c == p.card]
        assert x[f"card_{label}"] == sum(te - ms <= r < te for r in reported), label
    labels = sum(1 for (e, _), (_, m, _) in model.feedback.items() if e == "fraud" and m == p.merchant)
    for name, value in x.items():
        if "_fraud_rate_" in name:
            assert 0.0 <= value <= 1.0, name
        elif "_known_frauds_" in name:
            assert 0 <= value <= labels, name
        elif name.startswith("card_frequency_") or name == "card_amount_to_mean_30d":
            assert math.isnan(value) or value >= 0, name
    # the profile: never negative, never older than the history sent (by more than LATE before the
    # card's first payment in arrival order), and exactly the documented rule
    since, age = x["card_seconds_since_prev"], x["card_age_days"] * DAY
    if not card:
        assert math.isnan(since) and age == 0
    else:
        sent = [q.t for q in card] + [p.t]
        assert 0 <= since * 1000 <= max(sent) - min(sent) + 1e-3
        assert math.isclose(since * 1000, max(0, p.t - max(q.t for q in card)), abs_tol=1e-6)
        assert 0 <= age <= max(sent) - min(sent) + 1e-3
        assert age <= te - (model.arrived_first[p.card] - LATE) + 1e-3
        assert math.isclose(age, max(0, p.t - model.first[p.card]), abs_tol=1e-3)
    before = model.last_read.get(p.card)
    if before is not None and before[0] == te:
        assert all(now >= then for now, then in zip(counts, before[1], strict=True)), (counts, before)
    model.last_read[p.card] = (te, counts)


# ---------------------------------------------------------------------------------------------
# The property test

FAR_PAST = int(datetime(1971, 1, 1, tzinfo=UTC).timestamp() * 1000)

# a stamp against the clock of arrival: on time, a little or a lot late, decades old, a little ahead
offsets = st.one_of(
    st.just(0),
    st.integers(-2 * HOUR, 0),
    st.integers(-40 * DAY, 0),
    st.integers(FAR_PAST - T0, -(20 * 365 * DAY)),
    st.integers(1, SKEW),
)
steps = st.one_of(st.just(0), st.integers(0, 10 * MINUTE), st.integers(0, 3 * DAY))
actions = st.tuples(
    st.sampled_from(["pay", "pay", "pay", "pay", "retry", "changed", "decline", "fraud", "refeed"]),
    steps,
    offsets,
    st.integers(0, 2),  # card
    st.integers(0, 1),  # merchant
    st.sampled_from([None, "d0", "d1"]),
    st.integers(1, 50_000),  # cents
    st.sampled_from(["FR", "DE"]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(actions, min_size=5, max_size=40))
def test_no_feature_takes_an_impossible_value(
    online: OnlineFeatures, client: redis.Redis, script: list[tuple[Any, ...]]
) -> None:
    client.flushall()
    model = Model()
    now = T0
    last: Recorded | None = None
    sent_feedback: list[tuple[str, str, int, dict[str, Any]]] = []
    for n, (kind, step, offset, c, m, device, cents, country) in enumerate(script):
        now += step
        t = now + offset
        if kind == "pay" or last is None:
            p = Recorded(f"tx{n}", t, f"c{c}", f"m{m}", device, to_milli(cents / 100), country)
            result = online.score(payment(p.txid, p.t, p.card, p.merchant, p.device, cents / 100, country))
            assert not result.duplicate
            check(model, online, p, result)
            model.record(p)
            last = p
        elif kind in ("retry", "changed"):
            # the last payment again (a retry), or with another device and merchant: a duplicate,
            # which records nothing anywhere
            p = last
            if kind == "changed":
                p = Recorded(p.txid, p.t, p.card, f"m{1 - int(p.merchant[1])}", "d9", p.milli, p.country)
            before = snapshot(client)
            body = payment(p.txid, p.t, p.card, p.merchant, p.device, p.milli / 1000, p.country)
            result = online.score(body)
            assert result.duplicate
            assert snapshot(client) == before
            check(model, online, p, result)
        else:
            # feedback about a payment recorded earlier, reported at any time (the stamp offsets
            # apply to the report); "refeed" sends an earlier report again, unchanged
            if kind == "refeed" and sent_feedback:
                event, txid, reported, body = sent_feedback[-1]
            else:
                about = model.payments[(n * 7919) % len(model.payments)]
                event = "decline" if kind == "decline" else "fraud"
                txid, reported = about.txid, t
                body = payment(about.txid, about.t, about.card, about.merchant, about.device)
                sent_feedback.append((event, txid, reported, body))
            online.feedback(event, txid, reported, body)
            model.feedback.setdefault((event, txid), (body["card_id"], body["merchant_id"], reported))


# ---------------------------------------------------------------------------------------------
# The cases of the issue, said plainly


def test_a_payment_stamped_decades_ago_changes_no_later_answer(
    online: OnlineFeatures, client: redis.Redis
) -> None:
    """The issue's 1971 payment: it made the card 20,148 days old for every later payment."""
    client.flushall()
    online.score(payment("a", T0))
    online.score(payment("b", T0 + HOUR))
    old = online.score(payment("old", FAR_PAST))
    names = online.feature_names
    assert old.values[names.index("card_age_days")] == 0.0  # older than the card: as at its own time
    assert old.values[names.index("card_seconds_since_prev")] == 0.0
    assert old.values[names.index("card_count_24h")] == 2.0  # the card's windows as they stand now
    with_old = online.score(payment("c", T0 + 2 * HOUR)).values
    client.flushall()
    online.score(payment("a", T0))
    online.score(payment("b", T0 + HOUR))
    without = online.score(payment("c", T0 + 2 * HOUR)).values
    assert np.array_equal(with_old, without, equal_nan=True)
    assert with_old[names.index("card_age_days")] == pytest.approx(2 / 24)


def test_a_payment_a_few_minutes_ahead_never_makes_time_run_backwards(
    online: OnlineFeatures, client: redis.Redis
) -> None:
    """Within the API's skew tolerance: the next payment on time sees 0 s since, and every count."""
    client.flushall()
    names = online.feature_names
    online.score(payment("a", T0))
    online.score(payment("b", T0 + MINUTE))
    online.score(payment("ahead", T0 + MINUTE + 4 * MINUTE))
    after = online.score(payment("c", T0 + 2 * MINUTE)).values
    assert after[names.index("card_seconds_since_prev")] == 0.0
    assert after[names.index("card_count_24h")] == 3.0
    assert after[names.index("card_count_10m")] == 3.0


def test_a_late_payment_counts_in_the_windows_of_its_own_time(
    online: OnlineFeatures, client: redis.Redis
) -> None:
    """Recorded at its own time: a payment 3 hours late is in later payments' 24-hour windows but
    not their 1-hour ones, and moves the card's first time back (it is within the dedupe horizon)."""
    client.flushall()
    names = online.feature_names
    online.score(payment("a", T0))
    online.score(payment("b", T0 + 4 * HOUR))
    late = online.score(payment("late", T0 - 3 * HOUR))
    assert late.values[names.index("card_age_days")] == 0.0
    after = online.score(payment("c", T0 + 4 * HOUR + MINUTE)).values
    assert after[names.index("card_count_1h")] == 1.0
    assert after[names.index("card_count_24h")] == 3.0
    # bucketed windows too: the merchant's late payment is in the bucket of its own time (55
    # minutes late: in the 5-minute buckets of the hour then, out of them 10 minutes later)
    assert after[names.index("merchant_count_24h")] == 3.0
    online.score(payment("x", T0 + 2 * HOUR, card="c5", merchant="m5"))
    online.score(payment("y", T0 + 65 * MINUTE, card="c6", merchant="m5"))
    later = online.score(payment("z", T0 + 2 * HOUR + 10 * MINUTE, card="c7", merchant="m5")).values
    assert later[names.index("merchant_count_1h")] == 1.0
    assert later[names.index("merchant_count_24h")] == 2.0
    assert after[names.index("card_age_days")] * 24 == pytest.approx(7 + 1 / 60)


def test_feedback_stamped_in_the_future_waits_for_its_time_and_drops_nothing(
    online: OnlineFeatures, client: redis.Redis
) -> None:
    client.flushall()
    names = online.feature_names
    for i in range(3):
        online.score(payment(f"p{i}", T0 + i * MINUTE))
    assert online.feedback("decline", "p0", T0 + 3 * MINUTE, payment("p0", T0))
    assert online.feedback("decline", "p1", T0 + 10 * 365 * DAY, payment("p1", T0 + MINUTE))
    # the earlier report is still there, and still deduplicated
    assert not online.feedback("decline", "p0", T0 + 3 * MINUTE, payment("p0", T0))
    now = online.score(payment("p3", T0 + 4 * MINUTE)).values
    assert now[names.index("card_declines_1h")] == 1.0


def test_a_test_payment_reads_what_score_reads_and_writes_nothing(
    online: OnlineFeatures, client: redis.Redis
) -> None:
    client.flushall()
    for i in range(5):
        online.score(payment(f"p{i}", T0 + i * HOUR, device=f"d{i % 2}", merchant=f"m{i % 3}"))
    online.feedback("fraud", "p1", T0 + 5 * HOUR, payment("p1", T0 + HOUR, device="d1", merchant="m1"))
    before, ttls = snapshot(client), pttls(client)
    probe = payment("probe", T0 + 6 * HOUR, device="d1", merchant="m1")
    peeked = online.score(probe, record=False)
    assert snapshot(client) == before
    # no TTL refreshed either: every TTL has only run down
    assert all(0 < ttl <= ttls[key] for key, ttl in pttls(client).items())
    scored = online.score(probe)
    assert not peeked.duplicate and not scored.duplicate
    assert np.array_equal(peeked.values, scored.values, equal_nan=True)
    # once recorded, a test payment of the same id reads as a duplicate, as a retry would
    again = online.score(probe, record=False)
    assert again.duplicate
    assert np.array_equal(again.values, online.score(probe).values, equal_nan=True)


def test_a_retry_with_a_changed_entity_records_nothing(online: OnlineFeatures, client: redis.Redis) -> None:
    """All or nothing: the card block has seen the id, so the new device's block records nothing."""
    client.flushall()
    names = online.feature_names
    online.score(payment("p0", T0, device="d0"))
    before = snapshot(client)
    retry = online.score(payment("p0", T0, device="d1", merchant="m1"))
    assert retry.duplicate
    assert snapshot(client) == before
    fresh = online.score(payment("p1", T0 + MINUTE, card="c9", device="d1", merchant="m1")).values
    assert fresh[names.index("device_count_24h")] == 0.0
    assert fresh[names.index("merchant_count_24h")] == 0.0
