"""Simulator drift: trouble injected into a simulated history from a given day on, for monitoring.

A model is trained on the days before the trouble; ``antifraud monitor`` (docs/monitoring.md) must
then see it in the days after. ``simulate(..., drift=Drift(after, kinds))`` or
``antifraud simulate --drift-after DAY --drift KIND`` adds, from the start plus ``after`` days on:

* ``new-fraud-pattern``: a fraud scheme absent before, ``fresh_card_ring``: cards never seen before
  (bought in bulk), each spent one to four times within half an hour for small amounts at a handful
  of web merchants that open on the drift day, from one IP range of the cards' country, each card
  from a device of its own, as guests. The features see it (a card and a merchant without history,
  a new merchant, a burst) but the model never learned it: before the drift day a card without
  history was one of the world's first payments, almost always legitimate. About
  ``NEW_PATTERN_SHARE`` of each later day's payments; chargebacks as the default patterns' (3 to 60
  days, median 18).
* ``missing-device``: ``device_id`` stops arriving (null on every payment), as when a client's
  release drops the device fingerprint.
* ``amount-scale``: every amount is multiplied by ``amount_factor`` (100 by default, as when a client
  starts sending minor units, cents instead of euros), currency unchanged.

The payments before the drift day are untouched (transaction ids included: they are numbered in
time order), and every draw comes from a generator of its own, seeded from the simulator's seed: the
same arguments give the same frame, and a simulation without drift is exactly what it was before
drift existed. The kinds combine; the new scheme's payments carry the other kinds' trouble too.
"""

from __future__ import annotations

import numpy as np

from antifraud.training.simulator import (
    COUNTRY_CODES,
    DAY_MS,
    ECOM,
    FX,
    MCCS,
    MINUTE_MS,
    N_HOME,
    Batch,
    Drift,
    _batch,
    _concat,
    _FraudContext,
    _tokens,
    _World,
)

__all__ = ["NEW_PATTERN", "NEW_PATTERN_SHARE", "apply_drift"]

NEW_PATTERN = "fresh_card_ring"  # its rows' fraud_pattern
NEW_PATTERN_SHARE = 0.015  # the new scheme's payments, as a share of each later day's other payments
RING_MCCS = ("5815", "7995", "5967")  # digital goods, gambling, direct marketing: resold at once
_STREAM = 0x17  # the drift's own generator: seeded (seed, _STREAM), never the world's


def apply_drift(drift: Drift, seed: int, world: _World, payments: Batch) -> Batch:
    """``payments`` (every row of the history, before assembly) with ``drift``'s trouble."""
    rng = np.random.default_rng([seed, _STREAM])
    start_ms = world.start_ms + drift.after * DAY_MS
    if "new-fraud-pattern" in drift.kinds:
        payments = _concat([payments, _fresh_card_ring(rng, world, payments, drift.after)])
    later = payments["ts"] >= start_ms
    if "missing-device" in drift.kinds:
        payments["device_id"][later] = None
    if "amount-scale" in drift.kinds:
        payments["amount"][later] = payments["amount"][later] * drift.amount_factor
    return payments


