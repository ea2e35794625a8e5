"""Train a LightGBM fraud model on a date range of a history file: `antifraud train`.

1. Features are computed point-in-time over the whole file up to `train_end` (a payment on the
   first training day still sees its card's previous 30 days).
2. **How many trees**, chosen out of time: the period [train_start, train_end) is cut into
   *fit | gap | validation*. Validation is the last `validation_fraction` of the period (whole days
   when the period is at least 5 days). The gap before it is the label delay, at most
   `gap_fraction` of the period: a model put in service today has not learned the frauds of the
   last label-delay days (their labels have not arrived), so the model choosing the trees must not
   have learned the days just before its validation either. LightGBM trains on the fit part and
   stops early on the validation slice's average precision.
3. **Thresholds**, from out-of-sample scores: a model with that number of trees is trained on
   everything before the validation slice (fit and gap) and scores the validation slice, which it
   has not seen. `block` lets at most `block_fpr` (0.1%) of those legitimate payments through to
   a block, `review` at most `review_fpr` (1%) to review or block.
4. **Refit**: the final model is trained on the whole period with the same number of trees, so it
   has learned the most recent payments too (the fraud rings of the last days), and keeps the
   thresholds of step 3: it differs from the model that set them only by the validation days.
   docs/training.md gives the false-positive rates these thresholds reached on later weeks of
   simulated histories, and why other ways of carrying thresholds over to a refitted model miss.

`fit_model` does steps 2-4 on a `Dataset`; `train` reads the history, checks it
(`antifraud.training.checks`), calls `fit_model`, writes the model directory and its validation report.
"""

from __future__ import annotations

import math
import platform
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from antifraud.features.spec import FeatureSpec, load_spec
from antifraud.training.baselines import LogisticBaseline, baseline_scores
from antifraud.training.checks import data_warnings
from antifraud.training.config import TrainConfig, TrainingError, load_config
from antifraud.training.dask_cluster import active_client
from antifraud.training.dask_lgbm import dask_select, dask_trees
from antifraud.training.dataset import (
    Dataset,
    Progress,
    ProgressArg,
    as_progress,
    build_dataset,
    check_period,
    file_sha256,
    no_progress,
    read_history,
)
from antifraud.training.evaluate import assess
from antifraud.training.metrics import Assessment, threshold_at_fpr
from antifraud.training.model_artifact import METADATA_FILE, MODEL_FILE, ModelArtifact
from antifraud.training.monitor.reference import reference_profile

MIN_FRAUDS = 5  # below this in either slice, early stopping and thresholds are noise
THRESHOLD_RULE = (
    "lowest score at which at most <fpr> of the legitimate validation payments score at or above it, "
    "scored out of sample by a model with the same number of trees trained on the days before the "
    "validation slice; the final model, refitted on the whole period, keeps them. Verdict block if "
    "score >= block, review if score >= review, else allow"
)


def scale_pos_weight(config: TrainConfig, legit: int, frauds: int) -> float | None:
    """The weight of a fraud relative to a legitimate payment under the `imbalance` setting.

    `none` (the default): 1, no weight. `sqrt`: sqrt(legit / frauds). `scale_pos_weight`: the full
    ratio. `is_unbalance`: None here, LightGBM computes the full ratio itself.
    """
    ratio = legit / max(frauds, 1)
    if config.imbalance == "sqrt":
        return float(np.sqrt(ratio))
    if config.imbalance == "scale_pos_weight":
        return float(ratio)
    return None


def validation_length(length: pd.Timedelta, fraction: float) -> pd.Timedelta:
    """The validation slice's length: `fraction` of the period, whole days from 5 days on."""
    if length >= pd.Timedelta(days=5):
        return pd.Timedelta(days=max(1, round(fraction * length.days)))
    return length * fraction


def gap_length(length: pd.Timedelta, label_delay: pd.Timedelta, gap_fraction: float) -> pd.Timedelta:
    """The gap between the fit part and the validation slice: the label delay, at most
    `gap_fraction` of the period. From 5 days on, whole days: the delay rounded up, the cap down."""
    cap = length * gap_fraction
    if length >= pd.Timedelta(days=5):
        delay_days = math.ceil(label_delay / pd.Timedelta(days=1))
        return pd.Timedelta(days=max(0, min(delay_days, math.floor(cap / pd.Timedelta(days=1)))))
    return max(pd.Timedelta(0), min(pd.Timedelta(label_delay), cap))


