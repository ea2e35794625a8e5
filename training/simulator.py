"""Payment simulator: a realistic card-payment history with ground-truth fraud.

Why one module of about 1,000 lines: the world (merchants, customers, cards, habits), the legitimate
days and the five fraud patterns all read and extend one private world state, and each pattern is a
short function next to the others it must not collide with; the presets live apart
(``antifraud.training.simulator_presets``).

The simulated world has merchants (category with a real MCC, country and currency, a mix of
channels, POS terminals) and customers with habits: an amount level and spread, a daily and a
weekly rhythm, a home country, one to three usual devices and IP addresses, a few favourite
merchants, cards stored at some of them for one-click payments, now and then a trip abroad. Most
customers hold one card, some two. Legitimate payments are drawn day by day from those habits,
with the bank's answer (a few legitimate declines), refunds and cancellations.

Fraud is then injected as incidents of five patterns, each row marked in ``fraud_pattern``:

* ``card_testing``: a burst of tiny payments on one card within minutes, at several (mostly
  online) merchants, from one device and IP, many declined (14, 05, 54); after a success a larger
  payment sometimes follows;
* ``stolen_card``: card-not-present fraud from a new device and a foreign IP, shipped elsewhere,
  amounts far above the cardholder's habit, rarely authenticated;
* ``account_takeover``: a hijacked customer account: new device and IP, one-click payments with
  the stored card (``card_on_file``), high amounts, in a spree of a few hours;
* ``compromised_terminal``: a skimmed POS terminal; some of the cards used there are cloned and
  spent days to weeks later in shops of another country (mostly magnetic stripe);
* ``collusive_merchant``: a small merchant busting out, charging many stolen cards for some days.

Fraudulent rows have ``label`` 1 and a ``label_time`` when the chargeback arrived (3 to 60 days
later, lognormal, one dispute per card incident); legitimate rows have ``label`` 0 and no
``label_time``. Once a card's first fraud is reported (its earliest ``label_time``), the issuer
closes it and sends the holder a new card: the holder's later payments carry the replacement's
``card_id`` (the old one with ``r`` appended), while fraud on the old card may go on (and a
provider that blocks cards with reported fraud stops it). The frame has the dtypes
``antifraud.training.history.load_history`` returns. All draws come from one seeded
``numpy.random.Generator``: the same arguments give the same frame.

This is the ``default`` preset. ``simulate(..., preset=NAME)`` gives harder worlds built on the same
customers and merchants, where other signals carry the fraud: see ``antifraud.training.simulator_presets``.
``simulate(..., drift=Drift(...))`` injects trouble from a given day on (a new fraud scheme, device ids
that stop arriving, amounts scaled), for monitoring: see ``antifraud.training.simulator_drift``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from antifraud.engine.schema import TRANSACTION_COLUMNS

__all__ = ["DRIFT_KINDS", "FRAUD_PATTERNS", "PRESET_NAMES", "Drift", "simulate", "simulate_to_file"]

Progress = Callable[[int, int], None]
Batch = dict[str, np.ndarray]  # one array per internal column, all of the same length

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
NAT_MS = np.iinfo(np.int64).min  # the int64 numpy reads as NaT

FRAUD_PATTERNS = (
    "card_testing",
    "stolen_card",
    "account_takeover",
    "compromised_terminal",
    "collusive_merchant",
)
# Named worlds (training.simulator_presets): named here so that the simulator's callers can list
# them without importing the presets' code.
PRESET_NAMES = ("default", "minimal", "small-merchants", "in-range", "slow-labels")
# Trouble a history can carry from a given day on (training.simulator_drift), named here for the CLI.
DRIFT_KINDS = ("new-fraud-pattern", "missing-device", "amount-scale")
FRAUD_RATE = 0.01  # share of payments that are fraudulent
# Share of the fraudulent rows for each pattern (card testing and bust-outs are row-heavy).
PATTERN_SHARES = {
    "card_testing": 0.24,
    "stolen_card": 0.24,
    "account_takeover": 0.16,
    "compromised_terminal": 0.18,
    "collusive_merchant": 0.18,
}

ECOM, POS, MOTO = 0, 1, 2
CHANNELS = np.array(["ecom", "pos", "moto"], dtype=object)


@dataclass(frozen=True)
class _Country:
    code: str
    currency: str
    fx: float  # local currency units per euro, so that prices look local
    weight: float  # share of customers and merchants
    utc_offset: int  # hours, in winter: people live by local time, timestamps are UTC


COUNTRIES = (
    _Country("FR", "EUR", 1.0, 0.24, 1),
    _Country("DE", "EUR", 1.0, 0.16, 1),
    _Country("ES", "EUR", 1.0, 0.09, 1),
    _Country("IT", "EUR", 1.0, 0.08, 1),
    _Country("NL", "EUR", 1.0, 0.06, 1),
    _Country("BE", "EUR", 1.0, 0.04, 1),
    _Country("IE", "EUR", 1.0, 0.02, 0),
    _Country("GB", "GBP", 0.85, 0.12, 0),
    _Country("US", "USD", 1.08, 0.09, -5),
    _Country("CH", "CHF", 0.95, 0.03, 1),
    _Country("SE", "SEK", 11.2, 0.03, 1),
    _Country("PL", "PLN", 4.3, 0.04, 1),
)
# Countries with no customer or merchant here: they show up only as where an IP is.
OTHER_COUNTRIES = ("BR", "RO", "NG", "VN", "ID", "TR", "IN", "UA", "MA", "TH")
COUNTRY_CODES = np.array([c.code for c in COUNTRIES] + list(OTHER_COUNTRIES), dtype=object)
CURRENCIES = np.array([c.currency for c in COUNTRIES], dtype=object)
FX = np.array([c.fx for c in COUNTRIES])
UTC_OFFSETS = np.array([c.utc_offset for c in COUNTRIES])
N_HOME = len(COUNTRIES)


@dataclass(frozen=True)
class _Category:
    mcc: str
    median: float  # typical amount in euros
    mix: tuple[float, float, float]  # ecom, pos, moto shares of the category's payments
    weight: float  # share of merchants
    traffic: float  # payments per merchant, relative
    ships: bool  # physical goods: online orders have a shipping country


CATEGORIES = (
    _Category("5411", 35.0, (0.08, 0.92, 0.0), 0.15, 2.0, True),  # grocery
    _Category("5812", 32.0, (0.05, 0.95, 0.0), 0.13, 1.2, False),  # restaurants
    _Category("5814", 11.0, (0.15, 0.85, 0.0), 0.08, 1.5, False),  # fast food
    _Category("5541", 55.0, (0.0, 1.0, 0.0), 0.05, 1.0, False),  # fuel
    _Category("4121", 18.0, (0.85, 0.15, 0.0), 0.04, 1.5, False),  # taxis and ride hailing
    _Category("5999", 40.0, (0.5, 0.5, 0.0), 0.10, 0.8, True),  # miscellaneous retail
    _Category("5732", 220.0, (0.6, 0.4, 0.0), 0.05, 0.5, True),  # electronics
    _Category("5691", 70.0, (0.5, 0.5, 0.0), 0.07, 0.7, True),  # clothing
    _Category("5311", 60.0, (0.3, 0.7, 0.0), 0.04, 0.9, True),  # department stores
    _Category("5912", 22.0, (0.1, 0.9, 0.0), 0.05, 1.0, True),  # pharmacies
    _Category("5815", 9.0, (1.0, 0.0, 0.0), 0.04, 1.2, False),  # digital goods
    _Category("4814", 30.0, (0.9, 0.0, 0.1), 0.03, 0.6, False),  # telecom
    _Category("4511", 280.0, (0.9, 0.02, 0.08), 0.02, 0.3, False),  # airlines
    _Category("7011", 160.0, (0.6, 0.3, 0.1), 0.04, 0.4, False),  # hotels
    _Category("5967", 25.0, (0.85, 0.0, 0.15), 0.03, 0.4, False),  # direct marketing
    _Category("7995", 45.0, (1.0, 0.0, 0.0), 0.02, 0.6, False),  # gambling
    _Category("8398", 20.0, (1.0, 0.0, 0.0), 0.02, 0.2, False),  # charities
)
MCCS = np.array([c.mcc for c in CATEGORIES], dtype=object)
MEDIANS = np.array([c.median for c in CATEGORIES])
SHIPS = np.array([c.ships for c in CATEGORIES])
# Merchant categories each fraud pattern favours (by MCC).
TESTING_MCCS = ("5999", "5815", "4814", "5967", "8398")
CASHOUT_MCCS = ("5732", "5691", "4511", "7995", "5815", "5311", "7011")
SHOP_MCCS = ("5732", "5311", "5541", "5999", "5691", "5411", "5912")
BUSTOUT_MCCS = ("5967", "5999", "7995", "5815", "8398", "4814")

FAVOURITES = 6  # favourite merchants per customer; the first ones get most payments
FAVOURITE_WEIGHTS = 1.0 / np.arange(1, FAVOURITES + 1) ** 1.1
FAVOURITE_WEIGHTS /= FAVOURITE_WEIGHTS.sum()
# No identifier may hold a run of digits as long as a card number (see _tokens).
_DIGIT_RUN = re.compile(r"[0-9]{12}")
LEGIT_DECLINES = (("51", 0.55), ("05", 0.2), ("61", 0.1), ("54", 0.05), ("65", 0.1))


@dataclass
class _World:
    """Everything fixed before the first payment: merchants, customers, cards."""

    start_ms: int
    days: int
    start: date
    # merchants
    m_id: np.ndarray
    m_cat: np.ndarray
    m_country: np.ndarray
    m_mix: np.ndarray  # (merchants, 3) channel shares
    m_pop: np.ndarray
    m_term_first: np.ndarray  # index of the merchant's first terminal in `terminals`
    m_term_count: np.ndarray
    terminals: np.ndarray
    ip_prefixes: np.ndarray  # (countries, 3, 2) first two octets of each country's networks
    # customers
    c_country: np.ndarray
    c_level: np.ndarray
    c_spread: np.ndarray
    c_rate: np.ndarray
    c_week: np.ndarray  # (customers, 7) rate multiplier per weekday
    c_peaks: np.ndarray  # (customers, 2) hours of the two daily peaks
    c_peak_share: np.ndarray
    c_hour_sd: np.ndarray
    c_devices: np.ndarray  # (customers, 3)
    c_n_devices: np.ndarray
    c_ips: np.ndarray  # (customers, 3)
    c_n_ips: np.ndarray
    c_email: np.ndarray
    c_id: np.ndarray
    c_fav: np.ndarray  # (customers, FAVOURITES) merchant indices
    c_stored: np.ndarray  # (customers, FAVOURITES): primary card stored at that favourite
    c_card: np.ndarray  # primary card
    c_card2: np.ndarray  # second card or -1
    c_trip_start: np.ndarray
    c_trip_days: np.ndarray  # 0: no trip
    c_trip_country: np.ndarray
    # cards
    k_id: np.ndarray
    k_bin: np.ndarray
    k_owner: np.ndarray
    # merchant pools: per country (indices, probabilities by popularity), and named pools
    local_pools: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    remote_pool: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0))

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS

    @property
    def n_cards(self) -> int:
        return len(self.k_id)


@dataclass(frozen=True)
class Drift:
    """Trouble from day ``after`` on (0-based: payments at or after the start plus ``after`` days).

    ``kinds`` among ``DRIFT_KINDS``: ``new-fraud-pattern`` adds a fraud scheme absent before,
    ``missing-device`` drops every ``device_id``, ``amount-scale`` multiplies every amount by
    ``amount_factor`` (100: a client that starts sending minor units). See
    ``antifraud.training.simulator_drift``.
    """

    after: int
    kinds: tuple[str, ...]
    amount_factor: float = 100.0

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in DRIFT_KINDS]
        if unknown or not self.kinds:
            raise ValueError(
                f"unknown drift kind {unknown or self.kinds!r}: choose among {', '.join(DRIFT_KINDS)}"
            )
        if not (self.amount_factor > 0 and np.isfinite(self.amount_factor)):
            raise ValueError(f"the drift's amount factor must be a positive number, not {self.amount_factor}")

    def check(self, days: int) -> None:
        """Refuses a drift day outside the simulated period (the trouble needs a day before it)."""
        if not 1 <= self.after < days:
            raise ValueError(
                f"the drift day must be within the {days} simulated days (1 to {days - 1}), not {self.after}"
            )


# ------------------------------------------------------------------------------------------ public


def simulate(
    days: int,
    cards: int,
    merchants: int,
    seed: int,
    start: date = date(2026, 1, 1),
    progress: Progress | None = None,
    preset: str = "default",
    drift: Drift | None = None,
) -> pd.DataFrame:
    """Simulate ``days`` of card payments of ``cards`` cards at ``merchants`` merchants.

    Returns the canonical transaction columns, then ``label``, ``label_time``, ``bank_outcome``,
    ``decline_code``, ``outcome_time``, ``refund_time``, ``cancel_time`` and ``fraud_pattern``
    (``""`` for legitimate rows), sorted by timestamp then transaction_id. About 1 % of the rows
    are fraud, from every pattern of ``FRAUD_PATTERNS``. The same arguments give the same frame.
    ``progress(done, total)`` is called after each simulated day and once at the end.
    ``preset`` names another world (one of ``PRESET_NAMES``, see ``antifraud.training.simulator_presets``).
    ``drift`` injects trouble from a day on; without it the frame is exactly what it was before drift
    existed (its draws come from a generator of their own).
    """
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown simulator preset {preset!r}: choose one of {', '.join(PRESET_NAMES)}")
    if days < 7 or cards < 20 or merchants < 20:
        raise ValueError("simulate needs at least 7 days, 20 cards and 20 merchants")
    if drift is not None:
        drift.check(days)
    if preset != "default":
        from antifraud.training.simulator_presets import (
            simulate_preset,  # late: the presets build on this module
        )

        return simulate_preset(preset, days, cards, merchants, seed, start, progress, drift)
    rng = np.random.default_rng(seed)
    world = _build_world(rng, days, cards, merchants, start)
    payments = legit_payments(rng, world, days, progress)
    fraud = _inject_fraud(_FraudContext(rng, world, payments), len(payments["ts"]))
    frame = _assemble(rng, world, with_drift(drift, seed, world, _concat([payments, *fraud])))
    if progress is not None:
        progress(days + 1, days + 1)
    return frame


def with_drift(drift: Drift | None, seed: int, world: _World, payments: Batch) -> Batch:
    """The payments with ``drift``'s trouble (``payments`` itself without one)."""
    if drift is None:
        return payments
    from antifraud.training.simulator_drift import apply_drift  # late: it builds on this module

    return apply_drift(drift, seed, world, payments)


