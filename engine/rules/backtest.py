"""The pure pieces of a rule backtest: decide a frame, count each rule's hits, compare two rule sets.

`antifraud.training.backtest` replays a history file and the console's rule tester
(`antifraud.engine.rule_tests`) reads logged decisions; both apply rule sets through these
functions, so a figure means the same in a report and on a console page. They sit in the rules
layer because the service may not import `antifraud.training` (docs/console-design.md, section 4).
Every input is a numpy array or a column mapping: nothing here knows where the payments came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from antifraud.engine.costs import CostParameters, expected_cost, verdict_mix
from antifraud.engine.rules.ruleset import RuleSet
from antifraud.engine.rules.vectorized import Column
from antifraud.engine.verdicts import VERDICTS, Verdict

__all__ = [
    "EXAMPLES",
    "Comparison",
    "RuleStats",
    "VerdictChange",
    "band_alone",
    "cents",
    "compare",
    "decide",
    "frauds_only_this_rule",
    "mix",
    "reviews_per_day",
    "rule_stats",
]

#: example transaction ids kept per verdict change direction
EXAMPLES: Final = 10


@dataclass(frozen=True)
class RuleStats:
    """What one rule did over the period. Fraud figures are None when the history has no labels."""

    rule_id: str
    action: str
    mode: str  # live | shadow (shadow: evaluated and reported, never changes a verdict)
    reason: str | None
    merchants: list[str] | None  # the rule's merchant scope; None: every merchant
    hits: int  # payments on which the condition held
    hit_rate: float  # hits / payments of the period
    frauds: int | None  # frauds among the hits
    precision: float | None  # frauds / hits; None without hits
    fraud_amount: float | None  # amount of the frauds among the hits ("caught" if the rule acts)
    good_hits: int | None  # legitimate payments among the hits
    skipped: int  # payments on which an input the rule reads was missing (not evaluated)

    @property
    def shadow(self) -> bool:
        """Whether the rule is in shadow mode."""
        return self.mode == "shadow"


@dataclass(frozen=True)
class VerdictChange:
    """Payments whose verdict went from `before` (baseline) to `after` (the rule set tested)."""

    before: str
    after: str
    payments: int
    frauds: int | None
    amount: float
    fraud_amount: float | None
    examples: list[str]  # up to EXAMPLES transaction ids, earliest first


@dataclass(frozen=True)
class Comparison:
    """The rule set tested against a baseline rule set, on the same payments and scores."""

    baseline_dir: str
    baseline_version: str
    changed: int  # payments whose verdict differs
    matrix: dict[str, dict[str, int]]  # matrix[baseline verdict][new verdict] = payments
    changes: list[VerdictChange]  # one per direction with at least one payment, largest first
    baseline_verdicts: dict[str, dict[str, Any]]
    baseline_cost: dict[str, float] | None
    cost_difference: dict[str, float] | None  # new minus baseline, per cost part
    rules_added: list[str]
    rules_removed: list[str]
    rules_changed: list[str]  # same id, different condition, action, mode, reason or scope
    lists_changed: list[str]
    bands_changed: bool


def cents(amount: Any) -> float:
    """A sum of amounts to the cent: float noise such as 404.82000000000005 helps nobody."""
    return round(float(amount), 2)


def decide(
    ruleset: RuleSet,
    scores: np.ndarray,
    columns: Mapping[str, Column] | pd.DataFrame,
    merchant_ids: np.ndarray | pd.Series | Sequence[str | None],
    *,
    no_score_verdict: Verdict | None,
    risk_scores: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`RuleSet.decide_frame`, requiring a verdict for every payment (so the cost counts each one).

    The caller makes that so: a score on every row, or `no_score_verdict` standing in for the band.
    """
    verdicts, fired, skipped = ruleset.decide_frame(
        scores, columns, merchant_ids, no_score_verdict=no_score_verdict, risk_scores=risk_scores
    )
    if not set(pd.unique(verdicts)) <= set(VERDICTS):
        raise RuntimeError("the rule engine left payments without a verdict")
    return verdicts, fired, skipped


def band_alone(ruleset: RuleSet) -> RuleSet:
    """The rule set's bands, lists and settings without its rules: what the score alone decides."""
    return RuleSet(
        (),
        ruleset.lists,
        ruleset.bands,
        ruleset.merchant_bands,
        scale=ruleset.scale,
        authenticated_fallback=ruleset.authenticated_fallback,
        metadata=ruleset.metadata,
    )


def rule_stats(
    ruleset: RuleSet, fired: np.ndarray, skipped: np.ndarray, fraud: np.ndarray | None, amounts: np.ndarray
) -> list[RuleStats]:
    """One :class:`RuleStats` per rule of `ruleset`, from `decide`'s fired and skipped matrices."""
    n = len(amounts)
    fraud_amounts = np.where(fraud, amounts, 0.0) if fraud is not None else None
    stats = []
    for j, rule in enumerate(ruleset.rules):
        hit = fired[:, j]
        hits = int(hit.sum())
        frauds = int(np.count_nonzero(hit & fraud)) if fraud is not None else None
        stats.append(
            RuleStats(
                rule_id=rule.id,
                action=rule.action,
                mode=rule.mode,
                reason=rule.reason,
                merchants=sorted(rule.merchants) if rule.merchants is not None else None,
                hits=hits,
                hit_rate=hits / n if n else 0.0,
                frauds=frauds,
                precision=frauds / hits if frauds is not None and hits else None,
                fraud_amount=cents(fraud_amounts[hit].sum()) if fraud_amounts is not None else None,
                good_hits=hits - frauds if frauds is not None else None,
                skipped=int(skipped[:, j].sum()),
            )
        )
    return stats


