"""The console's rule-test job: `python -m antifraud.engine.rule_tests <test id> <namespace>`.

`engine.rule_changes.start_test` starts it as a child process (the service never imports it); it reads
the test's spec from Redis, backtests the candidate rule set against the live one and writes the result
back into the test's hash. Two sources (docs/console.md, "Testing a rule change"):

1. **the decision log**: the decisions of the chosen period, newest day first, up to `max_decisions`,
   with their features and scores exactly as served; the fail policy stands in where a score is missing.
   Labels are the feedback received so far (unlabelled payments count as good). The baseline is the
   live set run on the same rows, not the verdicts served, so the difference is the rules' alone;
2. **the history file**, when the console has one: `training.backtest.run_backtest`, the replay of
   `antifraud backtest`.

Both report per-rule hits, frauds caught by one rule only, good payments hit, reviews per day, the
verdict mix and the cost against the live set, and the payments whose verdict changes.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections import deque
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import pandas as pd
import redis

from antifraud.engine.costs import CostParameters, expected_cost
from antifraud.engine.decision_record import Decision, FeedbackRecord
from antifraud.engine.rule_changes import RuleTestSpec, finish_test, read_test
from antifraud.engine.rules import RuleSet, load_rules, rule_environment
from antifraud.engine.rules.backtest import (
    band_alone,
    compare,
    decide,
    frauds_only_this_rule,
    json_ready,
    mix,
    reviews_per_day,
    rule_stats,
)
from antifraud.engine.store import open_store
from antifraud.engine.verdicts import Verdict
from antifraud.features.spec import load_spec
from antifraud.training.backtest import run_backtest
from antifraud.training.config import TrainConfig

__all__ = ["CHANGED_LISTED", "MAX_RESULT_BYTES", "backtest_log", "main", "run"]

#: the changed payments a log test lists (each linked to its decision page)
CHANGED_LISTED: Final = 500
#: the most a result may take in Redis; past it the changed payments are cut
MAX_RESULT_BYTES: Final = 2_000_000
_FRAUD_LABELS: Final = frozenset({"fraud", "chargeback"})


def _decisions(spec: RuleTestSpec, now: datetime, names: set[str]) -> list[Decision]:
    """The period's logged decisions, oldest first: the newest `max_decisions`, read a day at a time from
    the newest day, each trimmed to what the rules read (memory stays bounded by `max_decisions`)."""
    assert spec.hours is not None
    start = now - timedelta(hours=spec.hours)
    store = open_store(spec.store_url)
    try:
        found: list[Decision] = []  # newest first
        day_end = now
        while day_end > start and len(found) < spec.max_decisions:
            day_start = max(start, datetime.combine(day_end.date(), datetime.min.time(), UTC))
            if day_start == day_end:  # midnight exactly: the previous day
                day_start = max(start, day_end - timedelta(days=1))
            # the day in time order: only its newest decisions that still fit are kept
            day: deque[Decision] = deque(maxlen=spec.max_decisions - len(found))
            for batch in store.iter_decisions(day_start, day_end):
                day.extend(_trimmed(d, names) for d in batch if not d.get("test"))
            found.extend(reversed(day))
            day_end = day_start
        # a label arrives after its payment: the feedback received since the period began
        labels = _labels(f for batch in store.iter_feedback(start=start) for f in batch)
    finally:
        store.close()
    for d in found:
        d["label"] = labels.get(d["transaction_id"])  # type: ignore[typeddict-unknown-key]
    return found[::-1]


def _trimmed(decision: Decision, names: set[str]) -> Decision:
    """The decision with only the features some rule reads (the rest is never looked at)."""
    decision["features"] = {k: v for k, v in decision["features"].items() if k in names}
    return decision


def _labels(feedback: Iterable[FeedbackRecord]) -> dict[str, str]:
    """The latest label of each transaction (feedback arrives in order)."""
    return {f["transaction_id"]: str(f["label"]) for f in feedback if f["kind"] == "label" and f["label"]}


def _frame(decisions: list[Decision], names: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Payment rows and features as served, keeping only the names some rule reads."""
    rows = pd.DataFrame(
        [
            {
                **d["payment"],
                "amount": d["amount"],
                "currency": d["currency"],
                "merchant_id": d["payment"].get("merchant_id"),
            }
            for d in decisions
        ]
    )
    features = pd.DataFrame([{k: v for k, v in d["features"].items() if k in names} for d in decisions])
    return rows, features.astype("float64") if len(features.columns) else features