def legit_payments(rng: np.random.Generator, world: _World, days: int, progress: Progress | None) -> Batch:
    """The world's legitimate payments, day by day (`progress(day, days + 1)` after each)."""
    legit: list[Batch] = []
    for day in range(days):
        legit.append(_legit_day(rng, world, day))
        if progress is not None:
            progress(day + 1, days + 1)
    return _concat(legit)


def simulate_to_file(
    path: str | Path,
    days: int,
    cards: int,
    merchants: int,
    seed: int,
    progress: Progress | None = None,
    preset: str = "default",
    drift: Drift | None = None,
) -> pd.DataFrame:
    """Simulate (see ``simulate``) and write the history to ``path`` (.csv, .csv.gz or .parquet)."""
    from antifraud.training.history import write_history  # late: keeps the simulator importable alone

    frame = simulate(days, cards, merchants, seed, progress=progress, preset=preset, drift=drift)
    write_history(frame, path)
    return frame


# ------------------------------------------------------------------------------------------- world


def _build_world(rng: np.random.Generator, days: int, cards: int, merchants: int, start: date) -> _World:
    m = _make_merchants(rng, merchants)
    ip_prefixes = _make_ip_prefixes(rng)
    n_customers = min(cards, max(1, round(cards / 1.15)))  # most customers hold one card, some two
    world = _World(
        start_ms=int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() * 1000),
        days=days,
        start=start,
        ip_prefixes=ip_prefixes,
        **m,
        **_make_customers(rng, n_customers, cards, days, ip_prefixes),
    )
    _make_pools(world)
    _choose_favourites(rng, world)
    return world


