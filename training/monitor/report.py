"""The monitoring report of a period: drift, verdict mix, degraded share, live performance and the
challenger against a model's reference profile (live performance against the model's validation
figures), each figure flagged against `Thresholds` (docs/monitoring.md explains every one).
`assemble` builds it; `training.monitor.output` shows it.

Exit codes (`MonitorReport.exit_code`): 0 nothing crossed an alert threshold, 3 something did (a
scheduler alerts on it); 2 is bad input, raised before a report exists (`MonitorError`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import numpy as np

from antifraud.engine.monitoring import FeatureDrift, ReferenceProfile, Thresholds, feature_drift, score_drift
from antifraud.engine.monitoring.drift import measured, verdict_mix, verdict_shift
from antifraud.engine.monitoring.flags import Flag, level_of, traffic_flags
from antifraud.training.monitor.challenger import Challenge, challenges
from antifraud.training.monitor.decisions import Decisions
from antifraud.training.monitor.performance import (
    Baseline,
    LiveFigures,
    WeekPerformance,
    known_frauds,
    unjudged,
    weekly,
)

CLEAN: Final = 0
BAD_INPUT: Final = 2
CROSSED: Final = 3


@dataclass
class MonitorReport:
    """Everything `antifraud monitor` reports about one period."""

    model_version: str  # the reference profile's model
    reference_period: tuple[str, str]
    reference_rows: int
    period: tuple[str | None, str | None]  # [from, to) as given (None: unbounded)
    as_of: str  # the time labels and their maturity are judged at, ISO 8601
    label_delay_days: float
    rows: int
    #: of which answered with every signal: the feature drift's rows (engine.monitoring.drift.measured)
    drift_rows: int
    score_rows: int  # of those, scored by the reference profile's model: the score drift's rows
    model_versions: dict[str, int]  # decisions per model version that scored them
    thresholds: Thresholds
    model_thresholds: dict[str, float]  # the live model's review and block thresholds
    features: list[FeatureDrift]
    score_psi: float | None  # None: no decision of the period was scored by the profile's model
    #: the score's reference bins: inner `edges`, the `reference` shares and the period's (`now`)
    score_bins: dict[str, list[float]]
    verdicts: dict[str, dict[str, float]]  # verdict -> reference, now, shift
    degraded_share: float
    weeks: list[WeekPerformance]
    challengers: list[Challenge]
    #: the model's validation figures the weeks are judged against (None: metadata.json has none)
    baseline: Baseline | None = None
    flags: list[Flag] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: other checks' sections (the online/offline consistency check adds its own), by name
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def quiet(self) -> bool:
        """Too few decisions to judge: nothing is flagged (`Thresholds.min_rows`)."""
        return self.rows < self.thresholds.min_rows

    @property
    def exit_code(self) -> int:
        """3 when an alert was raised, else 0."""
        return CROSSED if any(f.level == "alert" for f in self.flags) else CLEAN

    def add_flag(self, flag: Flag) -> None:
        """Add a flag unless the period is too small to judge (then the notes already say so)."""
        if not self.quiet:
            self.flags.append(flag)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (`--json`)."""
        data = asdict(self)
        data["thresholds"]["ignore"] = list(self.thresholds.ignore)
        for drift, row in zip(self.features, data["features"], strict=True):
            row["missing_increase"] = drift.missing_increase
        data["exit_code"] = self.exit_code
        data["quiet"] = self.quiet
        return data


def _performance_flags(report: MonitorReport) -> None:
    """Each week with mature labels and enough frauds against the model's validation figures: recall
    at the review threshold (absolute drop), AP (relative drop), realised FPR (absolute rise). A week
    not judged gets a note saying why."""
    t, base = report.thresholds, report.baseline
    if base is None:
        if report.weeks:
            report.notes.append(
                "metadata.json records no validation metrics: live performance is shown, not judged"
            )
        return
    was = base.figures
    for week in report.weeks:
        if reason := unjudged(week, t):
            report.notes.append(f"{week.week}: {reason}: its live performance is shown, not judged")
            continue
        for judged in _JUDGED:
            if (flag := judged.flag(week.week, week.figures, was, t)) is not None:
                report.add_flag(flag)


@dataclass(frozen=True)
class _Judged:
    """One live-performance figure judged against validation."""

    kind: str  # the flag's kind, and the prefix of its two thresholds (`<kind>_warn`, `<kind>_alert`)
    name: str  # in messages
    figure: Callable[[LiveFigures], float | None]
    limits: Callable[[Thresholds], tuple[float, float]]  # warn, alert
    how: Literal["absolute drop", "relative drop", "absolute rise"]
    shown: str  # format of the figure in messages

    def flag(self, week: str, now: LiveFigures, was: LiveFigures, t: Thresholds) -> Flag | None:
        """The week's flag, or None: the figure is within its limits, or undefined on either side."""
        new, old = self.figure(now), self.figure(was)
        if new is None or old is None or (self.how == "relative drop" and old <= 0):
            return None
        change = {"absolute drop": old - new, "relative drop": 1 - new / old, "absolute rise": new - old}
        worse = change[self.how]
        if (judged := level_of(worse, *self.limits(t))) is None:
            return None
        level, limit = judged
        return Flag(
            level,
            self.kind,
            week,
            worse,
            limit,
            f"{week}: {self.name} {new:{self.shown}}, {old:{self.shown}} on validation "
            f"({self.how} {worse:.1%}, {limit:.0%} or more)",
        )


