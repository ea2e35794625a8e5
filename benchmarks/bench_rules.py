"""How fast the rule engine decides: 30 realistic rules, one payment at a time and as a backtest.

    .venv/bin/python benchmarks/bench_rules.py [--payments 20000] [--rows 1000000]

Prints the median and p99 of RuleSet.decide() per payment (all 30 rules, the hot path of the
service), and the time of RuleSet.decide_frame() over --rows rows. A figure, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from antifraud.engine.rules import FieldType, ruleset_from_texts, transaction_field_types

FEATURES = (
    "card_count_10m",
    "card_count_1h",
    "card_count_24h",
    "card_sum_24h",
    "card_mean_30d",
    "card_std_30d",
    "card_max_30d",
    "card_new_device",
    "card_new_country",
    "card_new_merchant",
    "card_distinct_countries_24h",
    "card_declines_1h",
    "card_frauds_30d",
    "device_distinct_cards_24h",
    "ip_count_1h",
    "ip_distinct_cards_24h",
    "email_distinct_cards_7d",
    "customer_count_24h",
    "merchant_fraud_rate_30d",
    "hour_of_day",
)

RULES = [
    ("blocked_ip", "ip in lists.blocked_ips", "block"),
    ("blocked_card", "card_id in lists.blocked_cards", "block"),
    ("blocked_email", "email in lists.blocked_emails", "block"),
    ("card_testing", "card_count_10m >= 5 and amount < 5", "block"),
    ("declines_burst", "card_declines_1h >= 3", "block"),
    ("known_fraud_card", "card_frauds_30d > 0", "block"),
    ("trusted_card", "card_id in lists.trusted_cards", "allow"),
    ("trusted_customer", "customer_id in lists.trusted_customers and amount < 500", "allow"),
    ("risky_bin", "card_bin in lists.risky_bins and not authenticated", "review"),
    ("country_mismatch", "amount > 1000 and ip_country != card_country", "review"),
    ("amount_outlier", "abs(amount - card_mean_30d) > 3 * card_std_30d", "review"),
    ("above_card_max", "amount > 2 * card_max_30d and card_count_24h > 0", "review"),
    ("new_device_high", "card_new_device == 1 and amount > 5 * card_mean_30d", "review"),
    ("new_country", "card_new_country == 1 and amount > 300", "review"),
    ("many_countries", "card_distinct_countries_24h >= 3", "review"),
    ("device_many_cards", "device_distinct_cards_24h >= 4", "review"),
    ("ip_many_cards", "ip_distinct_cards_24h >= 5 or ip_count_1h > 30", "review"),
    ("email_many_cards", "email_distinct_cards_7d >= 3", "review"),
    ("night_high", "hour_of_day < 5 and amount > 800", "review"),
    ("risky_countries", "ip_country in ['NG', 'RU', 'KP', 'IR'] and amount > 200", "review"),
    ("billing_mismatch", "billing_country != shipping_country and amount > 500", "review"),
    ("velocity_sum", "card_sum_24h + amount > 5000", "review"),
    ("moto_high", "channel == 'moto' and amount > 1500", "review"),
    ("gift_cards", "mcc in ['5815', '5816', '5818'] and not authenticated", "review"),
    ("risky_merchant", "merchant_fraud_rate_30d > 0.05 and amount > 100", "review"),
    ("customer_burst", "coalesce(customer_count_24h, 0) > 10", "review"),
    ("free_email", "endswith(lower(email), '@mailinator.com')", "review"),
    ("round_amount", "amount % 100 == 0 and amount >= 1000", "review"),
    ("new_merchant_burst", "card_new_merchant == 1 and card_count_1h >= 4", "review"),
    ("no_history_big", "is_missing(card_mean_30d) and amount > 2000", "review"),
]


def build_ruleset() -> Any:
    """The 30 rules above as a YAML rule set with lists of realistic sizes."""
    lines = [
        "score_bands: {review: 0.35, block: 0.8}",
        "lists:",
        "  blocked_ips: {file: blocked_ips.txt}",
        "  blocked_cards: {file: blocked_cards.txt}",
        "  blocked_emails: {file: blocked_emails.txt}",
        "  trusted_cards: {file: trusted_cards.txt}",
        "  trusted_customers: {file: trusted_customers.txt}",
        "  risky_bins: {file: risky_bins.txt}",
        "rules:",
    ]
    for rule_id, when, action in RULES:
        lines += [f"  - id: {rule_id}", f"    when: {when}", f"    action: {action}"]
    lists = {
        "blocked_ips.txt": "\n".join(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(50_000)),
        "blocked_cards.txt": "\n".join(f"card_{i}" for i in range(0, 200_000, 997)),
        "blocked_emails.txt": "\n".join(f"bad{i}@example.com" for i in range(10_000)),
        "trusted_cards.txt": "\n".join(f"card_{i}" for i in range(3, 200_000, 1000)),
        "trusted_customers.txt": "\n".join(f"cust_{i}" for i in range(0, 50_000, 97)),
        "risky_bins.txt": "\n".join(str(400000 + i * 37) for i in range(2_000)),
    }
    names: dict[str, FieldType] = {**transaction_field_types(), **dict.fromkeys(FEATURES, "number")}
    return ruleset_from_texts({"bench.yaml": "\n".join(lines)}, names, lists)


def payments(n: int, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """n synthetic payments with realistic fields, features and a few missing values."""
    rng = np.random.default_rng(seed)
    countries = np.array(["FR", "DE", "US", "GB", "NG", "RU", "ES", "IT"])
    frame = pd.DataFrame(
        {
            "amount": np.round(rng.lognormal(3.5, 1.3, n), 2),
            "card_id": np.char.add("card_", rng.integers(0, 200_000, n).astype(str)).astype(object),
            "customer_id": np.char.add("cust_", rng.integers(0, 50_000, n).astype(str)).astype(object),
            "ip": np.char.add("10.0.", rng.integers(0, 2000, n).astype(str)).astype(object),
            "email": np.char.add(
                np.char.add("user", rng.integers(0, 90_000, n).astype(str)), "@example.com"
            ).astype(object),
            "card_bin": (400000 + rng.integers(0, 100_000, n)).astype(str).astype(object),
            "ip_country": rng.choice(countries, n).astype(object),
            "card_country": rng.choice(countries, n).astype(object),
            "billing_country": rng.choice(countries, n).astype(object),
            "shipping_country": rng.choice(countries, n).astype(object),
            "channel": rng.choice(np.array(["ecom", "pos", "moto"]), n).astype(object),
            "mcc": rng.choice(np.array(["5411", "5815", "5999", "4829"]), n).astype(object),
            "authenticated": rng.random(n) < 0.6,
            "card_count_10m": rng.poisson(0.3, n).astype(float),
            "card_count_1h": rng.poisson(1.0, n).astype(float),
            "card_count_24h": rng.poisson(3.0, n).astype(float),
            "card_sum_24h": rng.gamma(2.0, 100.0, n),
            "card_mean_30d": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 40.0, n)),
            "card_std_30d": rng.gamma(2.0, 20.0, n),
            "card_max_30d": rng.gamma(3.0, 80.0, n),
            "card_new_device": (rng.random(n) < 0.1).astype(float),
            "card_new_country": (rng.random(n) < 0.05).astype(float),
            "card_new_merchant": (rng.random(n) < 0.3).astype(float),
            "card_distinct_countries_24h": rng.poisson(0.5, n).astype(float),
            "card_declines_1h": rng.poisson(0.1, n).astype(float),
            "card_frauds_30d": (rng.random(n) < 0.002).astype(float),
            "device_distinct_cards_24h": rng.poisson(0.5, n).astype(float),
            "ip_count_1h": rng.poisson(2.0, n).astype(float),
            "ip_distinct_cards_24h": rng.poisson(1.0, n).astype(float),
            "email_distinct_cards_7d": rng.poisson(0.5, n).astype(float),
            "customer_count_24h": np.where(rng.random(n) < 0.3, np.nan, rng.poisson(2.0, n)),
            "merchant_fraud_rate_30d": rng.beta(1, 80, n),
            "hour_of_day": rng.integers(0, 24, n).astype(float),
        }
    )
    scores = rng.beta(1.2, 8.0, n)
    merchants = np.char.add("m_", rng.integers(0, 100, n).astype(str)).astype(object)
    return frame, scores, merchants


def bench_decide(ruleset: Any, n: int) -> None:
    frame, scores, merchants = payments(n)
    # Plain dicts with Python scalars: what the service builds for one payment.
    envs = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]
    decide = ruleset.decide
    for i in range(min(n, 2000)):  # warm-up
        decide(float(scores[i]), envs[i], merchants[i])
    timings = []
    clock = time.perf_counter_ns
    for i in range(n):
        score, env, merchant = float(scores[i]), envs[i], merchants[i]
        t0 = clock()
        decide(score, env, merchant)
        timings.append(clock() - t0)
    timings.sort()
    median = statistics.median(timings) / 1000
    p99 = timings[int(0.99 * len(timings))] / 1000
    print(f"decide(), {len(RULES)} rules, {n} payments: median {median:.1f} us, p99 {p99:.1f} us per payment")


def bench_frame(ruleset: Any, rows: int) -> None:
    frame, scores, merchants = payments(rows, seed=11)
    t0 = time.perf_counter()
    verdicts, _, _ = ruleset.decide_frame(scores, frame, merchants)
    elapsed = time.perf_counter() - t0
    counts = pd.Series(verdicts).value_counts(dropna=False).to_dict()
    print(f"decide_frame(), {len(RULES)} rules x {rows:,} rows: {elapsed:.2f} s  verdicts {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    ruleset = build_ruleset()
    print(f"python {platform.python_version()}, numpy {np.__version__}, rule set version {ruleset.version}")
    bench_decide(ruleset, args.payments)
    if args.rows:
        bench_frame(ruleset, args.rows)


if __name__ == "__main__":
    main()
