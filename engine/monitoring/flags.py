"""The flags: which drift figures cross their thresholds, and how each is worded.

One set of rules for both users, `antifraud monitor` (training/monitor/report.py, which adds the
live-performance and consistency flags of its own, with this same `Flag`) and the service's periodic
job (engine/monitor_job.py, which the import contracts keep away from the offline tools).
docs/monitoring.md, "The flags", describes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from antifraud.engine.monitoring.drift import FeatureDrift, Thresholds, verdict_shift

Level: TypeAlias = Literal["alert", "warn"]


@dataclass(frozen=True)
class Flag:
    """A figure past its threshold. An `alert` makes `antifraud monitor` exit 3; a `warn` is shown only.
    The service's summary stores it as a JSON object of these six fields."""

    level: Level
    #: feature_psi, feature_missing, score_psi, verdict_shift, degraded_share; the offline report adds
    #: skew_share, recall_drop, ap_drop and fpr_rise
    kind: str
    subject: str  # the feature, the verdict, "score", "degraded", or the ISO week of a performance flag
    value: float
    limit: float
    message: str


def traffic_flags(
    thresholds: Thresholds,
    rows: int,
    drifts: Sequence[FeatureDrift],
    score_psi: float | None,
    verdicts_reference: Mapping[str, float],
    verdicts_now: Mapping[str, float],
    degraded_share: float,
) -> list[Flag]:
    """The flags of a period's traffic against its reference: each feature's PSI and missing share, the
    score's PSI, each verdict's share and the degraded share, in that order.

    `rows` is every decision of the period: below `min_rows` nothing is flagged. A feature's PSI is
    judged only on at least `min_rows` values present (the PSI of a few values is noise); the features
    of `thresholds.ignore` never. `score_psi` None: not measured (no decision scored by the reference's
    model). An empty `verdicts_reference` (no profile) is not compared."""
    t = thresholds
    if rows < t.min_rows:
        return []
    found: list[Flag] = []
    for d in drifts:
        if d.feature in t.ignore:
            continue
        if d.present >= t.min_rows and (judged := level_of(d.psi, t.psi_warn, t.psi_alert)):
            level, limit = judged
            message = f"{d.feature}: PSI {d.psi:.3f} >= {limit:g}"
            found.append(Flag(level, "feature_psi", d.feature, d.psi, limit, message))
        if d.missing_increase > t.missing_increase:
            found.append(
                Flag(
                    "alert",
                    "feature_missing",
                    d.feature,
                    d.missing_increase,
                    t.missing_increase,
                    f"{d.feature}: missing on {d.missing_now:.1%} of payments, {d.missing_reference:.1%} "
                    f"in the reference (+{d.missing_increase:.1%} > {t.missing_increase:.0%})",
                )
            )
    if score_psi is not None and (judged := level_of(score_psi, t.psi_warn, t.score_psi_alert)):
        level, limit = judged
        found.append(
            Flag(level, "score_psi", "score", score_psi, limit, f"score: PSI {score_psi:.3f} >= {limit:g}")
        )
    if verdicts_reference:
        for verdict, shift in verdict_shift(verdicts_reference, verdicts_now).items():
            if abs(shift) > t.verdict_shift:
                found.append(
                    Flag(
                        "alert",
                        "verdict_shift",
                        verdict,
                        shift,
                        t.verdict_shift,
                        f"{verdict}: {verdicts_now.get(verdict, 0.0):.1%} of payments, "
                        f"{verdicts_reference.get(verdict, 0.0):.1%} in the reference "
                        f"({shift:+.1%}, more than {t.verdict_shift:.0%} either way)",
                    )
                )
    if degraded_share > t.degraded_share:
        found.append(
            Flag(
                "alert",
                "degraded_share",
                "degraded",
                degraded_share,
                t.degraded_share,
                f"{degraded_share:.1%} of decisions degraded (a signal missing) > {t.degraded_share:.0%}",
            )
        )
    return found


def level_of(value: float, warn: float, alert: float) -> tuple[Level, float] | None:
    """("alert", alert) when `value` (larger: worse) reaches `alert`, ("warn", warn) when it reaches
    `warn`, else None: the level of a figure with two thresholds, and the one it crossed."""
    if value >= alert:
        return "alert", alert
    return ("warn", warn) if value >= warn else None


def ranked(flags: Sequence[Flag]) -> list[Flag]:
    """Alerts first, then the largest values first."""
    return sorted(flags, key=lambda f: (f.level != "alert", -abs(f.value)))