def _tokens(rng: np.random.Generator, prefix: str, n: int, nbytes: int = 8) -> np.ndarray:
    """``n`` distinct opaque identifiers such as ``card_7f3a09c2d4e1b805``.

    Hex that happens to hold a run of 12 digits is drawn again: it would look like a card number
    to a data-loss scanner (and the sample would then "contain PANs").
    """
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        text = rng.bytes(nbytes * (n - len(out))).hex()
        for i in range(0, len(text), 2 * nbytes):
            token = prefix + text[i : i + 2 * nbytes]
            if token not in seen and not _DIGIT_RUN.search(token):
                seen.add(token)
                out.append(token)
    return np.array(out, dtype=object)


def _choose(rng: np.random.Generator, options: tuple[tuple[str, float], ...], n: int) -> np.ndarray:
    """``n`` draws among weighted strings, as an object array of ``str``."""
    values = np.array([o for o, _ in options], dtype=object)
    weights = np.array([w for _, w in options])
    return values[rng.choice(len(values), size=n, p=weights / weights.sum())]


def _make_merchants(rng: np.random.Generator, n: int) -> dict[str, Any]:
    cat = rng.choice(len(CATEGORIES), size=n, p=_normalized([c.weight for c in CATEGORIES]))
    cat[: len(CATEGORIES)] = np.arange(min(n, len(CATEGORIES)))  # every category exists
    country = rng.choice(N_HOME, size=n, p=_normalized([c.weight for c in COUNTRIES]))
    mix = np.array([CATEGORIES[i].mix for i in cat]) * rng.uniform(0.5, 1.5, size=(n, 3))
    mix /= mix.sum(axis=1, keepdims=True)
    pop = np.array([CATEGORIES[i].traffic for i in cat]) * rng.lognormal(0.0, 1.0, size=n)
    # Busier shops have more tills; only merchants that take in-store payments have terminals.
    term_count = np.where(
        mix[:, POS] > 0, np.clip(np.round(pop / np.median(pop) * rng.uniform(0.7, 2.5, size=n)), 1, 12), 0
    ).astype(np.int64)
    return {
        "m_id": _tokens(rng, "mer_", n, 5),
        "m_cat": cat,
        "m_country": country,
        "m_mix": mix,
        "m_pop": pop,
        "m_term_first": np.concatenate([[0], np.cumsum(term_count)[:-1]]).astype(np.int64),
        "m_term_count": term_count,
        "terminals": _tokens(rng, "term_", int(term_count.sum()), 5),
    }