def split_by_time(
    data: Dataset, fraction: float, gap: pd.Timedelta | timedelta = pd.Timedelta(0)
) -> tuple[Dataset, Dataset]:
    """(training, validation): validation is the last `fraction` of the period by time
    (`validation_length`); training ends `gap` before validation starts."""
    cut = data.end - validation_length(data.end - data.start, fraction)
    return data.between(data.start, cut - pd.Timedelta(gap)), data.between(cut, data.end)


def _check_slices(*parts: tuple[str, Dataset]) -> None:
    for name, part in parts:
        if part.frauds < MIN_FRAUDS or len(part) - part.frauds < 100:
            raise TrainingError(
                f"the {name} slice [{part.start:%Y-%m-%d %H:%M}, {part.end:%Y-%m-%d %H:%M}) has "
                f"{len(part):,} payments of which {part.frauds} frauds; at least {MIN_FRAUDS} frauds and 100 "
                "legitimate payments are needed: widen the training period (--train-start/--train-end)"
            )


def _progress_callback(progress: Progress, what: str, every: int = 25) -> Callable[[Any], None]:
    def callback(env: Any) -> None:  # lightgbm.callback.CallbackEnv
        if (env.iteration + 1) % every == 0:
            progress(f"{what}: {env.iteration + 1} trees")

    return callback


def _params(config: TrainConfig, data: Dataset) -> dict[str, Any]:
    return config.lgb_params(scale_pos_weight(config, len(data) - data.frauds, data.frauds))


def fit(
    train: Dataset,
    valid: Dataset,
    config: TrainConfig,
    feature_names: list[str],
    progress: Progress = no_progress,
) -> tuple[lgb.Booster, dict[str, Any]]:
    """A LightGBM booster trained on `train`, early-stopped on `valid`'s average precision; and
    its parameters. The returned booster holds exactly the trees up to the best iteration."""
    params = _params(config, train)
    client = active_client()
    if client is not None:  # `--dask`: lightgbm.dask on the cluster, the same stopping rule
        progress(f"choosing the number of trees on Dask: growing {config.max_trees}")
        stopping = config.early_stopping_rounds
        trees = dask_select(
            client, (train.X, train.y), (valid.X, valid.y), params, config.max_trees, stopping, feature_names
        )
        return trees, params
    dtrain = lgb.Dataset(train.X, train.y, feature_name=feature_names, free_raw_data=True)
    dvalid = lgb.Dataset(valid.X, valid.y, reference=dtrain)
    booster = lgb.train(
        {**params, "metric": "average_precision"},  # the stopping metric only: AUC each round costs time
        dtrain,
        num_boost_round=config.max_trees,
        valid_sets=[dvalid],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False),
            _progress_callback(progress, "choosing the number of trees"),
        ],
    )
    best = booster.best_iteration or booster.current_iteration()
    # keep only the validated trees: smaller to load and to score, and what the metrics describe
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return booster, params


def fit_trees(
    data: Dataset,
    config: TrainConfig,
    feature_names: list[str],
    num_trees: int,
    progress: Progress = no_progress,
    what: str = "training",
) -> lgb.Booster:
    """A LightGBM booster of exactly `num_trees` trees trained on all of `data` (on the active Dask
    cluster with `--dask`)."""
    client = active_client()
    if client is not None:
        progress(f"{what} on Dask: {num_trees} trees")
        return dask_trees(client, data.X, data.y, _params(config, data), num_trees, feature_names)
    dtrain = lgb.Dataset(data.X, data.y, feature_name=feature_names, free_raw_data=True)
    return lgb.train(
        _params(config, data),
        dtrain,
        num_boost_round=num_trees,
        callbacks=[_progress_callback(progress, what)],
    )