def backtest_log(
    decisions: list[Decision], candidate: RuleSet, live: RuleSet, fail_policy: str, costs: CostParameters
) -> dict[str, Any]:
    """The candidate against the live set on logged decisions (oldest first), as a JSON-ready dict."""
    n = len(decisions)
    if n == 0:
        return {"source": "log", "payments": 0, "frauds": 0, "warnings": ["no logged decision in the period"]}
    names = set(candidate.name_types) | set(live.name_types)
    rows, features = _frame(decisions, names)
    columns = rule_environment(rows, features)
    scores = np.array([np.nan if d["score"] is None else d["score"] for d in decisions], dtype=float)
    risk = np.array([np.nan if d["risk_score"] is None else d["risk_score"] for d in decisions], dtype=float)
    merchants = rows["merchant_id"]
    amounts = rows["amount"].to_numpy(dtype=float)
    fraud = np.array([d.get("label") in _FRAUD_LABELS for d in decisions], dtype=bool)
    ids = np.array([d["transaction_id"] for d in decisions], dtype=object)
    days = np.array([d["timestamp"][:10] for d in decisions], dtype=object)
    policy = cast(Verdict, fail_policy)

    def run(ruleset: RuleSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # a missing score gets the fail policy, as the service answered it
        return decide(ruleset, scores, columns, merchants, no_score_verdict=policy, risk_scores=risk)

    verdicts, fired, skipped = run(candidate)
    before, _, _ = run(live)
    band, _, _ = run(band_alone(candidate))
    cost = expected_cost(fraud.astype(np.int8), verdicts, amounts, **costs)
    comparison = compare(ids, candidate, verdicts, live, before, "live", fraud, amounts, cost, costs)
    changed = np.flatnonzero(before != verdicts)[:CHANGED_LISTED]
    return json_ready(
        {
            "source": "log",
            "payments": n,
            "frauds": int(fraud.sum()),
            "period": {"first": decisions[0]["timestamp"], "last": decisions[-1]["timestamp"]},
            "rules": [vars(r) for r in rule_stats(candidate, fired, skipped, fraud, amounts)],
            "frauds_only": frauds_only_this_rule(candidate, fired, band, fraud),
            "reviews_per_day": reviews_per_day(verdicts, days),
            "live_reviews_per_day": reviews_per_day(before, days),
            "verdicts": mix(verdicts, fraud, amounts),
            "cost": cost,
            "cost_parameters": dict(costs),
            "comparison": vars(comparison) | {"changes": [vars(c) for c in comparison.changes]},
            "changed": [
                {
                    "transaction_id": ids[i],
                    "merchant_id": merchants.iloc[i],
                    "amount": amounts[i],
                    "before": before[i],
                    "after": verdicts[i],
                    "label": decisions[i].get("label"),
                }
                for i in changed
            ],
            "warnings": [
                "labels are the feedback received so far: recent frauds may not be reported yet, and an "
                "unlabelled payment counts as good"
            ],
        }
    )


def backtest_history(spec: RuleTestSpec) -> dict[str, Any]:
    """`antifraud backtest` of the candidate on the history file, with the live set as baseline."""
    assert spec.history is not None and spec.start is not None and spec.end is not None
    result = run_backtest(
        Path(spec.history),
        Path(spec.candidate_dir),
        date.fromisoformat(spec.start),
        date.fromisoformat(spec.end),
        Path(spec.model_dir) if spec.model_dir else None,
        baseline_rules_dir=Path(spec.live_dir),
    )
    report = result.to_json()
    assert result.decisions is not None
    days = pd.to_datetime(result.decisions["timestamp"], utc=True).dt.strftime("%Y-%m-%d").to_numpy()
    report["reviews_per_day"] = reviews_per_day(result.decisions["verdict"].to_numpy(), days)
    return json_ready({"source": "history", **report})


def run(client: redis.Redis, namespace: str, test_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Run a stored test and store its result; the result (also when called in process, as tests do)."""
    test = read_test(client, namespace, test_id)
    if test is None:
        raise LookupError(f"no rule test {test_id}")
    spec = RuleTestSpec(**test["spec"])
    try:
        names = load_spec().feature_names
        candidate = load_rules(spec.candidate_dir, names)
        live = load_rules(spec.live_dir, names)
        result: dict[str, Any] = {"candidate_version": candidate.version, "live_version": live.version}
        if spec.hours is not None:
            names_read = set(candidate.name_types) | set(live.name_types)
            decisions = _decisions(spec, now or datetime.now(UTC), names_read)
            costs = TrainConfig().cost_parameters()
            result["log"] = backtest_log(decisions, candidate, live, spec.fail_policy, costs)
        if spec.history is not None:
            result["history"] = backtest_history(spec)
        if len(str(result)) > MAX_RESULT_BYTES and "log" in result:
            result["log"]["changed"] = result["log"]["changed"][:50]
    except Exception as exc:  # the page shows why; the job must always free the running flag
        finish_test(client, namespace, test_id, None, f"{type(exc).__name__}: {exc}")
        raise
    finish_test(client, namespace, test_id, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """The child process: run one test at nice 10, connecting as the service did."""
    test_id, namespace = (argv if argv is not None else sys.argv[1:])[:2]
    os.nice(10)
    client = redis.Redis.from_url(os.environ["ANTIFRAUD_RULE_TEST_REDIS"])
    try:
        run(client, namespace, test_id)
    except Exception:  # already stored for the page; the trace is for whoever runs it by hand
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
