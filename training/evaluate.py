"""Honest, time-based evaluation: `antifraud evaluate` on a period after the training period.

Every evaluation measures three scores on the same payments (`antifraud.training.metrics` defines the
metrics): the model, the logistic baseline (`antifraud.training.baselines.LogisticBaseline`, the usual
first model in the literature) and a hand-written rules-only score (`baseline_scores`). A model
that does not beat the logistic baseline is not worth its complexity, and the report says so.

This module is the single-period protocol; `antifraud.training.prequential` is the rolling-folds one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from antifraud.training.baselines import LOGISTIC_FILE, LogisticBaseline, baseline_scores
from antifraud.training.checks import MANY_MISSING
from antifraud.training.config import TrainConfig, TrainingError, load_config
from antifraud.training.dataset import Dataset, ProgressArg, as_progress, check_period
from antifraud.training.metrics import (
    Assessment,
    SideMetrics,
    Thresholds,
    compute_metrics,
    counts,
    thresholds_at,
)
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.replay import period_data, replay
from antifraud.training.report import write_report

__all__ = [
    "SideScores",
    "as_thresholds",
    "assess",
    "config_of",
    "evaluate",
    "file_warnings",
    "importances",
    "logistic_of",
    "measure",
    "period_data",
    "write_outputs",
]


@dataclass(frozen=True)
class SideScores:
    """The three scores of one set of payments, and the thresholds each is held to."""

    model: np.ndarray
    logistic: np.ndarray
    baseline: np.ndarray
    model_thresholds: Thresholds
    logistic_thresholds: Thresholds
    baseline_thresholds: Thresholds

    def as_mapping(self) -> dict[str, np.ndarray]:
        """Scores by side name (`model`, `logistic`, `baseline`), for plots."""
        return {"model": self.model, "logistic": self.logistic, "baseline": self.baseline}

    def metrics(self, data: Dataset, config: TrainConfig) -> tuple[SideMetrics, SideMetrics, SideMetrics]:
        """compute_metrics of the model, the logistic baseline and rules-only on `data`."""
        y, rows = data.y, data.rows
        return (
            compute_metrics(y, self.model, rows, self.model_thresholds, config),
            compute_metrics(y, self.logistic, rows, self.logistic_thresholds, config),
            compute_metrics(y, self.baseline, rows, self.baseline_thresholds, config),
        )


def as_thresholds(recorded: Mapping[str, object]) -> Thresholds:
    """Review and block thresholds from a recorded mapping (metadata.json), other keys ignored."""
    try:
        return {"review": float(recorded["review"]), "block": float(recorded["block"])}  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(
            f"recorded thresholds {dict(recorded)!r} lack a numeric review and block"
        ) from exc


def importances(artifact: ModelArtifact) -> list[tuple[str, float]]:
    """Features by total gain, highest first."""
    gain = artifact.booster.feature_importance(importance_type="gain")
    pairs = sorted(
        zip(artifact.booster.feature_name(), (float(g) for g in gain), strict=True), key=lambda p: -p[1]
    )
    return pairs


def assess(
    data: Dataset,
    scores: np.ndarray,
    artifact: ModelArtifact,
    config: TrainConfig,
    baseline_thresholds: Mapping[str, object] | None,
    out_dir: Path | None,
    title: str,
    warnings: list[str] | None = None,
    *,
    logistic: LogisticBaseline | None = None,
    logistic_thresholds: Mapping[str, object] | None = None,
) -> Assessment:
    """Metrics of the model, the logistic baseline and rules-only on one dataset; the report if asked.

    `baseline_thresholds` None: the rules-only thresholds are set on this very data (optimistic,
    said in the warnings). `logistic` None: the logistic baseline is fitted on this very data
    (optimistic, said in the warnings). `logistic_thresholds` None: set on this data at the
    configured rates, as `train` sets the model's on its validation slice (pass them when the
    model's were set elsewhere, as `evaluate` does).
    """
    metrics, sides = measure(
        data,
        scores,
        artifact,
        config,
        baseline_thresholds,
        title,
        warnings,
        logistic=logistic,
        logistic_thresholds=logistic_thresholds,
    )
    if out_dir is not None:
        write_outputs(out_dir, metrics, data, sides, artifact, config)
    return metrics


def measure(
    data: Dataset,
    scores: np.ndarray,
    artifact: ModelArtifact,
    config: TrainConfig,
    baseline_thresholds: Mapping[str, object] | None,
    title: str,
    warnings: list[str] | None = None,
    *,
    logistic: LogisticBaseline | None = None,
    logistic_thresholds: Mapping[str, object] | None = None,
) -> tuple[Assessment, SideScores]:
    """`assess` without writing anything: the metrics, and the three scores they were computed on."""
    warnings = list(warnings or [])
    if data.frauds in (0, len(data)):
        raise TrainingError(
            f"[{_when(data.start)}, {_when(data.end)}) has {len(data):,} payments and {data.frauds:,} "
            "frauds: the metrics need both frauds and legitimate payments; choose a longer period"
        )
    y = data.y
    if logistic is None:
        logistic = LogisticBaseline.fit(data.features, y)
        warnings.append(
            "the logistic baseline was fitted, and its thresholds set, on this period itself "
            "(optimistic for it)"
        )
    if missing := logistic.missing(data.features):
        warnings.append(
            f"the logistic baseline was fitted with features this file lacks ({', '.join(missing)}): "
            "they count as missing on every payment"
        )
    base, logit = baseline_scores(data.features), logistic.predict(data.features)
    if baseline_thresholds is None:
        base_t = thresholds_at(base, y, config)
        warnings.append("the rules-only thresholds were set on this period itself (optimistic for it)")
    else:
        base_t = as_thresholds(baseline_thresholds)
    if logistic_thresholds is None:
        # where train's validation report sets the model's: on this data, at the same rates
        logit_t = thresholds_at(logit, y, config)
    else:
        logit_t = as_thresholds(logistic_thresholds)
    sides = SideScores(scores, logit, base, as_thresholds(artifact.thresholds), logit_t, base_t)
    model_m, logistic_m, baseline_m = sides.metrics(data, config)
    metrics: Assessment = {
        "title": title,
        "period": {"start": _when(data.start), "end": _when(data.end)},
        "model_version": artifact.version,
        "counts": counts(data.rows),
        "aimed_fpr": {"review": config.review_fpr, "block": config.block_fpr},
        "model": model_m,
        "logistic": logistic_m,
        "baseline": baseline_m,
        "cost_parameters": config.cost_parameters(),
        "warnings": warnings,
    }
    return metrics, sides


def _when(t: pd.Timestamp) -> str:
    """A date when the time is midnight UTC (the usual case), else the full ISO time."""
    return f"{t:%Y-%m-%d}" if t == t.normalize() else t.isoformat()


def write_outputs(
    out_dir: Path,
    metrics: Assessment,
    data: Dataset,
    sides: SideScores,
    artifact: ModelArtifact,
    config: TrainConfig,
) -> None:
    """metrics.json, the plots and report.md / report.html in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(
        out_dir,
        metrics,
        data.y,
        sides.as_mapping(),
        data.rows["amount"].to_numpy(dtype=float),
        importances(artifact)[: config.top_features],
        config,
    )


