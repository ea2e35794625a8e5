"""Backtest a rule set on history before it goes live: `antifraud backtest`.

A backtest replays a period of a history file as production would have seen it, and applies a rule
set to it exactly as the scoring service does:

1. every payment of the period gets its point-in-time features and the model's score
   (`antifraud.training.replay.replay`, as evaluate and score-history get them: a payment sees only what
   came before it, and the booster is the one the service loads). Without a model the score is
   missing: the score bands give no verdict, rules still apply, and a payment that no rule decides
   counts as *allow* (``no_score_verdict="allow"``; the report says so);
2. the rule set decides with `RuleSet.decide_frame`, the vectorized twin of the `RuleSet.decide`
   the service calls, loaded with the service's names and types (`antifraud.engine.rules.load_rules`) and
   fed the same values (`antifraud.engine.rules.rule_environment`): the payment's own fields, then every
   feature not named like one.

What it measures is in :class:`BacktestResult` and docs/backtest.md: per rule (shadow rules
included) hits, precision, fraud amount caught, good payments hit and skips; the verdict mix and
the expected cost of `antifraud.engine.costs.expected_cost`; and, against a baseline rule set, which
payments change verdict and what that costs.

Two steps, so that a notebook tuning thresholds computes features once::

    replay = replay_period(history, start, end, model_dir)      # features + scores: seconds
    result = backtest_rules(replay, rules_dir, baseline_dir)    # one rule set: well under a second

`run_backtest` does both. Every input error is a :class:`BacktestError` (a ValueError) whose
message names the file, rule or date at fault.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from antifraud.engine.costs import CostParameters, expected_cost
from antifraud.engine.rules import RuleSet, RuleSetError
from antifraud.engine.rules import load_rules as load_service_rules
from antifraud.engine.rules.backtest import (
    EXAMPLES,
    Comparison,
    RuleStats,
    VerdictChange,
    cents,
    compare,
    decide,
    json_ready,
    mix,
    rule_stats,
)
from antifraud.engine.verdicts import RiskScale, Verdict
from antifraud.features.spec import FeatureSpec, load_spec
from antifraud.training.config import TrainingError
from antifraud.training.dataset import ProgressArg, as_progress, check_period, utc_midnight
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.replay import Replay, model_risk_scale, replay

__all__ = [
    "EXAMPLES",
    "NO_MODEL_VERDICT",
    "BacktestError",
    "BacktestResult",
    "Comparison",
    "Replay",
    "RuleStats",
    "VerdictChange",
    "backtest_rules",
    "load_rules",
    "model_risk_scale",
    "replay_period",
    "run_backtest",
]

#: the verdict of a payment no rule decides when there is no model (no score, so no band)
NO_MODEL_VERDICT: Final[Verdict] = "allow"


class BacktestError(ValueError):
    """A backtest input is wrong; the message names the file, rule or date, ``errors`` lists each."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        self.errors = list(errors) or [message]
        super().__init__(message)


# ------------------------------------------------------------------------------------------ results
# RuleStats, VerdictChange and Comparison are in antifraud.engine.rules.backtest, shared with the console.


