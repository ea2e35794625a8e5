"""Champion and challenger on the same payments: the live model's scores against the shadow model's
(`shadow_score`, logged for the payments of the shadow share), once labels exist.

Both are measured without thresholds of their own (the challenger's are not in the decision log):
average precision, and recall at the false-positive rates the thresholds aim at (0.1 %, 1 %), on
the payments both scored. docs/monitoring.md, "Champion and challenger".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score

from antifraud.training.metrics import FPR_TARGETS, recall_at_fpr
from antifraud.training.monitor.decisions import Decisions


@dataclass(frozen=True)
class SideFigures:
    """One model's figures on the shared payments (None: no fraud, or no good payment, among them)."""

    model_version: str
    mean_score: float
    average_precision: float | None
    recall_at_fpr: dict[str, float | None]  # by target false-positive rate, "0.001" and "0.01"


@dataclass(frozen=True)
class Challenge:
    """The champion and one challenger on the payments both scored."""

    payments: int
    frauds: int
    champion: SideFigures
    challenger: SideFigures


def _side(version: str, scores: np.ndarray, fraud: np.ndarray) -> SideFigures:
    both = bool(fraud.any() and (~fraud).any())
    return SideFigures(
        model_version=version,
        mean_score=float(scores.mean()),
        average_precision=float(average_precision_score(fraud, scores)) if both else None,
        recall_at_fpr={f"{t:g}": recall_at_fpr(fraud, scores, t) if both else None for t in FPR_TARGETS},
    )


def challenges(decisions: Decisions, fraud: np.ndarray | None) -> list[Challenge]:
    """One `Challenge` per shadow model version in the period (none without shadow scores).
    `fraud`: the labels known (`performance.known_frauds`); None, no labels: only the mean scores."""
    shared = ~np.isnan(decisions.shadow_scores) & ~np.isnan(decisions.scores)
    known = fraud if fraud is not None else np.zeros(len(decisions), dtype=bool)
    out = []
    for version in sorted({str(v) for v in decisions.shadow_versions[shared]}):
        rows = shared & (decisions.shadow_versions == version)
        champions = sorted({str(v) for v in decisions.model_versions[rows]})
        out.append(
            Challenge(
                payments=int(rows.sum()),
                frauds=int(known[rows].sum()),
                champion=_side(" + ".join(champions), decisions.scores[rows], known[rows]),
                challenger=_side(version, decisions.shadow_scores[rows], known[rows]),
            )
        )
    return out
