"""Simulator presets: named worlds, harder than the default, where other signals carry the fraud.

Why a module of its own: ``training/simulator.py`` is past a thousand lines. A preset reuses its
world (customers, merchants, cards, terminals) and its legitimate payments, drawn from the same
seeded generator, and changes only the fraud, the label delays and, for ``minimal``, the columns.
Each preset has 0.9 to 1 % fraud, named in ``fraud_pattern``; ``label_time`` of a fraud is always
after its payment, legitimate rows have none (``load_history`` fills in its default). The same
arguments give the same frame. Select one with ``simulate(..., preset=NAME)`` or
``antifraud simulate --preset NAME``:

* ``default``: ``antifraud.training.simulator`` as it is (five patterns with strong tells; labels 3-60 days).
* ``minimal``, a handbook-like world: only the minimal columns, ``MINIMAL_COLUMNS`` =
  ``transaction_id, timestamp, card_id, merchant_id, amount, currency, customer_id, terminal_id,
  label, label_time`` (plus ``fraud_pattern``). Every payment goes through a terminal, in euros,
  and its amount follows the customer's habit alone (no category explains a big basket). No device,
  IP, e-mail, country, channel, MCC, bank answer, refund. Labels arrive exactly 7 days after the
  payment. ``terminal_fraud`` (about half the fraud rows): a terminal compromised for two to four
  weeks, 60-100 % of its payments in that time are fraud; only the terminal's (and its merchant's)
  labelled history shows it. ``compromised_card`` (about a third): from some day on, a third of a
  card's payments of the next 14 days, at its usual merchants, are fraud for five times the amount;
  the card's amount habit shows it. ``large_amount`` (the rest): every payment above
  ``LARGE_AMOUNT`` (350 euros, about 0.13 % of payments) is fraud.
* ``small-merchants``: ``small_terminal`` (80 %): a low-volume till (one to six payments a day, at a
  merchant with at most a dozen) is compromised for two to five weeks and charges cards that paid
  there before (70 %) or other local cards, for the shop's usual amounts at the shop's usual hours,
  so that 40-65 % of the till's payments in that time are fraud: only its own labelled history
  shows it. ``compromised_card`` (20 %) as in ``minimal``. Labels: lognormal, median 7 days, 2-30.
* ``in-range``: compromised cards spending within their own range (1.1 to 3.6 times the card's
  usual amount at the merchant, as the cardholder's own spread allows), at its favourite merchants
  (else local shops) and in its home country, from home-country IP addresses, with a known or no
  device as often as a new one. Card behaviour carries the signal: ``in_range_spree`` (60 %): 3 to
  9 payments within hours, at any hour of the day; ``in_range_creep`` (40 %): one to three extra
  payments on most days of one to three weeks, at the cardholder's usual hours. Labels as default.
* ``slow-labels``: labels arrive days to weeks later (lognormal, median 14 days, 2 to 45). The
  default patterns with fewer easy tells (IP addresses in the card's country and goods shipped
  there 60 % of the time, no device fingerprint 40 %, the victim's e-mail 50 %, more payments
  authenticated, big amounts cut to a fifth to a half), fewer card-testing bursts, and 35 % of the
  fraud from ``small_terminal`` and ``in_range_spree``, which labelled history and card habit show.

Fraud is learnable from history-derived signals (card velocity and habit, new merchant or device,
terminal and merchant labelled history) and from no single column alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from antifraud.engine.schema import HISTORY_COLUMNS, REQUIRED_COLUMNS, TRANSACTION_COLUMNS
from antifraud.training.simulator import _GENERATORS as DEFAULT_GENERATORS
from antifraud.training.simulator import (
    COUNTRY_CODES,
    DAY_MS,
    ECOM,
    FAVOURITE_WEIGHTS,
    FAVOURITES,
    FRAUD_PATTERNS,
    FX,
    HOUR_MS,
    MEDIANS,
    MINUTE_MS,
    MOTO,
    NAT_MS,
    POS,
    PRESET_NAMES,
    SHIPS,
    Batch,
    Drift,
    Progress,
    _assemble,
    _batch,
    _build_world,
    _choose,
    _concat,
    _FraudContext,
    _masked,
    _pick_channels,
    _random_ips,
    _terminals,
    _time_of_day_ms,
    _tokens,
    _World,
    legit_payments,
    with_drift,
)

__all__ = ["MINIMAL_COLUMNS", "PRESETS", "Preset", "simulate_preset"]

# The columns of a ``minimal`` file (in the canonical order), besides ``fraud_pattern``.
MINIMAL_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, "customer_id", "terminal_id", "label", "label_time")
MINIMAL_HABIT = 35.0  # minimal: the median amount, in euros, of a customer of average level
LARGE_AMOUNT = 350.0  # minimal: every payment above this (euros) is fraud, about 0.1 % of payments


@dataclass(frozen=True)
class _Delay:
    """How long a label takes: lognormal around ``median`` days within [low, high]; fixed if sigma is 0."""

    median: float
    sigma: float
    low: float
    high: float

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.sigma == 0:
            return np.full(n, int(self.median * DAY_MS), dtype=np.int64)
        days = np.clip(rng.lognormal(np.log(self.median), self.sigma, size=n), self.low, self.high)
        # Disputes are filed during the day, not at the payment's minute.
        return (days * DAY_MS).astype(np.int64) + rng.integers(0, 12 * HOUR_MS, size=n)


@dataclass
class _Context(_FraudContext):
    """The default's fraud context, with the preset's label delays and what the generators added."""

    delay: _Delay = _Delay(18.0, 0.6, 3.0, 60.0)
    added: list[Batch] = field(default_factory=list)
    used_cards: set[int] = field(default_factory=set)

    def chargebacks(self, ts: np.ndarray, per_row: bool = False) -> np.ndarray:
        """When each fraud's label arrived: one dispute per incident unless ``per_row``."""
        size = ts.size if per_row else 1
        arrival = (ts if per_row else ts.max()) + self.delay.draw(self.rng, size)
        low, high = int(self.delay.low * DAY_MS), int(self.delay.high * DAY_MS)
        return np.clip(arrival, ts + low, ts + high)

    def relabel(self, rows: np.ndarray, pattern: str) -> int:
        """Mark legitimate rows as fraud of ``pattern`` (each cardholder disputes on their own)."""
        legit = self.legit
        legit["fraud_pattern"][rows] = pattern
        legit["label_time"][rows] = self.chargebacks(legit["ts"][rows], per_row=True)
        # A payment the cardholder disputes is not also refunded or cancelled.
        legit["refund_time"][rows] = NAT_MS
        legit["cancel_time"][rows] = NAT_MS
        return int(rows.size)

    def add(self, batch: Batch) -> int:
        self.added.append(batch)
        return int(batch["ts"].size)

    def active_card(self, min_payments: int = 5) -> int:
        """A card not yet compromised with at least ``min_payments`` legitimate payments, or -1."""
        counts = np.bincount(self.legit["card"], minlength=self.w.n_cards)
        counts[list(self.used_cards)] = 0
        candidates = np.flatnonzero(counts >= min_payments)
        if candidates.size == 0:
            return -1
        card = int(self.rng.choice(candidates))
        self.used_cards.add(card)
        return card