@dataclass(frozen=True)
class FittedModel:
    """What `fit_model` returns: the final model, its thresholds, and the out-of-sample evidence.

    `validation_scores` are the scores of the validation slice by a model with the same trees
    trained on the days before it (`validation_booster`); the thresholds were set on them.
    """

    booster: lgb.Booster  # the final model: trained on the whole period
    params: dict[str, Any]
    num_trees: int
    thresholds: dict[str, float]  # "review", "block"
    validation: Dataset
    validation_scores: np.ndarray
    logistic: LogisticBaseline  # fitted on the whole period, as the final model
    validation_booster: lgb.Booster  # trained on [start, validation start): scored the validation slice
    validation_logistic: LogisticBaseline  # fitted on the same days as validation_booster
    logistic_thresholds: dict[str, float]  # set on validation_logistic's validation scores
    baseline_thresholds: dict[str, float]  # rules-only, set on the validation slice
    fit_part: Dataset  # where the number of trees was chosen (the gap and validation come after)
    gap: pd.Timedelta
    refitted: bool  # False with `refit: false` in TRAIN.yaml: the final model is validation_booster


def fit_model(
    data: Dataset,
    cfg: TrainConfig,
    feature_names: list[str],
    label_delay: pd.Timedelta | timedelta,
    progress: Progress = no_progress,
) -> FittedModel:
    """Choose the number of trees out of time, set thresholds out of sample, refit on the whole
    period (the module docstring, steps 2-4). `antifraud train` and the prequential evaluation
    both train through here. Raises TrainingError when a slice has too few frauds."""
    length = data.end - data.start
    gap = gap_length(length, pd.Timedelta(label_delay), cfg.gap_fraction)
    fit_part, valid = split_by_time(data, cfg.validation_fraction, gap)
    before_valid = data.between(data.start, valid.start)
    _check_slices(("training", fit_part), ("validation", valid))
    progress(
        f"choosing the number of trees: training on {len(fit_part):,} payments ({fit_part.frauds:,} "
        f"frauds), validating on {len(valid):,} ({valid.frauds:,} frauds) after a gap of {_days(gap)}"
    )
    selector, params = fit(fit_part, valid, cfg, feature_names, progress)
    num_trees = selector.num_trees()
    X_valid = valid.X
    if gap > pd.Timedelta(0):
        progress(
            f"setting thresholds: {num_trees} trees on the {len(before_valid):,} payments before validation"
        )
        validator = fit_trees(before_valid, cfg, feature_names, num_trees, progress, "setting thresholds")
    else:  # no gap: the model that chose the trees was trained on exactly these days
        validator = selector
    scores = np.asarray(validator.predict(X_valid, num_threads=cfg.num_threads), dtype=float)
    thresholds = _thresholds_at(scores, valid.y, cfg)
    valid_logistic = LogisticBaseline.fit(before_valid.features, before_valid.y)
    logistic_thresholds = _thresholds_at(valid_logistic.predict(valid.features), valid.y, cfg)
    baseline_thresholds = _thresholds_at(baseline_scores(valid.features), valid.y, cfg)
    if cfg.refit:
        progress(f"refitting {num_trees} trees on all {len(data):,} payments of the period")
        booster = fit_trees(data, cfg, feature_names, num_trees, progress, "refitting")
        logistic = LogisticBaseline.fit(data.features, data.y)
    else:
        booster, logistic = validator, valid_logistic
    return FittedModel(
        booster=booster,
        params=params,
        num_trees=booster.num_trees(),
        thresholds=thresholds,
        validation=valid,
        validation_scores=scores,
        logistic=logistic,
        validation_booster=validator,
        validation_logistic=valid_logistic,
        logistic_thresholds=logistic_thresholds,
        baseline_thresholds=baseline_thresholds,
        fit_part=fit_part,
        gap=gap,
        refitted=cfg.refit,
    )


def _thresholds_at(scores: np.ndarray, labels: np.ndarray, cfg: TrainConfig) -> dict[str, float]:
    return {
        "review": threshold_at_fpr(scores, labels, cfg.review_fpr),
        "block": threshold_at_fpr(scores, labels, cfg.block_fpr),
    }


def _days(delta: pd.Timedelta) -> str:
    days = delta / pd.Timedelta(days=1)
    if days == round(days):
        return f"{days:.0f} day" + ("" if days == 1 else "s")
    return f"{delta / pd.Timedelta(hours=1):g} hours"