def config_of(artifact: ModelArtifact, config: Path | None) -> TrainConfig:
    """The evaluation settings: a given TRAIN.yaml, else those the model was trained with."""
    return load_config(config) if config is not None else artifact.train_config()


def _duration(delay: timedelta) -> str:
    seconds = delay.total_seconds()
    if seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    return f"{seconds / 3600:g} hours"


def _training_period(artifact: ModelArtifact) -> tuple[date, date] | None:
    data = artifact.metadata.get("data") or {}
    try:
        return date.fromisoformat(str(data["train_start"])), date.fromisoformat(str(data["train_end"]))
    except (KeyError, ValueError):
        return None


def logistic_of(
    artifact: ModelArtifact, trained: Dataset | None, config: TrainConfig, warnings: list[str]
) -> tuple[LogisticBaseline | None, Thresholds | None]:
    """The model directory's logistic baseline and its thresholds, as far as they can be had.

    The baseline comes from `baseline_logistic.json`; an older model directory has none, and it is
    then fitted on the model's training period (`trained`), with a warning. Its thresholds are
    those `train` recorded (metadata `logistic_thresholds`: set out of sample on the validation
    slice, as the model's), else they are set on the training period at the configured
    false-positive rates (a model of about a dozen coefficients scores its own training payments
    much as it scores new ones). None for what cannot be had (no file and no training period):
    `assess` then uses the evaluated period itself and says so.
    """
    path = artifact.path / LOGISTIC_FILE if artifact.path is not None else None
    usable = trained if trained is not None and 0 < trained.frauds < len(trained) else None
    if path is not None and path.is_file():
        logistic = LogisticBaseline.load(path)
    elif usable is not None:
        logistic = LogisticBaseline.fit(usable.features, usable.y)
        warnings.append(
            f"the model directory has no {LOGISTIC_FILE} (trained before the logistic baseline existed): "
            f"the logistic baseline was fitted here on the model's training period "
            f"[{_when(usable.start)}, {_when(usable.end)})"
        )
    else:
        return None, None
    recorded = artifact.metadata.get("logistic_thresholds")
    if isinstance(recorded, Mapping) and path is not None and path.is_file():
        return logistic, as_thresholds(recorded)
    if usable is None:
        return logistic, None
    return logistic, thresholds_at(logistic.predict(usable.features), usable.y, config)