#: recall at the review threshold in points (the share of frauds the team sees at all); AP relative
#: to validation's (its level varies with the model and the fraud rate); the realised FPR in points
_JUDGED: Final = (
    _Judged("recall_drop", "recall at the review threshold", lambda f: f.recall_review,
            lambda t: (t.recall_drop_warn, t.recall_drop_alert), "absolute drop", ".1%"),
    _Judged("ap_drop", "average precision", lambda f: f.average_precision,
            lambda t: (t.ap_drop_warn, t.ap_drop_alert), "relative drop", ".3f"),
    _Judged("fpr_rise", "good payments reviewed or blocked", lambda f: f.realised_fpr,
            lambda t: (t.fpr_rise_warn, t.fpr_rise_alert), "absolute rise", ".2%"),
)  # fmt: skip


def assemble(
    profile: ReferenceProfile,
    decisions: Decisions,
    thresholds: Thresholds,
    model_thresholds: dict[str, float],
    label_delay: timedelta,
    as_of: datetime,
    period: tuple[datetime | None, datetime | None] = (None, None),
    baseline: Baseline | None = None,
) -> MonitorReport:
    """The report of `decisions` against `profile`, flagged against `thresholds`.

    `model_thresholds` are the live model's review and block thresholds (live recall); labels are
    those reported by `as_of`, and a payment is mature when older than `label_delay` then. Each
    week's live performance is judged against `baseline` (the model's validation figures; None: not
    judged).
    """
    versions, counts = np.unique(decisions.model_versions.astype(str), return_counts=True)
    drift_rows, score_rows = measured(
        decisions.degraded, decisions.model_versions, decisions.scores, profile.model_version
    )
    scored = decisions.scores[score_rows]
    mix = verdict_mix(list(decisions.verdicts))
    shift = verdict_shift(profile.verdicts, mix)
    report = MonitorReport(
        model_version=profile.model_version,
        reference_period=profile.period,
        reference_rows=profile.rows,
        period=(_iso(period[0]), _iso(period[1])),
        as_of=as_of.isoformat(),
        label_delay_days=label_delay / timedelta(days=1),
        rows=len(decisions),
        drift_rows=int(drift_rows.sum()),
        score_rows=int(score_rows.sum()),
        model_versions={str(v): int(c) for v, c in zip(versions, counts, strict=True)},
        thresholds=thresholds,
        model_thresholds=dict(model_thresholds),
        features=feature_drift(profile, {n: v[drift_rows] for n, v in decisions.features.items()}),
        score_psi=score_drift(profile, scored) if scored.size else None,
        score_bins=_bins(profile, scored),
        verdicts={
            v: {"reference": profile.verdicts.get(v, 0.0), "now": mix.get(v, 0.0), "shift": s}
            for v, s in shift.items()
        },
        degraded_share=float(decisions.degraded.mean()) if len(decisions) else 0.0,
        weeks=weekly(decisions, model_thresholds, label_delay, as_of),
        challengers=challenges(decisions, known_frauds(decisions, as_of)),
        baseline=baseline,
    )
    if report.quiet:
        report.notes.append(
            f"only {report.rows:,} decisions in the period, fewer than min_rows {thresholds.min_rows:,}: "
            "the figures are shown, nothing is flagged"
        )
    report.notes += _left_out(decisions, drift_rows, score_rows, profile.model_version)
    if sparse := sum(d.present < thresholds.min_rows for d in report.features):
        report.notes.append(
            f"{sparse} features have fewer than min_rows {thresholds.min_rows:,} values in the period: "
            "their PSI is shown, not judged (their missing share is)"
        )
    if decisions.labels is None:
        report.notes.append("the decisions carry no labels (decisions.parquet): no live performance")
    if missing := [n for n in profile.features if n not in decisions.features]:
        report.notes.append(
            f"{len(missing)} profiled features are not in the decisions: {', '.join(missing)}"
        )
    report.flags += traffic_flags(
        thresholds,
        report.rows,
        report.features,
        report.score_psi,
        profile.verdicts,
        mix,
        report.degraded_share,
    )
    _performance_flags(report)
    return report


def _left_out(decisions: Decisions, drift_rows: np.ndarray, score_rows: np.ndarray, model: str) -> list[str]:
    """Notes on the decisions the drift leaves out (engine.monitoring.drift.measured): the degraded
    ones, and those scored by another model (or by none)."""
    notes = []
    if degraded := int((~drift_rows).sum()):
        notes.append(
            f"{degraded:,} degraded decisions are left out of the feature and score drift: their stateful "
            "features are missing by design, and the degraded share counts them"
        )
    others = drift_rows & ~score_rows
    if others.any():
        versions, counts = np.unique(decisions.model_versions[others].astype(str), return_counts=True)
        by = ", ".join(f"{v}: {c:,}" for v, c in zip(versions, counts, strict=True))
        notes.append(
            f"{int(others.sum()):,} decisions not scored by {model}, the reference profile's model ({by}), "
            "are left out of the score drift: another model's scores are not comparable with its reference"
            + ("" if score_rows.any() else "; no score drift")
        )
    return notes


def _bins(profile: ReferenceProfile, scores: np.ndarray) -> dict[str, list[float]]:
    counts, _ = profile.score.counts(scores)
    now = counts / counts.sum() if counts.sum() else np.zeros(len(counts))
    return {"edges": list(profile.score.edges), "reference": list(profile.score.shares), "now": now.tolist()}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