def _iso(value: pd.Timestamp) -> str:
    return value.isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------ the model directory


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to write over a non-empty directory (a model the service may be serving) unless
    `force`, and even then unless it holds a model: `--force` replaces a model directory, never a
    folder of other files. Refuse a path that is a file."""
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file, not a model directory; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    held = sorted(p.name for p in out.iterdir())
    listed = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
    if not force:
        raise TrainingError(
            f"--out {out} already holds {listed}: choose another directory, or pass --force to replace "
            "it (a running service reloads it)"
        )
    if not any((out / name).is_file() for name in (MODEL_FILE, METADATA_FILE)) or not out.resolve().name:
        raise TrainingError(
            f"--out {out} holds {listed} but no model ({MODEL_FILE}, {METADATA_FILE}): --force only "
            "replaces a model directory; choose another --out"
        )


def _install(staging: Path, out: Path) -> None:
    """Move the fully written `staging` directory to `out`, replacing what was there.

    Two renames on one filesystem: the old directory is moved aside, then the new one in. The
    service, which polls `out`, sees the old model or the new one, never a mix; in the instant
    between the renames it sees no directory, and a failed reload keeps the current model serving.
    """
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        staging.rename(out)
        return
    aside = out.with_name(f".{out.name}.replaced-{uuid.uuid4().hex[:8]}")
    out.rename(aside)
    try:
        staging.rename(out)
    except OSError:
        aside.rename(out)  # put the old model back rather than leave nothing
        raise
    shutil.rmtree(aside, ignore_errors=True)


@dataclass(frozen=True)
class TrainResult:
    """What `run_training` returns: the model (saved) and its validation assessment."""

    artifact: ModelArtifact
    validation: Assessment  # model, logistic and rules-only on the validation slice, out of sample
    warnings: list[str]  # training.checks.data_warnings: also in metadata["warnings"]


def train(
    history: Path,
    train_start: date | str,
    train_end: date | str,
    out: Path,
    columns: Path | None = None,
    config: Path | None = None,
    progress: ProgressArg = None,
    spec: FeatureSpec | None = None,
    report: bool = True,
    label_delay: timedelta | None = None,
    force: bool = False,
) -> ModelArtifact:
    """Train a model on the payments in [train_start, train_end) and write its directory `out`.

    `out` receives model.txt, metadata.json, baseline_logistic.json and, with `report`, the
    validation report in `out/report/`. A non-empty `out` is refused unless `force` (it is then
    replaced whole once the new model is written). `label_delay`: when a fraud's label became
    known, for rows without `label_time` (None: 30 days). `progress` receives one line per step.
    Raises TrainingError (a ValueError) or HistoryError naming the file, column or date at fault.
    """
    return run_training(
        history, train_start, train_end, out, columns, config, progress, spec, report, label_delay, force
    ).artifact


def run_training(
    history: Path,
    train_start: date | str,
    train_end: date | str,
    out: Path,
    columns: Path | None = None,
    config: Path | None = None,
    progress: ProgressArg = None,
    spec: FeatureSpec | None = None,
    report: bool = True,
    label_delay: timedelta | None = None,
    force: bool = False,
) -> TrainResult:
    """`train`, returning the validation assessment and the data warnings too (for the CLI)."""
    started = time.perf_counter()
    s, e = check_period(train_start, train_end, "training period")
    cfg = load_config(config)
    check_out_dir(Path(out), force)
    out = Path(out).resolve()  # `--out .` has no name to put the staging directory next to
    step = as_progress(progress)
    spec = spec or load_spec()
    history = Path(history)
    step(f"reading {history}")
    rows = read_history(history, columns, require_label=True, label_delay=label_delay)
    delay = pd.Timedelta(rows.attrs["label_delay"])
    data = build_dataset(rows, s, e, spec, step, source=str(history))
    warnings = data_warnings(rows, data.features, delay, data.start, data.end)
    try:
        fitted = fit_model(data, cfg, spec.feature_names, delay, step)
    except TrainingError as exc:
        raise TrainingError(f"{history}: {exc}") from exc
    valid = fitted.validation
    metadata: dict[str, Any] = {
        "name": out.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": spec.feature_names,
        "spec_digest": spec.digest,
        "lightgbm_version": lgb.__version__,
        "python_version": platform.python_version(),
        "params": fitted.params,
        "best_iteration": fitted.num_trees,
        "num_trees": fitted.num_trees,
        "refitted": fitted.refitted,
        "data": {
            "history": str(history),
            "history_sha256": file_sha256(history),
            "columns": str(columns) if columns else None,
            "label_delay_seconds": delay.total_seconds(),
            "label_delay_given": bool(rows.attrs.get("label_delay_given", False)),
            "label_time_defaulted": int(rows.attrs.get("label_time_defaulted", 0)),
            "train_start": s.isoformat(),
            "train_end": e.isoformat(),
            "trees_chosen_on": [_iso(fitted.fit_part.start), _iso(fitted.fit_part.end)],
            "gap_seconds": fitted.gap.total_seconds(),
            "validation_start": _iso(valid.start),
            "validation_end": _iso(valid.end),
        },
        "counts": {
            "train": {"payments": len(data), "frauds": data.frauds},
            "trees_chosen_on": {"payments": len(fitted.fit_part), "frauds": fitted.fit_part.frauds},
            "validation": {"payments": len(valid), "frauds": valid.frauds},
        },
        "thresholds": {
            **fitted.thresholds,
            "review_fpr": cfg.review_fpr,
            "block_fpr": cfg.block_fpr,
            "rule": THRESHOLD_RULE,
        },
        "baseline_thresholds": fitted.baseline_thresholds,
        "logistic_thresholds": fitted.logistic_thresholds,
        "warnings": warnings,
        "config": cfg.as_dict(),
    }
    artifact = ModelArtifact(fitted.booster, metadata, logistic=fitted.logistic)
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        step("evaluating on the validation slice")
        # The report shows the model that set the thresholds, on days it had not seen: the final
        # model has learned the validation days, its scores there would flatter it.
        validator = ModelArtifact(
            fitted.validation_booster,
            {
                "name": f"{out.name} (validation model)",
                "features": spec.feature_names,
                "thresholds": fitted.thresholds,
            },
        )
        title = (
            f"Validation of {out.name} on [{valid.start:%Y-%m-%d}, {valid.end:%Y-%m-%d}): a model with the "
            f"same {fitted.num_trees} trees trained on the days before, scored out of sample"
        )
        metrics = assess(
            valid,
            fitted.validation_scores,
            validator,
            cfg,
            fitted.baseline_thresholds,
            staging / "report" if report else None,
            title,
            warnings,
            logistic=fitted.validation_logistic,
            logistic_thresholds=fitted.logistic_thresholds,
        )
        metadata["validation_metrics"] = _validation_summary(metrics)
        metadata["training_seconds"] = round(time.perf_counter() - started, 2)
        artifact.save(staging, name=out.name)
        # what the served model saw on its validation slice: `antifraud monitor` compares live
        # traffic with it (docs/monitoring.md)
        step("writing the reference profile")
        scores = artifact.predict(valid.X, num_threads=cfg.num_threads)
        reference_profile(str(artifact.metadata["version"]), valid, scores, fitted.thresholds).save(staging)
        _install(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    artifact.path = out
    step(f"wrote {out} ({artifact.version}, {fitted.num_trees} trees)")
    return TrainResult(artifact, metrics, warnings)


def _validation_summary(metrics: Assessment) -> dict[str, Any]:
    """The model's validation metrics (flat, as before) with the two baselines' headline figures."""
    keys = (
        "roc_auc",
        "average_precision",
        "card_precision_at_100",
        "recall_at_fpr_0.001",
        "recall_at_fpr_0.01",
        "realised_fpr",
    )
    summary: dict[str, Any] = {
        k: v for k, v in metrics["model"].items() if k not in ("verdicts", "thresholds")
    }
    for side in ("logistic", "baseline"):
        figures = metrics[side]
        summary[side] = {k: figures[k] for k in keys if k in figures}  # type: ignore[literal-required]
    return summary