def _make_ip_prefixes(rng: np.random.Generator) -> np.ndarray:
    # Public-looking first octets (no private, loopback or multicast ranges); distinct per country
    # so that an IP address says which country it is in, as a geo-IP database would.
    first = np.array([a for a in range(11, 224) if a not in (100, 127, 169, 172, 192, 198, 203)])
    pairs = rng.choice(len(first) * 256, size=len(COUNTRY_CODES) * 3, replace=False)
    return np.stack([first[pairs // 256], pairs % 256], axis=1).reshape(len(COUNTRY_CODES), 3, 2)


def _random_ips(rng: np.random.Generator, prefixes: np.ndarray, country: np.ndarray) -> np.ndarray:
    """An IPv4 address in each given country (object array of str)."""
    country = np.asarray(country, dtype=np.int64)
    net = prefixes[country, rng.integers(0, 3, size=country.size)]
    c, d = rng.integers(0, 256, size=country.size), rng.integers(1, 255, size=country.size)
    return np.array([f"{a}.{b}.{x}.{y}" for (a, b), x, y in zip(net, c, d, strict=True)], dtype=object)


def _make_customers(
    rng: np.random.Generator, n: int, cards: int, days: int, ip_prefixes: np.ndarray
) -> dict[str, Any]:
    country = rng.choice(N_HOME, size=n, p=_normalized([c.weight for c in COUNTRIES]))
    week = np.ones((n, 7))
    week[:, 5:] = rng.uniform(0.6, 1.6, size=(n, 1))  # some shop on weekends, some on weekdays
    week /= week.mean(axis=1, keepdims=True)
    peaks = np.stack([rng.normal(12.5, 1.5, size=n), rng.normal(19.0, 1.5, size=n)], axis=1)
    commuters, night_owls = rng.random(n) < 0.2, rng.random(n) < 0.05
    peaks[commuters, 0] = rng.normal(8.0, 0.7, size=commuters.sum())
    peaks[night_owls, 1] = rng.normal(23.0, 1.0, size=night_owls.sum())
    travellers = rng.random(n) < 0.1
    trip_country = (country + rng.integers(1, N_HOME, size=n)) % N_HOME  # anywhere but home
    second_owner = rng.choice(n, size=cards - n, replace=False)
    card2 = np.full(n, -1, dtype=np.int64)
    card2[second_owner] = n + np.arange(cards - n)
    owner = np.concatenate([np.arange(n), second_owner])
    # A few BINs (issuers) per country, Visa (4) or Mastercard (5).
    bins = np.array(
        [[f"{rng.choice([4, 5])}{rng.integers(0, 100_000):05d}" for _ in range(6)] for _ in range(N_HOME)],
        dtype=object,
    )
    emails = _tokens(rng, "", n, 6)
    domains = np.array(["@example.com", "@example.org", "@example.net"], dtype=object)
    return {
        "c_country": country,
        "c_level": rng.lognormal(0.0, 0.45, size=n),
        "c_spread": rng.uniform(0.3, 0.8, size=n),
        "c_rate": rng.lognormal(0.0, 0.6, size=n),  # payments a day, mean about 1.2
        "c_week": week,
        "c_peaks": peaks,
        "c_peak_share": rng.uniform(0.25, 0.6, size=n),
        "c_hour_sd": rng.uniform(0.8, 2.5, size=n),
        "c_devices": _tokens(rng, "dev_", 3 * n).reshape(n, 3),
        "c_n_devices": rng.integers(1, 4, size=n),
        "c_ips": _random_ips(rng, ip_prefixes, np.repeat(country, 3)).reshape(n, 3),
        "c_n_ips": rng.integers(1, 4, size=n),
        "c_email": emails + domains[rng.integers(0, 3, size=n)],
        "c_id": _tokens(rng, "cust_", n, 6),
        "c_fav": np.zeros((n, FAVOURITES), dtype=np.int64),  # chosen once merchant pools exist
        "c_stored": np.zeros((n, FAVOURITES), dtype=bool),
        "c_card": np.arange(n),
        "c_card2": card2,
        "c_trip_start": rng.integers(0, days, size=n),
        "c_trip_days": np.where(travellers, rng.integers(3, 11, size=n), 0),
        "c_trip_country": trip_country,
        "k_id": _tokens(rng, "card_", cards),
        "k_bin": bins[country[owner], rng.integers(0, 6, size=cards)],
        "k_owner": owner,
    }


def _make_pools(w: _World) -> None:
    """Merchant pools by popularity: shops of each country, and all merchants that sell remotely."""
    remote = np.flatnonzero(w.m_mix[:, ECOM] > 0)
    w.remote_pool = (remote, _normalized(w.m_pop[remote]))
    w.local_pools = []
    for country in range(N_HOME):
        local = np.flatnonzero(w.m_country == country)
        # A country without merchants (tiny worlds) shops online abroad instead.
        w.local_pools.append((local, _normalized(w.m_pop[local])) if local.size else w.remote_pool)


def _choose_favourites(rng: np.random.Generator, w: _World) -> None:
    for country in range(N_HOME):
        rows = np.flatnonzero(w.c_country == country)
        pool, p = w.local_pools[country]
        w.c_fav[rows] = rng.choice(pool, size=(rows.size, FAVOURITES), p=p)
    # Some favourites are web shops abroad: the usual share of cross-border payments.
    foreign = rng.random(w.c_fav.shape) < 0.08
    w.c_fav[foreign] = rng.choice(w.remote_pool[0], size=foreign.sum(), p=w.remote_pool[1])
    w.c_stored[:] = (w.m_mix[w.c_fav, ECOM] > 0.3) & (rng.random(w.c_fav.shape) < 0.4)


def _normalized(weights: Any) -> np.ndarray:
    values = np.asarray(weights, dtype=np.float64)
    return values / values.sum()


# ------------------------------------------------------------------------------------ legit payments


def _legit_day(rng: np.random.Generator, w: _World, day: int) -> Batch:
    """One day of legitimate payments of every customer, from their habits."""
    weekday = (w.start + timedelta(days=day)).weekday()
    counts = rng.poisson(w.c_rate * w.c_week[:, weekday])
    cust = np.repeat(np.arange(len(counts)), counts)
    n = cust.size
    on_trip = (w.c_trip_days > 0) & (day >= w.c_trip_start) & (day < w.c_trip_start + w.c_trip_days)
    away = on_trip[cust]
    where = np.where(away, w.c_trip_country[cust], w.c_country[cust])
    merchant, fav_slot = _pick_merchants(rng, w, cust, where, away)
    channel = _pick_channels(rng, w, merchant, where)
    ecom, pos, moto = channel == ECOM, channel == POS, channel == MOTO
    second = (w.c_card2[cust] >= 0) & (rng.random(n) < 0.3)
    card = np.where(second, w.c_card2[cust], w.c_card[cust])
    cat = w.m_cat[merchant]
    usual = MEDIANS[cat] * FX[w.m_country[merchant]] * w.c_level[cust]
    amount = np.maximum(0.3, np.round(usual * rng.lognormal(0.0, w.c_spread[cust]), 2))
    on_file = ecom & ~second & (fav_slot >= 0) & w.c_stored[cust, np.maximum(fav_slot, 0)]
    decline = _legit_declines(rng, amount > 4 * usual)
    approved = pd.isna(decline)
    ts = w.start_ms + day * DAY_MS + _time_of_day_ms(rng, w, cust, where)
    refund, cancel = _refunds_and_cancels(rng, ts, approved, cat)
    return _batch(
        n,
        ts=ts,
        card=card,
        merchant=merchant,
        channel=channel,
        amount=amount,
        customer_id=_masked(w.c_id[cust], ecom & (rng.random(n) < 0.8)),  # others check out as guests
        email=_masked(w.c_email[cust], ecom | moto),
        device_id=_masked(_legit_devices(rng, w, cust), ecom & (rng.random(n) < 0.92)),
        **_legit_ips(rng, w, cust, where, away, ecom),
        shipping_country=_masked(_legit_shipping(rng, w, cust), (ecom | moto) & SHIPS[cat]),
        payment_method=_payment_methods(rng, channel),
        card_on_file=_masked(on_file, ecom | moto),
        # One-click payments with a stored card are mostly exempt from 3-D Secure.
        authenticated=_masked(ecom & (rng.random(n) < np.where(on_file, 0.15, 0.8)), ecom | moto),
        terminal=_terminals(rng, w, merchant, pos),
        decline_code=decline,
        refund_time=refund,
        cancel_time=cancel,
    )


def _pick_merchants(
    rng: np.random.Generator, w: _World, cust: np.ndarray, where: np.ndarray, away: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each payment goes, and which favourite slot it used (-1: not a favourite)."""
    n = cust.size
    slot = rng.choice(FAVOURITES, size=n, p=FAVOURITE_WEIGHTS)
    merchant = w.c_fav[cust, slot]
    # A favourite shop is out of reach from abroad unless it sells online.
    reachable = (w.m_country[merchant] == where) | (w.m_mix[merchant, ECOM] > 0)
    use_fav = reachable & (rng.random(n) < np.where(away, 0.3, 0.8))
    foreign = ~use_fav & (rng.random(n) < 0.04)
    merchant[foreign] = rng.choice(w.remote_pool[0], size=foreign.sum(), p=w.remote_pool[1])
    local = ~use_fav & ~foreign
    for country in np.unique(where[local]):
        rows = np.flatnonzero(local & (where == country))
        pool, p = w.local_pools[country]
        merchant[rows] = rng.choice(pool, size=rows.size, p=p)
    return merchant, np.where(use_fav, slot, -1)


def _pick_channels(
    rng: np.random.Generator, w: _World, merchant: np.ndarray, where: np.ndarray
) -> np.ndarray:
    mix = w.m_mix[merchant]
    u = rng.random(merchant.size) * mix.sum(axis=1)  # u < total: a channel with no share is never drawn
    channel = (u >= mix[:, ECOM]).astype(np.int8) + (u >= mix[:, ECOM] + mix[:, POS])
    # Nobody pays in a shop of a country they are not in: abroad, an in-store draw is online.
    channel[(channel == POS) & (w.m_country[merchant] != where)] = ECOM
    return channel


def _time_of_day_ms(rng: np.random.Generator, w: _World, cust: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Time after midnight UTC: the customer's local rhythm, shifted by where they are."""
    first = rng.random(cust.size) < w.c_peak_share[cust]
    peak = np.where(first, w.c_peaks[cust, 0], w.c_peaks[cust, 1])
    hour = (rng.normal(peak, w.c_hour_sd[cust]) - UTC_OFFSETS[where]) % 24.0
    return (hour * HOUR_MS).astype(np.int64)  # continuous: random seconds and milliseconds


def _legit_devices(rng: np.random.Generator, w: _World, cust: np.ndarray) -> np.ndarray:
    devices = w.c_devices[cust, rng.integers(0, w.c_n_devices[cust])]
    new = rng.random(cust.size) < 0.04  # a new phone, a work laptop: not every new device is fraud
    devices[new] = _tokens(rng, "dev_", int(new.sum()))
    return devices


def _legit_ips(
    rng: np.random.Generator,
    w: _World,
    cust: np.ndarray,
    where: np.ndarray,
    away: np.ndarray,
    ecom: np.ndarray,
) -> dict[str, np.ndarray]:
    ips = w.c_ips[cust, rng.integers(0, w.c_n_ips[cust])]
    # Mobile networks and travel hand out other addresses, in the country the customer is in.
    other = away | (rng.random(cust.size) < 0.1)
    ips[other] = _random_ips(rng, w.ip_prefixes, where[other])
    has_ip = ecom & (rng.random(cust.size) < 0.98)
    return {"ip": _masked(ips, has_ip), "ip_country": _masked(COUNTRY_CODES[where], has_ip)}


def _legit_shipping(rng: np.random.Generator, w: _World, cust: np.ndarray) -> np.ndarray:
    gift = rng.random(cust.size) < 0.02  # a parcel for someone abroad
    country = np.where(gift, rng.integers(0, N_HOME, size=cust.size), w.c_country[cust])
    return COUNTRY_CODES[country]


def _payment_methods(rng: np.random.Generator, channel: np.ndarray) -> np.ndarray:
    n = channel.size
    out = np.full(n, "card", dtype=object)
    pos, ecom = channel == POS, channel == ECOM
    out[pos] = _choose(rng, (("contactless", 0.62), ("chip", 0.33), ("magstripe", 0.05)), int(pos.sum()))
    out[ecom] = _choose(rng, (("card", 0.7), ("wallet", 0.3)), int(ecom.sum()))
    return out


def _terminals(rng: np.random.Generator, w: _World, merchant: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Index into ``w.terminals`` of the till used (-1 when not in store)."""
    count = w.m_term_count[merchant]
    index = w.m_term_first[merchant] + (rng.random(merchant.size) * count).astype(np.int64)
    return np.where(pos & (count > 0), index, -1)


def _legit_declines(rng: np.random.Generator, unusual: np.ndarray) -> np.ndarray:
    # Most legitimate declines are insufficient funds, more often on an unusually large amount.
    declined = rng.random(unusual.size) < np.where(unusual, 0.06, 0.012)
    out = np.full(unusual.size, None, dtype=object)
    out[declined] = _choose(rng, LEGIT_DECLINES, int(declined.sum()))
    return out


def _refunds_and_cancels(
    rng: np.random.Generator, ts: np.ndarray, approved: np.ndarray, cat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = ts.size
    returns = np.where(np.isin(MCCS[cat], ("5691", "5732")), 0.05, 0.012)  # clothes come back most
    refunded = approved & (rng.random(n) < returns)
    cancelled = approved & ~refunded & (rng.random(n) < 0.005)
    refund = np.where(refunded, ts + rng.integers(DAY_MS, 20 * DAY_MS, size=n), NAT_MS)
    cancel = np.where(cancelled, ts + rng.integers(5 * MINUTE_MS, 6 * HOUR_MS, size=n), NAT_MS)
    return refund, cancel


# -------------------------------------------------------------------------------------------- fraud


@dataclass
class _FraudContext:
    rng: np.random.Generator
    w: _World
    legit: Batch
    used_terminals: set[int] = field(default_factory=set)
    used_merchants: set[int] = field(default_factory=set)

    def time(self, margin_ms: int) -> int:
        """A random instant of the period, at least ``margin_ms`` before its end."""
        return self.w.start_ms + int(self.rng.integers(0, self.w.days * DAY_MS - margin_ms))

    def pool(self, mccs: tuple[str, ...], channel: int = ECOM) -> np.ndarray:
        """Merchants of these categories that take ``channel``; any such merchant if none."""
        takes = self.w.m_mix[:, channel] > 0
        chosen = np.flatnonzero(takes & np.isin(MCCS[self.w.m_cat], mccs))
        return chosen if chosen.size else np.flatnonzero(takes)

    def foreign_country(self, home: int, size: int | None = None) -> Any:
        """Countries (indices into COUNTRY_CODES) other than ``home``, customers' or not."""
        return (home + self.rng.integers(1, len(COUNTRY_CODES), size=size)) % len(COUNTRY_CODES)

    def fraud_emails(self, n: int) -> np.ndarray:
        domains = np.array(["@example.com", "@example.org", "@example.net"], dtype=object)
        return _tokens(self.rng, "", n, 6) + domains[self.rng.integers(0, 3, size=n)]

    def declines(self, n: int, rate: float, codes: tuple[tuple[str, float], ...]) -> np.ndarray:
        out = np.full(n, None, dtype=object)
        declined = self.rng.random(n) < rate
        out[declined] = _choose(self.rng, codes, int(declined.sum()))
        return out

    def chargebacks(self, ts: np.ndarray, per_row: bool = False) -> np.ndarray:
        """When each fraud's label arrived: 3 to 60 days later, one dispute per incident."""
        size = ts.size if per_row else 1
        delay = np.clip(self.rng.lognormal(np.log(18.0), 0.6, size=size), 3.0, 60.0) * DAY_MS
        arrival = (ts if per_row else ts.max()) + delay.astype(np.int64)
        arrival = arrival + self.rng.integers(0, 12 * HOUR_MS, size=ts.size)
        return np.clip(arrival, ts + 3 * DAY_MS, ts + 60 * DAY_MS)


def _inject_fraud(cx: _FraudContext, n_legit: int) -> list[Batch]:
    """Incidents of every pattern until each has its share of about FRAUD_RATE of all rows."""
    total = n_legit * FRAUD_RATE / (1.0 - FRAUD_RATE)
    batches: list[Batch] = []
    for pattern in FRAUD_PATTERNS:
        target, done = max(1, round(total * PATTERN_SHARES[pattern])), 0
        for _ in range(10_000):  # a bound, never reached in practice
            if done >= target:
                break
            batch = _GENERATORS[pattern](cx, target - done)
            batches.append(batch)
            done += len(batch["ts"])
    return batches


def _card_testing(cx: _FraudContext, remaining: int) -> Batch:
    """Tiny payments on one card within minutes at several merchants; maybe a cash-out after."""
    rng, w = cx.rng, cx.w
    card = int(rng.integers(w.n_cards))
    home = int(w.c_country[w.k_owner[card]])
    n = int(rng.integers(5, 26))
    ts = cx.time(DAY_MS) + np.cumsum(rng.exponential(40_000, size=n)).astype(np.int64)
    shops = rng.choice(cx.pool(TESTING_MCCS), size=int(rng.integers(2, 6)))
    whole = rng.random(n) < 0.5  # testers like round amounts
    amount = np.where(whole, rng.integers(1, 6, size=n), np.round(rng.uniform(0.5, 5.0, size=n), 2))
    ip_country = int(cx.foreign_country(home)) if rng.random() < 0.7 else home
    common = {
        "card": card,
        "channel": ECOM,
        "device_id": _tokens(rng, "dev_", 1)[0],
        "ip": _random_ips(rng, w.ip_prefixes, np.array([ip_country]))[0],
        "ip_country": COUNTRY_CODES[ip_country],
        "email": cx.fraud_emails(1)[0] if rng.random() < 0.7 else None,
        "payment_method": "card",
        "card_on_file": False,
        "authenticated": False,
        "fraud_pattern": "card_testing",
    }
    decline = cx.declines(n, 0.6, (("14", 0.4), ("05", 0.35), ("54", 0.25)))
    batches = [
        _batch(n, ts=ts, merchant=rng.choice(shops, size=n), amount=amount, decline_code=decline, **common)
    ]
    if pd.isna(decline).any() and rng.random() < 0.5:
        # The card works: cash it out with a real purchase a little later.
        k = int(rng.integers(1, 3))
        later = ts[-1] + np.sort(rng.integers(5 * MINUTE_MS, 2 * HOUR_MS, size=k))
        merchant = rng.choice(cx.pool(CASHOUT_MCCS), size=k)
        batches.append(
            _batch(
                k,
                ts=later,
                merchant=merchant,
                amount=np.round(rng.uniform(150, 900, size=k) * FX[w.m_country[merchant]], 2),
                shipping_country=COUNTRY_CODES[cx.foreign_country(home, k)],
                decline_code=cx.declines(k, 0.2, (("05", 0.6), ("59", 0.4))),
                **common,
            )
        )
    batch = _concat(batches)
    batch["label_time"] = cx.chargebacks(batch["ts"])
    return batch


def _stolen_card(cx: _FraudContext, remaining: int) -> Batch:
    """Card-not-present purchases far above the cardholder's habit, from abroad, shipped elsewhere."""
    rng, w = cx.rng, cx.w
    card = int(rng.integers(w.n_cards))
    owner = int(w.k_owner[card])
    home = int(w.c_country[owner])
    n = int(rng.integers(1, 7))
    ts = cx.time(2 * DAY_MS) + np.sort(rng.integers(0, int(rng.integers(HOUR_MS // 2, 2 * DAY_MS)), size=n))
    merchant = rng.choice(cx.pool(CASHOUT_MCCS), size=n)
    moto = (w.m_mix[merchant, MOTO] > 0) & (rng.random(n) < 0.5)
    ecom = ~moto
    ip_country = int(cx.foreign_country(home))
    habit = MEDIANS.mean() * w.c_level[owner]
    amount = np.maximum(150.0, habit * rng.uniform(4, 15, size=n)) * FX[w.m_country[merchant]]
    batch = _batch(
        n,
        ts=ts,
        card=card,
        merchant=merchant,
        channel=np.where(moto, MOTO, ECOM),
        amount=np.round(amount, 2),
        customer_id=_tokens(rng, "cust_", 1, 6)[0] if rng.random() < 0.5 else None,  # else guest
        email=cx.fraud_emails(1)[0],
        device_id=_masked(np.full(n, _tokens(rng, "dev_", 1)[0], dtype=object), ecom),
        ip=_masked(
            np.full(n, _random_ips(rng, w.ip_prefixes, np.array([ip_country]))[0], dtype=object), ecom
        ),
        ip_country=_masked(np.full(n, COUNTRY_CODES[ip_country], dtype=object), ecom),
        shipping_country=COUNTRY_CODES[cx.foreign_country(home)],
        payment_method="card",
        card_on_file=False,
        authenticated=ecom & (rng.random(n) < 0.1),
        decline_code=cx.declines(n, 0.2, (("05", 0.6), ("59", 0.4))),
        fraud_pattern="stolen_card",
    )
    batch["label_time"] = cx.chargebacks(ts)
    return batch


def _account_takeover(cx: _FraudContext, remaining: int) -> Batch:
    """A hijacked account: one-click payments with the stored card, new device and IP, a spree."""
    rng, w = cx.rng, cx.w
    # The victim is an active online customer: drawn through a past one-click payment of theirs.
    one_click = np.flatnonzero(cx.legit["card_on_file"].astype(bool))
    if one_click.size:
        seen = int(rng.choice(one_click))
        owner, after = int(w.k_owner[cx.legit["card"][seen]]), int(cx.legit["ts"][seen])
    else:
        owner, after = int(rng.integers(len(w.c_id))), w.start_ms
    stored = w.c_fav[owner][w.c_stored[owner]]
    if stored.size == 0:
        stored = cx.pool(CASHOUT_MCCS)
    home = int(w.c_country[owner])
    n = int(rng.integers(3, 11))
    latest = w.end_ms - 7 * HOUR_MS
    start = min(latest, after + int(rng.integers(HOUR_MS, max(2 * HOUR_MS, latest - after))))
    ts = start + np.sort(rng.integers(0, int(rng.integers(20 * MINUTE_MS, 6 * HOUR_MS)), size=n))
    merchant = rng.choice(stored, size=n)
    amount = np.maximum(80.0, MEDIANS[w.m_cat[merchant]] * w.c_level[owner] * rng.uniform(3, 10, size=n))
    ip_country = home if rng.random() < 0.6 else int(cx.foreign_country(home))  # proxies look local
    batch = _batch(
        n,
        ts=ts,
        card=int(w.c_card[owner]),
        merchant=merchant,
        channel=ECOM,
        amount=np.round(amount * FX[w.m_country[merchant]], 2),
        customer_id=w.c_id[owner],
        email=w.c_email[owner] if rng.random() < 0.7 else cx.fraud_emails(1)[0],  # or changed
        device_id=_tokens(rng, "dev_", 1)[0],
        ip=_random_ips(rng, w.ip_prefixes, np.array([ip_country]))[0],
        ip_country=COUNTRY_CODES[ip_country],
        shipping_country=COUNTRY_CODES[home if rng.random() < 0.4 else int(cx.foreign_country(home))],
        payment_method="card",
        card_on_file=True,
        authenticated=rng.random(n) < 0.1,
        decline_code=cx.declines(n, 0.1, (("05", 0.7), ("51", 0.3))),
        fraud_pattern="account_takeover",
    )
    batch["label_time"] = cx.chargebacks(ts)
    return batch


def _compromised_terminal(cx: _FraudContext, remaining: int) -> Batch:
    """A skimmed till: some cards used there are cloned and spent in shops of another country."""
    rng, w, legit = cx.rng, cx.w, cx.legit
    terminal = _busy_terminal(cx)
    first_day = int(rng.integers(0, max(1, int(0.6 * w.days) - 3)))
    window = (w.start_ms + first_day * DAY_MS, w.start_ms + (first_day + int(rng.integers(3, 11))) * DAY_MS)
    at = (legit["terminal"] == terminal) & (legit["ts"] >= window[0]) & (legit["ts"] < window[1])
    skimmed, last_seen = _last_use(legit["card"][at], legit["ts"][at])
    if skimmed.size == 0:
        return _batch(0)
    cloned = rng.random(skimmed.size) < 0.4
    cloned[rng.integers(skimmed.size)] = True  # at least one, so that the pattern shows
    cloned[np.cumsum(cloned) > max(1, remaining // 3)] = False  # a busy till: keep to the target
    owner = np.repeat(np.arange(len(w.m_id)), w.m_term_count)[terminal]
    merchant_country = int(w.m_country[owner])
    ring = (merchant_country + int(rng.integers(1, N_HOME))) % N_HOME  # cashed out abroad
    shops = cx.pool(SHOP_MCCS, POS)
    abroad = shops[w.m_country[shops] == ring]
    shops = abroad if abroad.size else shops[w.m_country[shops] != merchant_country]
    shops = shops if shops.size else cx.pool(SHOP_MCCS, POS)
    batches = [
        _cloned_card(cx, int(c), int(t), shops)
        for c, t in zip(skimmed[cloned], last_seen[cloned], strict=True)
    ]
    return _concat([b for b in batches if b["ts"].size] or [_batch(0)])


def _busy_terminal(cx: _FraudContext) -> int:
    """A till not yet skimmed, drawn by its traffic (fraudsters go where many cards pass)."""
    terminal = cx.legit["terminal"]
    counts = np.bincount(terminal[terminal >= 0], minlength=len(cx.w.terminals)).astype(np.float64)
    counts[list(cx.used_terminals)] = 0.0
    if counts.sum() == 0:
        counts = np.ones(len(cx.w.terminals))
    chosen = int(cx.rng.choice(len(counts), p=counts / counts.sum()))
    cx.used_terminals.add(chosen)
    return chosen


def _last_use(card: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct cards (in order of card index) and the last time each was seen."""
    order = np.lexsort((ts, card))
    card, ts = card[order], ts[order]
    last = np.append(card[1:] != card[:-1], True) if card.size else np.zeros(0, dtype=bool)
    return card[last], ts[last]


def _cloned_card(cx: _FraudContext, card: int, skimmed_at: int, shops: np.ndarray) -> Batch:
    rng, w = cx.rng, cx.w
    n = int(rng.integers(1, 6))
    span = int(rng.integers(HOUR_MS, 3 * DAY_MS))
    earliest, latest = skimmed_at + 2 * DAY_MS, min(skimmed_at + 30 * DAY_MS, w.end_ms - span)
    if earliest >= latest:
        return _batch(0)  # the period ends before this card could be cloned
    ts = int(rng.integers(earliest, latest)) + np.sort(rng.integers(0, span, size=n))
    merchant = rng.choice(shops, size=n)
    batch = _batch(
        n,
        ts=ts,
        card=card,
        merchant=merchant,
        channel=POS,
        amount=np.round(rng.uniform(60, 600, size=n) * FX[w.m_country[merchant]], 2),
        payment_method=_choose(rng, (("magstripe", 0.85), ("chip", 0.15)), n),  # a clone has no chip
        terminal=_terminals(rng, w, merchant, np.ones(n, dtype=bool)),
        decline_code=cx.declines(n, 0.15, (("05", 0.6), ("59", 0.4))),
        fraud_pattern="compromised_terminal",
    )
    batch["label_time"] = cx.chargebacks(ts)
    return batch


def _collusive_merchant(cx: _FraudContext, remaining: int) -> Batch:
    """A small merchant charging many stolen cards over some days, then gone (a bust-out)."""
    rng, w = cx.rng, cx.w
    merchant = _small_merchant(cx)
    length = int(rng.integers(5, 16))
    first_day = int(rng.integers(int(0.1 * w.days), max(int(0.1 * w.days) + 1, w.days - length)))
    length = min(length, w.days - first_day)
    n = max(10, min(remaining, int(rng.integers(8, 21)) * length))
    ts = np.sort(w.start_ms + first_day * DAY_MS + rng.integers(0, length * DAY_MS, size=n))
    moto = bool(w.m_mix[merchant, ECOM] == 0 or (w.m_mix[merchant, MOTO] > 0 and rng.random() < 0.5))
    country = int(w.m_country[merchant])
    # The operator keys the cards in from a handful of devices in its own country.
    devices = _tokens(rng, "dev_", int(rng.integers(2, 5)))
    ips = _random_ips(rng, w.ip_prefixes, np.full(devices.size, country))
    which = rng.integers(0, devices.size, size=n)
    online = np.full(n, not moto)
    price = rng.choice([49.0, 79.0, 99.0, 129.0, 149.0, 199.0, 249.0], size=n) - rng.choice(
        [0, 0.01, 0.05], size=n
    )
    batch = _batch(
        n,
        ts=ts,
        card=rng.integers(0, w.n_cards, size=n),
        merchant=merchant,
        channel=MOTO if moto else ECOM,
        amount=np.round(price * FX[country], 2),
        email=cx.fraud_emails(n),
        device_id=_masked(devices[which], online),
        ip=_masked(ips[which], online),
        ip_country=_masked(np.full(n, COUNTRY_CODES[country], dtype=object), online),
        payment_method="card",
        card_on_file=False,
        authenticated=False,
        decline_code=cx.declines(n, 0.12, (("05", 0.6), ("59", 0.4))),
        fraud_pattern="collusive_merchant",
    )
    batch["label_time"] = cx.chargebacks(ts, per_row=True)  # each victim disputes on their own
    return batch


def _small_merchant(cx: _FraudContext) -> int:
    """A merchant with little traffic that sells remotely, not already a bust-out."""
    w = cx.w
    remote = (w.m_mix[:, ECOM] > 0) | (w.m_mix[:, MOTO] > 0)
    small = w.m_pop <= np.median(w.m_pop)
    unused = ~np.isin(np.arange(len(w.m_id)), list(cx.used_merchants))
    for candidates in (
        remote & small & unused & np.isin(MCCS[w.m_cat], BUSTOUT_MCCS),
        remote & small & unused,
        remote & unused,
        remote,
    ):
        if candidates.any():
            chosen = int(cx.rng.choice(np.flatnonzero(candidates)))
            cx.used_merchants.add(chosen)
            return chosen
    raise AssertionError("no merchant sells remotely")  # _make_merchants creates every category


_GENERATORS: dict[str, Callable[[_FraudContext, int], Batch]] = {
    "card_testing": _card_testing,
    "stolen_card": _stolen_card,
    "account_takeover": _account_takeover,
    "compromised_terminal": _compromised_terminal,
    "collusive_merchant": _collusive_merchant,
}


# --------------------------------------------------------------------------------------- batches


_REQUIRED = object()
# Internal columns: dtype and default. Card, merchant and terminal are indices into the world;
# times are int64 milliseconds since the epoch (NAT_MS when missing).
_BATCH_COLUMNS: dict[str, tuple[Any, Any]] = {
    "ts": (np.int64, _REQUIRED),
    "card": (np.int64, _REQUIRED),
    "merchant": (np.int64, _REQUIRED),
    "channel": (np.int8, _REQUIRED),
    "amount": (np.float64, _REQUIRED),
    "customer_id": (object, None),
    "email": (object, None),
    "ip": (object, None),
    "device_id": (object, None),
    "ip_country": (object, None),
    "shipping_country": (object, None),
    "payment_method": (object, None),
    "card_on_file": (object, None),
    "authenticated": (object, None),
    "terminal": (np.int64, -1),
    "decline_code": (object, None),
    "label_time": (np.int64, NAT_MS),
    "refund_time": (np.int64, NAT_MS),
    "cancel_time": (np.int64, NAT_MS),
    "fraud_pattern": (object, ""),
}


def _batch(n: int, **columns: Any) -> Batch:
    """``n`` rows; each column a scalar (repeated) or an array of length ``n``, else its default."""
    unknown = set(columns) - set(_BATCH_COLUMNS)
    if unknown:
        raise TypeError(f"unknown batch columns {sorted(unknown)}")
    out: Batch = {}
    for name, (dtype, default) in _BATCH_COLUMNS.items():
        value = columns.get(name, default)
        if value is _REQUIRED:
            if n:
                raise TypeError(f"batch column {name!r} is required")
            value = 0
        out[name] = np.empty(n, dtype=dtype)
        out[name][:] = value
    return out


def _concat(batches: list[Batch]) -> Batch:
    return {name: np.concatenate([b[name] for b in batches]) for name in _BATCH_COLUMNS}


def _masked(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``values`` as objects where ``keep``, None elsewhere."""
    out = np.full(values.shape, None, dtype=object)
    out[keep] = values[keep]
    return out


def _assemble(rng: np.random.Generator, w: _World, b: Batch) -> pd.DataFrame:
    """The canonical frame: rows sorted by time, ids in that order, dtypes as load_history's."""
    order = np.argsort(b["ts"], kind="stable")
    b = {name: values[order] for name, values in b.items()}
    n = b["ts"].size
    card, merchant, channel = b["card"], b["merchant"], b["channel"]
    card_country = COUNTRY_CODES[w.c_country[w.k_owner[card]]]
    declined = pd.notna(b["decline_code"])
    fraud = b["fraud_pattern"] != ""
    columns: dict[str, Any] = {
        "transaction_id": np.array([f"tx_{i:09d}" for i in range(n)], dtype=object),
        "timestamp": _utc(b["ts"]),
        "card_id": _reissued(w.k_id[card], b["ts"], b["label_time"], fraud),
        "merchant_id": w.m_id[merchant],
        "amount": np.round(b["amount"], 2),
        "currency": CURRENCIES[w.m_country[merchant]],
        "customer_id": b["customer_id"],
        "email": b["email"],
        "ip": b["ip"],
        "device_id": b["device_id"],
        "card_bin": w.k_bin[card],
        "card_country": card_country,
        "ip_country": b["ip_country"],
        "billing_country": _masked(card_country, channel != POS),  # shops do not ask for an address
        "shipping_country": b["shipping_country"],
        "mcc": MCCS[w.m_cat[merchant]],
        "channel": CHANNELS[channel],
        "payment_method": b["payment_method"],
        "card_on_file": pd.array(b["card_on_file"], dtype="boolean"),
        "authenticated": pd.array(b["authenticated"], dtype="boolean"),
        "terminal_id": _masked(w.terminals[np.maximum(b["terminal"], 0)], b["terminal"] >= 0),
        "label": fraud.astype(np.int8),
        "label_time": _utc(b["label_time"]),
        "bank_outcome": np.where(declined, "declined", "approved").astype(object),
        "decline_code": b["decline_code"],
        "outcome_time": _utc(b["ts"] + rng.integers(200, 3001, size=n)),  # the bank answers in 0.2-3 s
        "refund_time": _utc(b["refund_time"]),
        "cancel_time": _utc(b["cancel_time"]),
        "fraud_pattern": b["fraud_pattern"],
    }
    assert tuple(columns)[: len(TRANSACTION_COLUMNS)] == TRANSACTION_COLUMNS
    return pd.DataFrame(columns)


def _reissued(card_id: np.ndarray, ts: np.ndarray, label_ms: np.ndarray, fraud: np.ndarray) -> np.ndarray:
    """Card ids with each holder's legitimate payments after the card's first reported fraud moved to
    the replacement card (the id with ``r`` appended): an issuer closes a card with confirmed fraud."""
    reported = pd.Series(label_ms[fraud]).groupby(card_id[fraud]).min()
    closed_at = pd.Series(card_id).map(reported).to_numpy(dtype=float, na_value=np.inf)
    moved = ~fraud & (ts > closed_at)
    out = card_id.copy()
    out[moved] = np.char.add(card_id[moved].astype(str), "r").astype(object)
    return out


def _utc(ms: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(ms.view("datetime64[ms]")).tz_localize("UTC").as_unit("ns")
