"""Live performance per ISO week, from the labels that have arrived (docs/monitoring.md).

A payment is a fraud when its latest label reported by the report's `as_of` time is fraud or
chargeback (`decisions_with_feedback.parquet`'s `is_fraud`); every other payment counts as good,
which is only true once its chargebacks have had time to arrive: `maturity` is the share of a
week's payments older than the label delay at `as_of`, so a young week's figures are read with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

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
