"""Derive one payment's features from its raw aggregates: the service's path against the vectorised one.

    .venv/bin/python benchmarks/bench_derive.py

Prints the best of 7 x 5,000 calls of `Deriver.transform_one` (plain Python, used online) and of
`Deriver.transform` on a one-row matrix (numpy, used offline), measured in the same run.
"""

from __future__ import annotations

import timeit

import numpy as np

from antifraud.features.derive import Deriver
from antifraud.features.payment import PAYMENT_FIELDS
from antifraud.features.plan import compile_plan
from antifraud.features.spec import load_spec

PAYMENT = {
    "amount": 12.5,
    "channel": "ecom",
    "mcc": "5411",
    "card_on_file": False,
    "authenticated": True,
    "ip_country": "FR",
    "card_country": "DE",
}
T_MS = 1_772_000_000_000


def main() -> None:
    deriver = Deriver(compile_plan(load_spec()))
    raw = np.ones(len(deriver.plan.raw_names))
    columns = {name: np.array([PAYMENT.get(name)], dtype=object) for name in PAYMENT_FIELDS}
    paths = {
        "transform_one (plain Python, online)": lambda: deriver.transform_one(raw, PAYMENT, T_MS),
        "transform on one row (numpy, offline)": lambda: deriver.transform(
            raw[None], columns, np.array([T_MS])
        ),
    }
    for name, call in paths.items():
        best = min(timeit.repeat(call, number=5000, repeat=7)) / 5000
        print(f"{name}: {best * 1e6:.1f} us per payment")


if __name__ == "__main__":
    main()