@dataclass
class BacktestResult:
    """Everything a backtest measured; :meth:`to_json` is its plain-dict form."""

    history: str
    start: date
    end: date  # exclusive
    payments: int
    frauds: int | None  # None: the history has no labels
    fraud_amount: float | None
    model_version: str | None
    no_score_verdict: str | None  # "allow" when there is no model, else None
    rules_dir: str
    rules_version: str
    cost_parameters: CostParameters
    rules: list[RuleStats]
    verdicts: dict[str, dict[str, Any]]  # verdict -> payments, share, frauds, fraud_amount
    cost: dict[str, float] | None  # engine.costs.expected_cost; None without labels
    comparison: Comparison | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    #: one row per payment, in time order: transaction_id, timestamp, merchant_id, amount, label
    #: (when known), score (NaN without a model), verdict and, with a baseline, baseline_verdict.
    #: For drilling down in a notebook; not part of to_json().
    decisions: pd.DataFrame | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """A plain dict of str, int, float, bool, None, lists and dicts (json.dumps-ready)."""
        comparison = None
        if self.comparison is not None:
            c = self.comparison
            comparison = {
                "baseline_rules_dir": c.baseline_dir,
                "baseline_rules_version": c.baseline_version,
                "changed": c.changed,
                "changed_share": c.changed / self.payments if self.payments else 0.0,
                "matrix": c.matrix,
                "changes": [json_ready(vars(change)) for change in c.changes],
                "baseline_verdicts": json_ready(c.baseline_verdicts),
                "baseline_cost": json_ready(c.baseline_cost),
                "cost_difference": json_ready(c.cost_difference),
                "rules_added": c.rules_added,
                "rules_removed": c.rules_removed,
                "rules_changed": c.rules_changed,
                "lists_changed": c.lists_changed,
                "bands_changed": c.bands_changed,
            }
        return {
            "history": self.history,
            "period": {"start": self.start.isoformat(), "end": self.end.isoformat()},
            "payments": self.payments,
            "frauds": self.frauds,
            "fraud_amount": json_ready(self.fraud_amount),
            "model_version": self.model_version,
            "no_score_verdict": self.no_score_verdict,
            "rules_dir": self.rules_dir,
            "rules_version": self.rules_version,
            "cost_parameters": json_ready(self.cost_parameters),
            "rules": [json_ready({**vars(r), "shadow": r.shadow}) for r in self.rules],
            "verdicts": json_ready(self.verdicts),
            "cost": json_ready(self.cost),
            "comparison": comparison,
            "warnings": list(self.warnings),
            "timings": json_ready(self.timings),
        }

    def rules_frame(self) -> pd.DataFrame:
        """The per-rule figures as a DataFrame, one row per rule in rule set order (for notebooks)."""
        frame = pd.DataFrame([{**vars(r), "shadow": r.shadow} for r in self.rules])
        return frame.set_index("rule_id") if len(frame) else frame


# ------------------------------------------------------------------------------------ the replay


def _context_days(spec: FeatureSpec) -> int:
    """The longest look-back of any feature, in whole days (rounded up)."""
    windows = [w.ms for v in spec.velocity for w in v.windows]
    windows += [w.ms for d in spec.distinct for w in d.windows]
    windows += [w.ms for f in spec.feedback for w in f.windows]
    windows += [w.ms + w.lag_ms for r in spec.label_rate for w in r.windows]
    windows += [n.lookback_ms for n in spec.novelty]
    if spec.card_behaviour is not None:
        windows.append(spec.card_behaviour.window.ms)
    return math.ceil(max(windows, default=0) / 86_400_000)


def _period(start: date | str, end: date | str) -> tuple[date, date]:
    try:
        return check_period(start, end, "backtest period")
    except TrainingError as exc:
        raise BacktestError(str(exc)) from exc


def _load_model(model_dir: Path | str, spec: FeatureSpec) -> ModelArtifact:
    try:
        return ModelArtifact.load(model_dir, spec)
    except TrainingError as exc:  # ArtifactError
        raise BacktestError(f"--model {model_dir}: {exc}") from exc


def replay_period(
    history: Path | str,
    start: date | str,
    end: date | str,
    model: Path | str | ModelArtifact | None = None,
    columns: Path | None = None,
    progress: ProgressArg = None,
    spec: FeatureSpec | None = None,
    label_delay: timedelta | None = None,
) -> Replay:
    """Rows, point-in-time features and model scores of the payments in [start, end) of a history.

    `model` is a model directory or an already loaded ModelArtifact. Features are computed over the
    history before `end` (a payment on `start` sees its card's previous 30 days). Without a model
    the scores are NaN (see the module docstring). Raises :class:`BacktestError` for a bad date,
    file, column map or model, or an empty period.
    """
    s, e = _period(start, end)
    spec = spec or load_spec()
    artifact = _load_model(model, spec) if isinstance(model, str | Path) else model
    try:
        replayed = replay(
            history, s, e, artifact, spec, columns=columns, label_delay=label_delay, progress=progress
        )
    except (TrainingError, ValueError) as exc:  # HistoryError, a bad column map, an empty period
        raise BacktestError(str(exc)) from exc
    replayed.warnings += _warnings(replayed, spec, artifact)
    return replayed