Generator = Callable[[_Context, int], int]  # (context, rows still wanted) -> fraud rows made


@dataclass(frozen=True)
class Preset:
    """A named world: fraud patterns with their share of the fraud rows, rate and label delay."""

    name: str
    patterns: tuple[tuple[str, float], ...]
    delay: _Delay
    fraud_rate: float = 0.009  # share of payments from the patterns; minimal's large_amount adds ~0.1 %
    minimal: bool = False


# ---------------------------------------------------------------------------------------- public


def simulate_preset(
    name: str,
    days: int,
    cards: int,
    merchants: int,
    seed: int,
    start: date = date(2026, 1, 1),
    progress: Progress | None = None,
    drift: Drift | None = None,
) -> pd.DataFrame:
    """``antifraud.training.simulator.simulate`` for the preset ``name`` (see the module docstring),
    with ``drift``'s trouble if given (``antifraud.training.simulator_drift``)."""
    if name == "default":
        from antifraud.training.simulator import simulate

        return simulate(days, cards, merchants, seed, start, progress, drift=drift)
    if name not in PRESETS:
        raise ValueError(f"unknown simulator preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
    preset = PRESETS[name]
    rng = np.random.default_rng(seed)
    world = _build_world(rng, days, cards, merchants, start)
    payments = legit_payments(rng, world, days, progress)
    if preset.minimal:
        _minimal_payments(rng, world, payments)
    cx = _Context(rng, world, payments, delay=preset.delay)
    _inject(cx, preset)
    if preset.minimal:
        cx.relabel(
            np.flatnonzero((payments["amount"] > LARGE_AMOUNT) & (payments["fraud_pattern"] == "")),
            "large_amount",
        )
    frame = _assemble(rng, world, with_drift(drift, seed, world, _concat([payments, *cx.added])))
    if preset.minimal:
        frame["currency"] = "EUR"
        frame = frame[[*MINIMAL_COLUMNS, "fraud_pattern"]]
    if progress is not None:
        progress(days + 1, days + 1)
    return frame


def _inject(cx: _Context, preset: Preset) -> None:
    """Incidents of each pattern until it has its share of the preset's fraud rate."""
    total = cx.legit["ts"].size * preset.fraud_rate / (1.0 - preset.fraud_rate)
    for pattern, share in preset.patterns:
        target, done, misses = max(1, round(total * share)), 0, 0
        while done < target and misses < 50:  # a world too small for the pattern gives up
            made = _GENERATORS[pattern](cx, target - done)
            done += made
            misses = 0 if made else misses + 1


# --------------------------------------------------------------------------------------- minimal


def _minimal_payments(rng: np.random.Generator, w: _World, b: Batch) -> None:
    """A handbook-like world: every payment at a terminal, by a known customer, in euros."""
    # Merchants that sell only remotely get one terminal each, appended so that the indices of
    # existing terminals (and the legitimate payments drawn with them) stay as they are.
    bare = np.flatnonzero(w.m_term_count == 0)
    extra = np.zeros(0, dtype=object)
    while extra.size < bare.size:  # identifiers unique among all terminals
        fresh = _tokens(rng, "term_", bare.size - extra.size, 5)
        extra = np.concatenate([extra, fresh[~np.isin(fresh, w.terminals) & ~np.isin(fresh, extra)]])
    w.m_term_first[bare] = len(w.terminals) + np.arange(bare.size)
    w.m_term_count[bare] = 1
    w.terminals = np.concatenate([w.terminals, extra])
    remote = b["terminal"] < 0
    b["terminal"][remote] = _terminals(rng, w, b["merchant"][remote], np.ones(int(remote.sum()), dtype=bool))
    b["customer_id"] = w.c_id[w.k_owner[b["card"]]]
    # Amounts follow the customer's habit alone, as in the handbook: no category explains a big one.
    owner = w.k_owner[b["card"]]
    habit = MINIMAL_HABIT * w.c_level[owner] * rng.lognormal(0.0, w.c_spread[owner])
    b["amount"] = np.maximum(0.5, np.round(habit, 2))


def _terminal_fraud(cx: _Context, remaining: int) -> int:
    """A compromised terminal: most of its payments over two to four weeks are fraud."""
    rng, w, legit = cx.rng, cx.w, cx.legit
    seen = np.unique(legit["terminal"][legit["terminal"] >= 0])
    seen = seen[~np.isin(seen, list(cx.used_terminals))]
    if seen.size == 0:
        return 0
    terminal = int(rng.choice(seen))
    cx.used_terminals.add(terminal)
    first = w.start_ms + int(rng.integers(0, max(1, w.days - 5))) * DAY_MS
    last = first + int(rng.integers(14, 29)) * DAY_MS
    at = np.flatnonzero(
        (legit["terminal"] == terminal)
        & (legit["ts"] >= first)
        & (legit["ts"] < last)
        & (legit["fraud_pattern"] == "")
    )
    chosen = at[rng.random(at.size) < rng.uniform(0.6, 1.0)][:remaining]
    return cx.relabel(chosen, "terminal_fraud")


def _compromised_card(cx: _Context, remaining: int) -> int:
    """A third of a card's payments in the 14 days after it leaked, at five times the amount."""
    rng, w, legit = cx.rng, cx.w, cx.legit
    card = cx.active_card()
    if card < 0:
        return 0
    first = w.start_ms + int(rng.integers(0, max(1, w.days - 2))) * DAY_MS
    rows = np.flatnonzero(
        (legit["card"] == card)
        & (legit["ts"] >= first)
        & (legit["ts"] < first + 14 * DAY_MS)
        & (legit["fraud_pattern"] == "")
    )
    chosen = rows[rng.random(rows.size) < 1 / 3][:remaining]
    legit["amount"][chosen] = np.round(legit["amount"][chosen] * 5, 2)
    return cx.relabel(chosen, "compromised_card")


# ------------------------------------------------------------------------------- small merchants


def _small_terminal(cx: _Context, remaining: int) -> int:
    """A low-volume till compromised for weeks: it charges cards that paid there before, and others."""
    rng, w, legit = cx.rng, cx.w, cx.legit
    terminal = _small_till(cx)
    if terminal < 0:
        return 0
    merchant = int(np.repeat(np.arange(len(w.m_id)), w.m_term_count)[terminal])
    at = np.flatnonzero(legit["terminal"] == terminal)
    at = at[np.argsort(legit["ts"][at], kind="stable")]
    history_ts = legit["ts"][at]
    first_day = int(rng.integers(0, max(1, w.days - 10)))
    length = min(int(rng.integers(14, 36)), w.days - first_day)
    daily = at.size / w.days * rng.uniform(0.7, 2.0)  # the fraud share at the till: about 40-65 %
    per_day = rng.poisson(daily, size=length)
    n = min(int(per_day.sum()), remaining)
    if n == 0:
        return 0
    day = np.repeat(np.arange(first_day, first_day + length), per_day)[:n]
    # At the shop's own hours: the time of day of one of its legitimate payments, a little moved.
    time_of_day = (history_ts[rng.integers(0, at.size, size=n)] - w.start_ms) % DAY_MS
    jitter = rng.normal(0, 30 * MINUTE_MS, size=n).astype(np.int64)
    ts = np.sort(w.start_ms + day * DAY_MS + np.clip(time_of_day + jitter, 0, DAY_MS - 1))
    # Mostly cards that paid at this till before (the shop kept their details), else local cards.
    before = np.searchsorted(history_ts, ts)  # legitimate payments at the till before each fraud
    local = np.flatnonzero(w.c_country[w.k_owner] == w.m_country[merchant])
    card = rng.choice(local if local.size else np.arange(w.n_cards), size=n)
    known = (before > 0) & (rng.random(n) < 0.7)
    pick = (rng.random(n) * np.maximum(before, 1)).astype(np.int64)
    card[known] = legit["card"][at[pick[known]]]
    amounts = legit["amount"][at]
    amount = amounts[rng.integers(0, amounts.size, size=n)] * rng.lognormal(0.0, 0.25, size=n)
    return cx.add(
        _batch(
            n,
            ts=ts,
            card=card,
            merchant=merchant,
            channel=POS,
            amount=np.maximum(0.3, np.round(amount, 2)),
            payment_method=_choose(rng, (("contactless", 0.55), ("chip", 0.35), ("magstripe", 0.1)), n),
            terminal=terminal,
            decline_code=cx.declines(n, 0.03, (("05", 0.5), ("51", 0.5))),
            label_time=cx.chargebacks(ts, per_row=True),
            fraud_pattern="small_terminal",
        )
    )


def _small_till(cx: _Context) -> int:
    """A till with one to six legitimate payments a day, at a merchant with few, not yet used."""
    w, terminal = cx.w, cx.legit["terminal"]
    per_day = np.bincount(terminal[terminal >= 0], minlength=len(w.terminals)) / w.days
    owner = np.repeat(np.arange(len(w.m_id)), w.m_term_count)
    merchant_per_day = np.bincount(owner, weights=per_day, minlength=len(w.m_id))[owner]
    unused = ~np.isin(np.arange(len(w.terminals)), list(cx.used_terminals))
    for candidates in (
        (per_day >= 1) & (per_day <= 6) & (merchant_per_day <= 12) & unused,
        (per_day >= 0.3) & (per_day <= 6) & unused,
    ):
        if candidates.any():
            chosen = int(cx.rng.choice(np.flatnonzero(candidates)))
            cx.used_terminals.add(chosen)
            return chosen
    return -1


# ------------------------------------------------------------------------------------- in range


def _in_range_spree(cx: _Context, remaining: int) -> int:
    """A few payments within hours, at any hour, for amounts within the card's own range."""
    rng = cx.rng
    n = min(int(rng.integers(3, 10)), remaining)
    ts = cx.time(DAY_MS) + np.sort(rng.integers(0, int(rng.integers(2 * HOUR_MS, DAY_MS)), size=n))
    return _in_range(cx, ts, rng.uniform(0.3, 1.6, size=n), "in_range_spree", at_home_hours=False)


def _in_range_creep(cx: _Context, remaining: int) -> int:
    """One or two extra payments on most days of one to three weeks, at the cardholder's hours."""
    rng, w = cx.rng, cx.w
    length = int(rng.integers(7, 22))
    first_day = int(rng.integers(0, max(1, w.days - length)))
    per_day = np.where(rng.random(length) < 0.7, rng.integers(1, 4, size=length), 0)
    day = np.repeat(first_day + np.arange(length), per_day)[:remaining]
    day = day[day < w.days]
    if day.size == 0:
        return 0
    ts = w.start_ms + day * DAY_MS  # time of day added from the cardholder's rhythm
    return _in_range(cx, ts, rng.uniform(0.3, 1.5, size=day.size), "in_range_creep", at_home_hours=True)


def _in_range(cx: _Context, ts: np.ndarray, lift: np.ndarray, pattern: str, at_home_hours: bool) -> int:
    """Payments of a compromised card at its own merchants, ``exp(lift * spread)`` times its usual."""
    rng, w = cx.rng, cx.w
    card = cx.active_card()
    if card < 0:
        return 0
    owner = int(w.k_owner[card])
    home = int(w.c_country[owner])
    n = ts.size
    cust, where = np.full(n, owner), np.full(n, home)
    if at_home_hours:
        ts = np.sort(ts + _time_of_day_ms(rng, w, cust, where))
    merchant = w.c_fav[owner, rng.choice(FAVOURITES, size=n, p=FAVOURITE_WEIGHTS)]
    pool, p = w.local_pools[home]
    other = rng.random(n) < 0.3
    merchant[other] = rng.choice(pool, size=int(other.sum()), p=p)
    channel = _pick_channels(rng, w, merchant, where)
    ecom, pos = channel == ECOM, channel == POS
    remote = ecom | (channel == MOTO)
    cat = w.m_cat[merchant]
    usual = MEDIANS[cat] * FX[w.m_country[merchant]] * w.c_level[owner]
    amount = usual * np.exp(lift * w.c_spread[owner])
    # A known device (remote access) or none as often as a new one; IP addresses of the home country.
    device = _choose(rng, (("new", 0.5), ("none", 0.3), ("own", 0.2)), 1)[0]
    device_id = {"new": _tokens(rng, "dev_", 1)[0], "none": None, "own": w.c_devices[owner, 0]}[device]
    shipping = np.where(rng.random(n) < 0.85, COUNTRY_CODES[home], COUNTRY_CODES[cx.foreign_country(home, n)])
    return cx.add(
        _batch(
            n,
            ts=ts,
            card=card,
            merchant=merchant,
            channel=channel,
            amount=np.maximum(0.3, np.round(amount, 2)),
            customer_id=_masked(np.full(n, w.c_id[owner], dtype=object), ecom & (rng.random(n) < 0.5)),
            email=_masked(np.full(n, w.c_email[owner], dtype=object), remote),
            device_id=_masked(np.full(n, device_id, dtype=object), ecom),
            ip=_masked(_random_ips(rng, w.ip_prefixes, where), ecom),
            ip_country=_masked(COUNTRY_CODES[where], ecom),
            shipping_country=_masked(shipping, remote & SHIPS[cat]),
            payment_method=np.where(
                pos, _choose(rng, (("contactless", 0.5), ("chip", 0.35), ("magstripe", 0.15)), n), "card"
            ),
            card_on_file=_masked(np.zeros(n, dtype=bool), remote),
            authenticated=_masked(ecom & (rng.random(n) < 0.35), remote),
            terminal=_terminals(rng, w, merchant, pos),
            decline_code=cx.declines(n, 0.05, (("51", 0.5), ("05", 0.5))),
            label_time=cx.chargebacks(ts),
            fraud_pattern=pattern,
        )
    )


# ----------------------------------------------------------------------------------- slow labels


def _softened(pattern: str) -> Generator:
    """The default generator of ``pattern``, with fewer easy tells on what it makes."""
    make = DEFAULT_GENERATORS[pattern]

    def generate(cx: _Context, remaining: int) -> int:
        batch = make(cx, remaining)
        _soften(cx, batch)
        return cx.add(batch)

    return generate


def _soften(cx: _Context, b: Batch) -> None:
    """Residential proxies, drops at home, phished one-time codes, greed kept in check."""
    rng, w = cx.rng, cx.w
    n = b["ts"].size
    home = w.c_country[w.k_owner[b["card"]]]
    has_ip = pd.notna(b["ip"])
    proxied = has_ip & (rng.random(n) < 0.6)
    b["ip"][proxied] = _random_ips(rng, w.ip_prefixes, home[proxied])
    b["ip_country"][proxied] = COUNTRY_CODES[home[proxied]]
    shipped = pd.notna(b["shipping_country"]) & (rng.random(n) < 0.6)
    b["shipping_country"][shipped] = COUNTRY_CODES[home[shipped]]
    # The phishing kit asked for the victim's e-mail address too.
    known_email = pd.notna(b["email"]) & (rng.random(n) < 0.5)
    b["email"][known_email] = w.c_email[w.k_owner[b["card"][known_email]]]
    passed = pd.notna(b["authenticated"]) & (b["channel"] == ECOM) & (rng.random(n) < 0.35)
    b["authenticated"][passed] = True
    # Scripts that read the device are blocked; keyed-in orders come without one.
    blind = pd.notna(b["device_id"]) & (rng.random(n) < 0.4)
    b["device_id"][blind] = None
    big = b["amount"] > 20 * FX[w.m_country[b["merchant"]]]  # card testing's tiny amounts stay tiny
    b["amount"][big] = np.round(b["amount"][big] * rng.uniform(0.2, 0.5, size=int(big.sum())), 2)


# ---------------------------------------------------------------------------------------- tables


_GENERATORS: dict[str, Generator] = {
    "terminal_fraud": _terminal_fraud,
    "compromised_card": _compromised_card,
    "small_terminal": _small_terminal,
    "in_range_spree": _in_range_spree,
    "in_range_creep": _in_range_creep,
    **{pattern: _softened(pattern) for pattern in FRAUD_PATTERNS},
}

PRESETS: dict[str, Preset] = {
    "minimal": Preset(
        "minimal",
        (("terminal_fraud", 0.58), ("compromised_card", 0.42)),
        _Delay(7.0, 0.0, 7.0, 7.0),
        fraud_rate=0.0078,
        minimal=True,
    ),
    "small-merchants": Preset(
        "small-merchants",
        (("small_terminal", 0.8), ("compromised_card", 0.2)),
        _Delay(7.0, 0.5, 2.0, 30.0),
    ),
    "in-range": Preset(
        "in-range",
        (("in_range_spree", 0.6), ("in_range_creep", 0.4)),
        _Delay(18.0, 0.6, 3.0, 60.0),
    ),
    "slow-labels": Preset(
        "slow-labels",
        # Fewer card-testing bursts (their velocity alone makes a world easy), and patterns that
        # only labelled history or the card's habit shows, so that late labels cost something.
        (
            ("card_testing", 0.08),
            ("stolen_card", 0.17),
            ("account_takeover", 0.15),
            ("compromised_terminal", 0.15),
            ("collusive_merchant", 0.10),
            ("small_terminal", 0.20),
            ("in_range_spree", 0.15),
        ),
        _Delay(14.0, 0.6, 2.0, 45.0),
        fraud_rate=0.01,
    ),
}
assert set(PRESET_NAMES) == {"default", *PRESETS}, "training.simulator.PRESET_NAMES lists every preset"
_CANONICAL = (*TRANSACTION_COLUMNS, *HISTORY_COLUMNS)
assert list(MINIMAL_COLUMNS) == [c for c in _CANONICAL if c in MINIMAL_COLUMNS], "canonical names, in order"
