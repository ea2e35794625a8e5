"""How long a backtest takes: about 1,000,000 simulated payments x 30 realistic rules. A figure, not a test.

    .venv/bin/python benchmarks/bench_backtest.py [--cards 16000] [--model models/default]

Simulates 60 days (16,000 cards give about 1,000,000 payments), writes them as Parquet and 30
rules (with deny/allow lists of realistic sizes) into a temporary directory, then times what
`antifraud backtest` does, step by step: reading the file, point-in-time features (computed once,
shared by every rule set), model scores, and the rules. The rules are timed twice: the rule set
alone, then against a baseline that differs by one threshold (both rule sets applied, verdicts
compared). Aim: under 60 s in all on 2 cores.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from antifraud.training.backtest import backtest_rules, load_rules, replay_period
from antifraud.training.history import write_history
from antifraud.training.simulator import simulate

ROOT = Path(__file__).resolve().parents[1]

# (id, condition, action, mode): what a fraud team runs after a year, over the spec's features.
RULES: list[tuple[str, str, str, str]] = [
    ("deny_listed_ip", "ip in lists.blocked_ips", "block", "live"),
    ("deny_listed_card", "card_id in lists.blocked_cards", "block", "live"),
    ("deny_listed_email", "email in lists.blocked_emails", "block", "live"),
    ("sanctioned_country", "ip_country in lists.sanctioned_countries", "block", "live"),
    ("card_testing_burst", "card_count_10m >= 3 and amount < 10", "block", "live"),
    ("card_testing_declines", "card_declines_1h >= 3", "block", "live"),
    ("known_fraud_card_large", "card_frauds_30d > 0 and amount > 200", "block", "live"),
    ("trusted_card", "card_id in lists.trusted_cards", "allow", "live"),
    ("trusted_customer", "customer_id in lists.trusted_customers and amount < 500", "allow", "live"),
    ("risky_bin", "card_bin in lists.risky_bins and not authenticated", "review", "live"),
    (
        "cross_border_large",
        "ip_card_country_mismatch == 1 and amount > 500 and not authenticated",
        "review",
        "live",
    ),
    ("amount_outlier", "card_amount_zscore_30d > 4", "review", "live"),
    ("above_card_max", "amount > 2 * card_max_30d and card_count_30d >= 3", "review", "live"),
    (
        "new_device_far_above_habit",
        "card_new_device == 1 and card_amount_to_mean_30d > 5 and not authenticated",
        "review",
        "live",
    ),
    ("new_country_large", "card_new_country == 1 and amount > 300", "review", "live"),
    ("many_countries", "card_distinct_countries_24h >= 3", "review", "live"),
    ("device_many_cards", "device_distinct_cards_24h >= 4", "review", "live"),
    ("ip_many_cards", "ip_distinct_cards_24h >= 5 or ip_count_1h > 30", "review", "live"),
    ("email_many_cards", "email_distinct_cards_7d >= 3", "review", "live"),
    ("night_large", "hour_of_day < 5 and amount > 800", "review", "live"),
    ("billing_shipping_large", "billing_shipping_mismatch == 1 and amount > 500", "review", "live"),
    ("velocity_sum", "card_sum_24h + amount > 5000", "review", "live"),
    ("moto_large", "channel == 'moto' and amount > 1500", "review", "live"),
    ("gift_cards", "mcc in ['5815', '5816', '5818'] and not authenticated", "review", "live"),
    ("customer_burst", "coalesce(customer_count_24h, 0) > 10", "review", "live"),
    ("disposable_email", "endswith(lower(email), '@mailinator.com')", "review", "live"),
    ("round_amount", "amount % 100 == 0 and amount >= 1000", "review", "live"),
    ("risky_merchant", "merchant_fraud_rate_30d > 0.05 and amount > 100", "review", "shadow"),
    ("risky_terminal", "terminal_fraud_rate_30d > 0.05", "review", "shadow"),
    ("watched_merchants_burst", "card_count_1h >= 3 and amount < 20", "review", "live"),  # scoped below
]
SCOPED = "watched_merchants_burst"


def write_rules(directory: Path, history: pd.DataFrame, card_testing: int = 3) -> Path:
    """The 30 rules as one YAML file, with list files; a few list entries occur in the history."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(5)
    cards = history["card_id"].unique()
    merchants = history["merchant_id"].value_counts().index[:5]
    lines = [
        "score_bands: {review: 0.03, block: 0.14}",
        "lists:",
        "  blocked_ips: {file: blocked_ips.txt}",
        "  blocked_cards: {file: blocked_cards.txt}",
        "  blocked_emails: {file: blocked_emails.txt}",
        "  trusted_cards: {file: trusted_cards.txt}",
        "  trusted_customers: {file: trusted_customers.txt}",
        "  risky_bins: {file: risky_bins.txt}",
        "  sanctioned_countries: [KP, IR, SY, CU]",
        "rules:",
    ]
    for rule_id, when, action, mode in RULES:
        when = when.replace("card_count_10m >= 3", f"card_count_10m >= {card_testing}")
        lines += [f"  - id: {rule_id}", f"    when: {when}", f"    action: {action}", f"    mode: {mode}"]
        if rule_id == SCOPED:
            lines.append(f"    merchants: [{', '.join(merchants)}]")
    (directory / "rules.yaml").write_text("\n".join(lines) + "\n")
    lists = {
        "blocked_ips.txt": [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(50_000)],
        "blocked_cards.txt": [*rng.choice(cards, 20, replace=False), *(f"card_x{i}" for i in range(5_000))],
        "blocked_emails.txt": [f"bad{i}@example.com" for i in range(10_000)],
        "trusted_cards.txt": list(rng.choice(cards, 30, replace=False)),
        "trusted_customers.txt": [f"cust_x{i}" for i in range(20_000)],
        "risky_bins.txt": [
            *history["card_bin"].dropna().unique()[:5],
            *(str(600000 + i) for i in range(2_000)),
        ],
    }
    for name, values in lists.items():
        (directory / name).write_text("\n".join(map(str, values)) + "\n")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cards", type=int, default=16_000, help="cards to simulate over 60 days")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        history = simulate(days=60, cards=args.cards, merchants=1000, seed=3)
        path = Path(tmp) / "history.parquet"
        write_history(history, path)
        candidate = write_rules(Path(tmp) / "candidate", history)
        baseline = write_rules(Path(tmp) / "baseline", history, card_testing=4)
        first = history["timestamp"].min().date()
        end = history["timestamp"].max().date() + timedelta(days=1)
        setup = time.perf_counter() - t0
        print(f"setup (not timed below): {len(history):,} payments simulated and written in {setup:.1f} s")
        del history

        replay = replay_period(path, first, end, args.model)
        ruleset = load_rules(candidate, replay.feature_names)
        live = sum(r.mode == "live" for r in ruleset.rules)
        rules = len(ruleset.rules)
        print(f"backtest of [{first}, {end}): {len(replay):,} payments x {rules} rules ({live} live)")
        t = replay.timings
        print(f"  read history        {t['read_s']:6.1f} s")
        speed = len(replay) / t["features_s"]
        print(f"  features (once)     {t['features_s']:6.1f} s   {speed:,.0f} payments/s")
        print(f"  model scores        {t['model_s']:6.1f} s   {replay.model_version}")

        t1 = time.perf_counter()
        alone = backtest_rules(replay, ruleset)
        t2 = time.perf_counter()
        compared = backtest_rules(replay, candidate, baseline)
        t3 = time.perf_counter()
        print(f"  rules               {t2 - t1:6.1f} s   one rule set: decide_frame + per-rule figures")
        print(f"  rules vs baseline   {t3 - t2:6.1f} s   both rule sets, lists loaded, verdicts compared")
        total = t["read_s"] + t["features_s"] + t["model_s"] + (t3 - t2)
        print(f"  total (read + features + model + rules vs baseline) {total:.1f} s")
        assert compared.comparison is not None
        mix = ", ".join(f"{v} {m['payments']:,}" for v, m in alone.verdicts.items())
        print(f"verdicts: {mix}; {compared.comparison.changed:,} change vs the baseline")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"peak memory {peak:.1f} GiB")


if __name__ == "__main__":
    main()