def _warnings(replayed: Replay, spec: FeatureSpec, artifact: ModelArtifact | None) -> list[str]:
    """What makes this replay differ from what production saw, as plain sentences."""
    s, e = replayed.start, replayed.end
    warnings: list[str] = []
    context = _context_days(spec)
    if replayed.first > utc_midnight(s) - pd.Timedelta(days=context):
        warnings.append(
            f"the history starts on {replayed.first:%Y-%m-%d}, less than {context} days (the longest "
            f"feature window) before {s}: early payments of the period lack part of their history, so "
            "velocity and novelty rules behave differently on them than in production"
        )
    if replayed.last < utc_midnight(e) - pd.Timedelta(days=1):
        warnings.append(f"the history ends on {replayed.last:%Y-%m-%d}, before the period's last day")
    if not replayed.labelled:
        warnings.append("the history has no 'label' column: precision, fraud amounts and cost are not known")
    if artifact is None:
        warnings.append(
            "no model (--model): every score is missing, so the score bands give no verdict; a payment "
            f"that no rule decides counts as {NO_MODEL_VERDICT} (no_score_verdict={NO_MODEL_VERDICT!r})"
        )
    elif overlap := artifact.training_overlap(s, e):
        ts, te = overlap
        warnings.append(
            f"the period overlaps the model's training period [{ts}, {te}): its scores are "
            f"optimistic there; backtest from {te} on"
        )
    return warnings


# ----------------------------------------------------------------------------------------- rules


def load_rules(directory: Path | str, feature_names: Sequence[str], what: str = "--rules") -> RuleSet:
    """Load a rule set with the names and types the service gives rules; BacktestError lists errors."""
    try:
        return load_service_rules(directory, feature_names)
    except RuleSetError as exc:
        errors = [str(e) for e in exc.errors]
        # one error per line; an error's caret excerpt stays under it, indented
        listing = "\n".join("  " + e.replace("\n", "\n    ") for e in errors)
        raise BacktestError(
            f"{what} {directory}: {len(errors)} error(s) in the rule set:\n{listing}", errors
        ) from exc