def frauds_only_this_rule(
    ruleset: RuleSet, fired: np.ndarray, band_verdicts: np.ndarray, fraud: np.ndarray
) -> dict[str, int]:
    """Per live rule that acts (not allow, not shadow): the frauds it alone stopped.

    A fraud counts for a rule when that rule fired, no other acting live rule did, and the score
    band alone would have allowed it (`band_verdicts`: `decide` with :func:`band_alone`). Those
    are the frauds that pass if the rule is removed.
    """
    acting = np.array([r.mode == "live" and r.action != "allow" for r in ruleset.rules], dtype=bool)
    if not acting.any():
        return {}
    acted = fired & acting
    alone = (acted.sum(axis=1) == 1) & (band_verdicts == "allow") & fraud
    return {
        rule.id: int(np.count_nonzero(acted[:, j] & alone))
        for j, rule in enumerate(ruleset.rules)
        if acting[j]
    }


def reviews_per_day(verdicts: np.ndarray, days: np.ndarray) -> dict[str, int]:
    """Reviews per UTC day (`days`: one "YYYY-MM-DD" per payment), days without reviews included."""
    reviewed = pd.Series(verdicts == "review").groupby(pd.Series(days)).sum()
    return {str(day): int(count) for day, count in reviewed.sort_index().items()}


def mix(verdicts: np.ndarray, fraud: np.ndarray | None, amounts: np.ndarray) -> dict[str, dict[str, Any]]:
    """`verdict_mix`, with the fraud figures None when there are no labels."""
    if fraud is not None:
        return verdict_mix(fraud.astype(np.int8), verdicts, amounts)
    unlabelled = verdict_mix(np.zeros(len(verdicts), dtype=np.int8), verdicts, amounts)
    return {v: {**m, "frauds": None, "fraud_amount": None} for v, m in unlabelled.items()}


def _bands_key(ruleset: RuleSet) -> tuple[Any, ...]:
    # what turns a score into a verdict besides the rules
    return (ruleset.bands, dict(ruleset.merchant_bands), ruleset.scale, ruleset.authenticated_fallback)


def _rule_key(ruleset: RuleSet) -> dict[str, tuple[Any, ...]]:
    # what a rule does: its description changes the version but never a decision
    return {
        r.id: (r.when.canonical, r.action, r.mode, r.reason, sorted(r.merchants or ()) or None)
        for r in ruleset.rules
    }


def compare(
    ids: np.ndarray,
    ruleset: RuleSet,
    verdicts: np.ndarray,
    baseline: RuleSet,
    before: np.ndarray,
    baseline_dir: str,
    fraud: np.ndarray | None,
    amounts: np.ndarray,
    cost: dict[str, float] | None,
    cost_parameters: CostParameters,
) -> Comparison:
    """The rule set's verdicts against the baseline's on the same payments (`ids` in their order)."""
    matrix: dict[str, dict[str, int]] = {}
    changes: list[VerdictChange] = []
    for a in VERDICTS:
        was = before == a
        matrix[a] = {}
        for b in VERDICTS:
            moved = was & (verdicts == b)
            count = int(moved.sum())
            matrix[a][b] = count
            if a == b or count == 0:
                continue
            changes.append(
                VerdictChange(
                    before=a,
                    after=b,
                    payments=count,
                    frauds=int(np.count_nonzero(moved & fraud)) if fraud is not None else None,
                    amount=cents(amounts[moved].sum()),
                    fraud_amount=cents(amounts[moved & fraud].sum()) if fraud is not None else None,
                    examples=[str(i) for i in ids[moved][:EXAMPLES]],
                )
            )
    changes.sort(key=lambda c: -c.payments)
    base_cost = (
        expected_cost(fraud.astype(np.int8), before, amounts, **cost_parameters)
        if fraud is not None
        else None
    )
    new_keys, old_keys = _rule_key(ruleset), _rule_key(baseline)
    return Comparison(
        baseline_dir=baseline_dir,
        baseline_version=baseline.version,
        changed=int(np.count_nonzero(before != verdicts)),
        matrix=matrix,
        changes=changes,
        baseline_verdicts=mix(before, fraud, amounts),
        baseline_cost=base_cost,
        cost_difference=(
            # to a thousandth of a cent: costs carry 0.1 x amounts, and the subtraction adds float noise
            {k: round(cost[k] - base_cost[k], 5) for k in cost if k != "allow_everything"}
            if cost is not None and base_cost is not None
            else None
        ),
        rules_added=[r for r in new_keys if r not in old_keys],
        rules_removed=[r for r in old_keys if r not in new_keys],
        rules_changed=[r for r in new_keys if r in old_keys and new_keys[r] != old_keys[r]],
        lists_changed=sorted(
            name
            for name in set(ruleset.lists) | set(baseline.lists)
            if ruleset.lists.get(name) != baseline.lists.get(name)
        ),
        bands_changed=_bands_key(ruleset) != _bands_key(baseline),
    )


def json_ready(value: Any) -> Any:
    """A backtest's figures as plain JSON: numpy scalars to Python, NaN and infinities to None,
    tuples to lists (the CLI's report and the console's rule tests write the same way)."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