def _fresh_card_ring(rng: np.random.Generator, w: _World, payments: Batch, after: int) -> Batch:
    """The new scheme's payments on days ``after`` to the end (see the module docstring)."""
    # a country with cardholders: the stolen details name real people there
    country = int(rng.choice(N_HOME, p=np.bincount(w.c_country, minlength=N_HOME) / w.c_country.size))
    merchants = _open_merchants(rng, w, country, int(rng.integers(3, 7)))
    per_day = np.bincount((payments["ts"] - w.start_ms) // DAY_MS, minlength=w.days)[after:]
    card_day = after + np.repeat(np.arange(per_day.size), rng.poisson(per_day * NEW_PATTERN_SHARE / 2.5))
    per_card = rng.integers(1, 5, size=card_day.size)  # 2.5 payments per card on average
    cards = _issue_cards(rng, w, country, card_day.size)
    n = int(per_card.sum())
    if n == 0:
        return _batch(0)
    first = w.start_ms + card_day * DAY_MS + rng.integers(0, DAY_MS - 30 * MINUTE_MS, size=card_day.size)
    ts = np.repeat(first, per_card) + rng.integers(0, 30 * MINUTE_MS, size=n)
    net = w.ip_prefixes[country, int(rng.integers(0, 3))]  # one /16 of the country's networks
    hosts = zip(rng.integers(0, 256, size=n), rng.integers(1, 255, size=n), strict=True)
    cx = _FraudContext(rng, w, payments)
    batch = _batch(
        n,
        ts=ts,
        card=np.repeat(cards, per_card),
        merchant=merchants[rng.integers(0, merchants.size, size=n)],
        channel=ECOM,
        amount=np.round(np.clip(rng.lognormal(np.log(12.0), 0.5, size=n), 2.0, 40.0) * FX[country], 2),
        email=np.repeat(cx.fraud_emails(cards.size), per_card),
        device_id=np.repeat(_tokens(rng, "dev_", cards.size), per_card),
        ip=np.array([f"{net[0]}.{net[1]}.{x}.{y}" for x, y in hosts], dtype=object),
        ip_country=COUNTRY_CODES[country],
        payment_method="card",
        card_on_file=False,
        authenticated=rng.random(n) < 0.3,
        decline_code=cx.declines(n, 0.1, (("05", 0.5), ("51", 0.5))),
        fraud_pattern=NEW_PATTERN,
    )
    # one dispute per card, when its holder reads the statement
    batch["label_time"] = np.concatenate([cx.chargebacks(t) for t in np.split(ts, np.cumsum(per_card)[:-1])])
    return batch


def _open_merchants(rng: np.random.Generator, w: _World, country: int, n: int) -> np.ndarray:
    """``n`` web merchants of ``country`` that sell what resells at once, appended to the world."""
    ids = np.zeros(0, dtype=object)
    while ids.size < n:  # identifiers unique among all merchants
        fresh = _tokens(rng, "mer_", n - ids.size, 5)
        ids = np.concatenate([ids, fresh[~np.isin(fresh, w.m_id) & ~np.isin(fresh, ids)]])
    categories = np.flatnonzero(np.isin(MCCS, RING_MCCS))
    first = len(w.m_id)
    w.m_id = np.concatenate([w.m_id, ids])
    w.m_cat = np.concatenate([w.m_cat, rng.choice(categories, size=n)])
    w.m_country = np.concatenate([w.m_country, np.full(n, country, dtype=w.m_country.dtype)])
    w.m_mix = np.concatenate([w.m_mix, np.tile([1.0, 0.0, 0.0], (n, 1))])  # online only: no terminal
    w.m_pop = np.concatenate([w.m_pop, np.full(n, float(np.min(w.m_pop)))])
    w.m_term_first = np.concatenate([w.m_term_first, np.zeros(n, dtype=np.int64)])
    w.m_term_count = np.concatenate([w.m_term_count, np.zeros(n, dtype=np.int64)])
    return np.arange(first, first + n)


def _issue_cards(rng: np.random.Generator, w: _World, country: int, n: int) -> np.ndarray:
    """``n`` cards never used before, of issuers of ``country``, appended to the world."""
    ids = np.zeros(0, dtype=object)
    while ids.size < n:  # identifiers unique among all cards, replacements included ("r" appended)
        fresh = _tokens(rng, "card_", n - ids.size)
        ids = np.concatenate([ids, fresh[~np.isin(fresh, w.k_id) & ~np.isin(fresh, ids)]])
    holders = np.flatnonzero(w.c_country == country)
    owner = rng.choice(holders, size=n)
    first = len(w.k_id)
    w.k_id = np.concatenate([w.k_id, ids])
    w.k_bin = np.concatenate([w.k_bin, w.k_bin[w.c_card[owner]]])  # their issuers' BINs
    w.k_owner = np.concatenate([w.k_owner, owner])
    return np.arange(first, first + n)