def _decide(
    replay: Replay, ruleset: RuleSet, risk_scores: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if ruleset.scale == "risk_score" and risk_scores is None and replay.model_version is not None:
        raise BacktestError(
            f"rule set {ruleset.version}: its score_bands are on the risk_score scale, which is the "
            "model's own: replay the period with the model, or pass backtest_rules(..., risk_scale=...)"
        )
    return decide(
        ruleset,
        replay.scores,
        replay.columns(),
        replay.rows["merchant_id"],
        no_score_verdict=NO_MODEL_VERDICT if replay.model_version is None else None,
        risk_scores=risk_scores,
    )


def backtest_rules(
    replay: Replay,
    rules: RuleSet | Path | str,
    baseline: RuleSet | Path | str | None = None,
    progress: ProgressArg = None,
    *,
    rules_label: str | None = None,
    baseline_label: str | None = None,
    risk_scale: RiskScale | None = None,
) -> BacktestResult:
    """Apply a rule set (a directory or a loaded RuleSet) to a replayed period, as production would.

    With `baseline`, also compare: which payments change verdict, in which direction, at what cost.
    `rules_label` and `baseline_label` name loaded rule sets in the report (default: their path).
    `risk_scale` is the model's score -> risk score map; by default the replay's (from the model's
    metadata.json thresholds, as the service's `ModelRuntime.risk_scale`). It is needed for a rule
    set whose bands are on the risk_score scale, and adds a `risk_score` column to the decisions.
    """
    step = as_progress(progress)
    ruleset = rules if isinstance(rules, RuleSet) else load_rules(rules, replay.feature_names)
    base = (
        baseline
        if isinstance(baseline, RuleSet) or baseline is None
        else load_rules(baseline, replay.feature_names, "--baseline-rules")
    )
    t0 = time.perf_counter()
    step(f"applying {len(ruleset.rules)} rules to {len(replay):,} payments")
    risk_scale = risk_scale if risk_scale is not None else replay.risk_scale
    risk_scores = risk_scale.of_array(replay.scores) if risk_scale is not None else None
    verdicts, fired, skipped = _decide(replay, ruleset, risk_scores)
    amounts = replay.rows["amount"].to_numpy(dtype=float)
    fraud = replay.rows["label"].to_numpy() == 1 if replay.labelled else None
    cost = (
        expected_cost(fraud.astype(np.int8), verdicts, amounts, **replay.cost_parameters)
        if fraud is not None
        else None
    )
    decisions = pd.DataFrame(
        {
            "transaction_id": replay.rows["transaction_id"].to_numpy(),
            "timestamp": replay.rows["timestamp"].to_numpy(),
            "merchant_id": replay.rows["merchant_id"].to_numpy(),
            "amount": amounts,
            "score": replay.scores,
            "verdict": verdicts,
        }
    )
    if risk_scores is not None:
        decisions.insert(list(decisions.columns).index("score") + 1, "risk_score", risk_scores)
    if fraud is not None:
        decisions.insert(4, "label", fraud.astype(np.int8))
    comparison = None
    if base is not None:
        step(f"comparing with the baseline rule set {base.version}")
        before, _, _ = _decide(replay, base, risk_scores)
        decisions["baseline_verdict"] = before
        where = baseline_label or (str(baseline) if not isinstance(baseline, RuleSet) else "baseline")
        comparison = compare(
            replay.rows["transaction_id"].to_numpy(),
            ruleset,
            verdicts,
            base,
            before,
            where,
            fraud,
            amounts,
            cost,
            replay.cost_parameters,
        )
    timings = {**replay.timings, "rules_s": time.perf_counter() - t0}
    return BacktestResult(
        history=replay.history,
        start=replay.start,
        end=replay.end,
        payments=len(replay),
        frauds=int(fraud.sum()) if fraud is not None else None,
        fraud_amount=cents(amounts[fraud].sum()) if fraud is not None else None,
        model_version=replay.model_version,
        no_score_verdict=NO_MODEL_VERDICT if replay.model_version is None else None,
        rules_dir=rules_label or (str(rules) if not isinstance(rules, RuleSet) else "rules"),
        rules_version=ruleset.version,
        cost_parameters=CostParameters(**replay.cost_parameters),
        rules=rule_stats(ruleset, fired, skipped, fraud, amounts),
        verdicts=mix(verdicts, fraud, amounts),
        cost=cost,
        comparison=comparison,
        warnings=list(replay.warnings),
        timings=timings,
        decisions=decisions,
    )


def run_backtest(
    history: Path,
    rules_dir: Path,
    start: date,
    end: date,
    model_dir: Path | None = None,
    baseline_rules_dir: Path | None = None,
    columns: Path | None = None,
    progress: ProgressArg = None,
    label_delay: timedelta | None = None,
) -> BacktestResult:
    """Backtest the rule set in `rules_dir` on the payments in [start, end) of `history`.

    Inputs are checked cheapest first (dates, rule sets, model) so a typo fails in a second, before
    the features are computed. Raises :class:`BacktestError` (a ValueError) naming what is wrong;
    a rule set's errors are all listed, each with file:line and rule id.
    """
    _period(start, end)
    spec = load_spec()
    ruleset = load_rules(rules_dir, spec.feature_names)
    base = (
        load_rules(baseline_rules_dir, spec.feature_names, "--baseline-rules")
        if baseline_rules_dir is not None
        else None
    )
    artifact = _load_model(model_dir, spec) if model_dir is not None else None
    replay = replay_period(history, start, end, artifact, columns, progress, spec, label_delay)
    return backtest_rules(
        replay,
        ruleset,
        base,
        progress,
        rules_label=str(rules_dir),
        baseline_label=str(baseline_rules_dir) if baseline_rules_dir is not None else None,
    )


# ---------------------------------------------------------------------------------------- report
# ---------------------------------------------------------------------------------------- report