def file_warnings(rows: pd.DataFrame, data: Dataset, model_features: list[str]) -> list[str]:
    """What about the evaluated file makes the figures less trustworthy, as plain sentences:
    label times filled by an assumed delay, and features missing on every evaluated payment."""
    out: list[str] = []
    defaulted = int(rows.attrs.get("label_time_defaulted", 0))
    if defaulted and not rows.attrs.get("label_delay_given", False):
        delay = pd.Timedelta(rows.attrs.get("label_delay", pd.Timedelta(0)))
        out.append(
            f"{defaulted:,} frauds have no label_time: each is taken as known {_duration(delay)} after its "
            "payment, the default; label-based features depend on it: pass --label-delay or add label_time"
        )
    missing = [n for n in model_features if n in data.features and data.features[n].isna().all()]
    if len(missing) >= MANY_MISSING:
        out.append(
            f"{len(missing)} of the model's {len(model_features)} features are missing on every evaluated "
            f"payment (the file lacks the columns they read), so the model scores without them: "
            f"{', '.join(missing)}"
        )
    return out


def evaluate(
    history: Path,
    model_dir: Path,
    start: date | str,
    end: date | str,
    out_dir: Path | None = None,
    columns: Path | None = None,
    config: Path | None = None,
    progress: ProgressArg = None,
    label_delay: timedelta | None = None,
) -> Assessment:
    """Metrics of a trained model, the logistic baseline and rules-only on [start, end) of a history.

    Writes metrics.json, the plots and report.md/report.html to `out_dir` when given. The
    rules-only baseline is held to the model's rule: its thresholds were set at train time on the
    same validation slice at the same false-positive rates (metadata `baseline_thresholds`). The
    column map and label delay recorded with the model are reused unless given (`notes` in the
    result's warnings say so). A period overlapping the training period is evaluated, with a warning.
    """
    s, e = check_period(start, end)
    step = as_progress(progress)
    artifact = ModelArtifact.load(model_dir)
    cfg = config_of(artifact, config)
    columns, label_delay, notes = artifact.reading(columns, label_delay)
    for note in notes:
        step(note)
    trained_period = _training_period(artifact)
    # features up to the training end too, so the training period (for the logistic baseline of an
    # older model directory) is cut from the same computation
    replayed = replay(
        history,
        s,
        e,
        artifact,
        columns=columns,
        label_delay=label_delay,
        require_label=True,
        context_end=trained_period[1] if trained_period else None,
        progress=step,
    )
    data, scores = replayed.dataset, replayed.scores
    warnings: list[str] = []
    if overlap := artifact.training_overlap(s, e):
        warnings.append(
            f"the period overlaps the training period [{overlap[0]}, {overlap[1]}): these metrics are "
            "optimistic; evaluate on dates from the training end on"
        )
    warnings += file_warnings(data.rows, data, artifact.features)
    trained: Dataset | None = None
    if trained_period is not None:
        try:
            trained = replayed.period(*trained_period)
        except TrainingError:
            warnings.append(
                f"the model's training period [{trained_period[0]}, {trained_period[1]}) is not in {history}"
            )
    logistic, logistic_t = logistic_of(artifact, trained, cfg, warnings)
    title = f"Evaluation of {artifact.version} on [{s}, {e})"
    metrics, sides = measure(
        data,
        scores,
        artifact,
        cfg,
        artifact.metadata.get("baseline_thresholds"),
        title,
        warnings,
        logistic=logistic,
        logistic_thresholds=logistic_t,
    )
    metrics["history"] = str(history)
    metrics["notes"] = notes
    if out_dir is not None:
        write_outputs(out_dir, metrics, data, sides, artifact, cfg)
        step(f"wrote {out_dir / 'report.md'}")
    return metrics
