"""`antifraud monitor`'s work: read the model, its reference profile, the thresholds and the period's
decisions, then assemble the report (`training.monitor.report`). Every input problem is a
`MonitorError` (or another ValueError naming the file at fault): the command exits 2 on it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from antifraud.engine.monitoring import ReferenceProfile, Thresholds
from antifraud.training.history import DEFAULT_LABEL_DELAY
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.monitor.decisions import MonitorError, read_decisions, utc
from antifraud.training.monitor.performance import validation_baseline
from antifraud.training.monitor.report import MonitorReport, assemble


def recorded_label_delay(artifact: ModelArtifact) -> timedelta:
    """The label delay the model was trained with (metadata.json), else the default 30 days."""
    seconds = (artifact.metadata.get("data") or {}).get("label_delay_seconds")
    return timedelta(seconds=float(seconds)) if seconds is not None else DEFAULT_LABEL_DELAY


def monitor(
    decisions: Path,
    model_dir: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    thresholds: Path | None = None,
    label_delay: timedelta | None = None,
    as_of: datetime | None = None,
) -> MonitorReport:
    """The report of the decisions of [start, end) in an export (`decisions`: a directory of
    `antifraud export-decisions` or one of its files) against the model in `model_dir` and its
    reference.json. `label_delay`: the model's recorded one unless given; `as_of`: labels reported by
    then count (default: now)."""
    artifact = ModelArtifact.load(model_dir, check_spec=False)
    profile = ReferenceProfile.load(model_dir)
    if profile is None:
        raise MonitorError(
            f"{model_dir} has no reference.json: rebuild it with "
            f"`antifraud monitor reference {model_dir} --history HISTORY` (the file it was trained on)"
        )
    limits = Thresholds.load(thresholds)
    read = read_decisions(decisions, list(profile.features), start, end)
    if len(read) == 0:
        raise MonitorError(f"{decisions}: no decisions of payments in the period")
    return assemble(
        profile,
        read,
        limits,
        artifact.thresholds,
        label_delay or recorded_label_delay(artifact),
        utc(as_of or datetime.now(UTC)).to_pydatetime(),
        (start, end),
        validation_baseline(artifact.metadata),
    )
