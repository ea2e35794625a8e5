"""Live performance per ISO week, from the labels that have arrived (docs/monitoring.md).

A payment is a fraud when its latest label reported by the report's `as_of` time is fraud or
chargeback (`decisions_with_feedback.parquet`'s `is_fraud`); every other payment counts as good,
which is only true once its chargebacks have had time to arrive: `maturity` is the share of a
week's payments older than the label delay at `as_of`, so a young week's figures are read with it.

The baseline a week is judged against is the model's own validation (`validation_baseline`): the
figures training measured on its validation slice, out of sample, with the thresholds it set there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from antifraud.engine.monitoring import Thresholds
from antifraud.training.monitor.decisions import Decisions, utc

FLAGGED = ("review", "block")  # the verdicts that stop a good payment (the realised FPR's numerator)


@dataclass(frozen=True)
class LiveFigures:
    """How the live model did on a set of payments (None where a figure is undefined)."""

    average_precision: float | None  # of the live scores; None without a fraud and a good payment
    recall_review: float | None  # frauds with score >= the review threshold / frauds
    recall_block: float | None  # frauds with score >= the block threshold / frauds
    realised_fpr: float | None  # good payments reviewed or blocked / good payments
    blocked_fpr: float | None  # good payments blocked / good payments


@dataclass(frozen=True)
class WeekPerformance:
    """One ISO week of payments, measured against the labels known at `as_of`."""

    week: str  # ISO week, e.g. 2026-W09
    payments: int
    frauds: int  # labelled fraud or chargeback by as_of
    maturity: float  # share of the week's payments older than the label delay at as_of
    figures: LiveFigures


@dataclass(frozen=True)
class Baseline:
    """What the model did on its validation slice (metadata.json `validation_metrics`), the figures a
    mature week is compared with. They are out of sample: a model with the same trees trained on the
    days before the slice, whose scores set the thresholds (docs/training.md); the final model has
    learned the slice, so its own scores there would flatter it."""

    period: tuple[str, str]  # the validation slice, ISO dates [start, end)
    payments: int
    frauds: int
    figures: LiveFigures


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def validation_baseline(metadata: Mapping[str, Any]) -> Baseline | None:
    """The validation figures recorded in a model's metadata.json, as `measure` computes a week's:
    AP; recall at the review and block thresholds (`recall_at_fpr_<fpr>`: the thresholds were set at
    those false-positive rates on these very scores, so the best recall within the rate is the share
    of frauds at or above the threshold, up to tied scores); the realised false-positive rates
    (legitimate payments at or above each threshold: the verdicts the model's thresholds give). None
    when metadata.json records no validation metrics; a figure it lacks (a rate other than 0.1 % or
    1 %) is None."""
    metrics = metadata.get("validation_metrics")
    if not isinstance(metrics, Mapping):
        return None
    thresholds = metadata.get("thresholds") or {}
    data = metadata.get("data") or {}
    counts = (metadata.get("counts") or {}).get("validation") or {}
    fpr = metrics.get("realised_fpr") or {}

    def recall(side: str) -> float | None:
        rate = _number(thresholds.get(f"{side}_fpr"))
        return None if rate is None else _number(metrics.get(f"recall_at_fpr_{rate}"))

    return Baseline(
        period=(str(data.get("validation_start", "?"))[:10], str(data.get("validation_end", "?"))[:10]),
        payments=int(counts.get("payments", 0)),
        frauds=int(counts.get("frauds", 0)),
        figures=LiveFigures(
            average_precision=_number(metrics.get("average_precision")),
            recall_review=recall("review"),
            recall_block=recall("block"),
            realised_fpr=_number(fpr.get("review")),
            blocked_fpr=_number(fpr.get("block")),
        ),
    )


def unjudged(week: WeekPerformance, thresholds: Thresholds) -> str | None:
    """Why a week's performance is not judged against the baseline (None: it is): labels too young
    (`performance_min_maturity`) or too few frauds (`performance_min_frauds`) to tell a drop from
    chance."""
    if week.maturity < thresholds.performance_min_maturity:
        return (
            f"labels {week.maturity:.0%} mature, below performance_min_maturity "
            f"{thresholds.performance_min_maturity:.0%}"
        )
    if week.frauds < thresholds.performance_min_frauds:
        return f"{week.frauds} frauds, fewer than performance_min_frauds {thresholds.performance_min_frauds}"
    return None


def known_frauds(decisions: Decisions, as_of: datetime) -> np.ndarray | None:
    """True where a fraud or chargeback label was reported by `as_of`; None when the decisions
    carry no labels at all (decisions.parquet rather than the joined file)."""
    if decisions.labels is None or decisions.label_times is None:
        return None
    reported = np.asarray(decisions.label_times <= utc(as_of))  # NaT: False
    return (decisions.labels == 1) & reported


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def measure(
    scores: np.ndarray, fraud: np.ndarray, verdicts: np.ndarray, thresholds: dict[str, float]
) -> LiveFigures:
    """Average precision, recall at the review and block thresholds and the realised false-positive
    rates of one set of payments: their live `scores`, known `fraud` and `verdicts`."""
    scored = ~np.isnan(scores)
    both = bool(fraud[scored].any() and (~fraud[scored]).any())
    ap = float(average_precision_score(fraud[scored], scores[scored])) if both else None
    frauds = scores[fraud]
    good = ~fraud
    return LiveFigures(
        average_precision=ap,
        recall_review=_share(frauds >= thresholds["review"]),
        recall_block=_share(frauds >= thresholds["block"]),
        realised_fpr=_share(np.isin(verdicts[good], FLAGGED)),
        blocked_fpr=_share(verdicts[good] == "block"),
    )


def iso_week(stamps: pd.DatetimeIndex) -> np.ndarray:
    """The ISO week (2026-W09) of each time."""
    calendar = stamps.isocalendar()
    return np.array([f"{y}-W{w:02d}" for y, w in zip(calendar["year"], calendar["week"], strict=True)])


def weekly(
    decisions: Decisions, thresholds: dict[str, float], label_delay: timedelta, as_of: datetime
) -> list[WeekPerformance]:
    """Live performance per ISO week (empty when the decisions carry no labels)."""
    fraud = known_frauds(decisions, as_of)
    if fraud is None or len(decisions) == 0:
        return []
    weeks = iso_week(decisions.timestamps)
    mature = np.asarray(decisions.timestamps <= utc(as_of) - label_delay)
    out = []
    for week in sorted(set(weeks)):
        rows = weeks == week
        out.append(
            WeekPerformance(
                week=str(week),
                payments=int(rows.sum()),
                frauds=int(fraud[rows].sum()),
                maturity=float(mature[rows].mean()),
                figures=measure(decisions.scores[rows], fraud[rows], decisions.verdicts[rows], thresholds),
            )
        )
    return out
