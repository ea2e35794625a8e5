"""Train a LightGBM fraud model on a date range of a history file: `antifraud train`.

1. Features are computed point-in-time over the whole file up to `train_end` (a payment on the
   first training day still sees its card's previous 30 days).
2. The payments in [train_start, train_end) are split *by time*: the last `validation_fraction` of
   the period (whole days when the period is at least 5 days) is the validation slice. A random
   split would let the model see tomorrow's fraud rings while being validated on today's.
3. LightGBM trains on the earlier part and stops early on the validation slice's average precision.
   The model kept is the one validated: it is not refitted on the validation days, so the
   thresholds set on them are honest for it.
4. Thresholds: `block` lets at most `block_fpr` (0.1%) of legitimate validation payments through
   to a block, `review` at most `review_fpr` (1%) to review or block.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.spec import FeatureSpec, load_spec
from training.baselines import baseline_scores
from training.config import TrainConfig, TrainingError, load_config
from training.dataset import (
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
from training.evaluate import assess
from training.metrics import threshold_at_fpr
from training.model_artifact import ModelArtifact

MIN_FRAUDS = 5  # below this in either slice, early stopping and thresholds are noise


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


def split_by_time(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """(training, validation): validation is the last `fraction` of the period by time."""
    length = data.end - data.start
    if length >= pd.Timedelta(days=5):
        days = max(1, round(fraction * length.days))
        cut = data.end - pd.Timedelta(days=days)
    else:
        cut = data.start + length * (1 - fraction)
    return data.between(data.start, cut), data.between(cut, data.end)


def _check_slices(train: Dataset, valid: Dataset, history: Path) -> None:
    for name, part in (("training", train), ("validation", valid)):
        if part.frauds < MIN_FRAUDS or len(part) - part.frauds < 100:
            raise TrainingError(
                f"{history}: the {name} slice [{part.start:%Y-%m-%d %H:%M}, {part.end:%Y-%m-%d %H:%M}) has "
                f"{len(part):,} payments of which {part.frauds} frauds; at least {MIN_FRAUDS} frauds and 100 "
                "legitimate payments are needed: widen --train-start/--train-end"
            )


def _progress_callback(progress: Progress, every: int = 25) -> Callable[[Any], None]:
    def callback(env: Any) -> None:  # lightgbm.callback.CallbackEnv
        if (env.iteration + 1) % every == 0:
            progress(f"training: {env.iteration + 1} trees")

    return callback


def fit(
    train: Dataset,
    valid: Dataset,
    config: TrainConfig,
    feature_names: list[str],
    progress: Progress = no_progress,
) -> tuple[lgb.Booster, dict[str, Any]]:
    """A LightGBM booster trained on `train`, early-stopped on `valid`; and its parameters.

    The returned booster holds exactly the trees up to the best iteration.
    """
    legit, frauds = len(train) - train.frauds, train.frauds
    params = config.lgb_params(scale_pos_weight(config, legit, frauds))
    dtrain = lgb.Dataset(train.X, train.y, feature_name=feature_names, free_raw_data=True)
    dvalid = lgb.Dataset(valid.X, valid.y, reference=dtrain)
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=config.max_trees,
        valid_sets=[dvalid],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False),
            _progress_callback(progress),
        ],
    )
    best = booster.best_iteration or booster.current_iteration()
    # keep only the validated trees: smaller to load and to score, and what the metrics describe
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return booster, params


def _iso(value: pd.Timestamp) -> str:
    return value.isoformat().replace("+00:00", "Z")


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
) -> ModelArtifact:
    """Train a model on the payments in [train_start, train_end) and write its directory `out`.

    `out` receives model.txt, metadata.json and, with `report`, the validation report in
    `out/report/`. `progress` receives one line per step. Raises TrainingError (a ValueError) or
    HistoryError naming the file, column or date at fault.
    """
    started = time.perf_counter()
    s, e = check_period(train_start, train_end, "training period")
    cfg = load_config(config)
    step = as_progress(progress)
    spec = spec or load_spec()
    history = Path(history)
    step(f"reading {history}")
    rows = read_history(history, columns, require_label=True)
    data = build_dataset(rows, s, e, spec, step, source=str(history))
    train_part, valid_part = split_by_time(data, cfg.validation_fraction)
    _check_slices(train_part, valid_part, history)
    step(
        f"training on {len(train_part):,} payments ({train_part.frauds:,} frauds), "
        f"validating on {len(valid_part):,} ({valid_part.frauds:,} frauds)"
    )
    booster, params = fit(train_part, valid_part, cfg, spec.feature_names, step)

    valid_scores = np.asarray(booster.predict(valid_part.X, num_threads=cfg.num_threads), dtype=float)
    thresholds = {
        "review": threshold_at_fpr(valid_scores, valid_part.y, cfg.review_fpr),
        "block": threshold_at_fpr(valid_scores, valid_part.y, cfg.block_fpr),
    }
    base = baseline_scores(valid_part.features)
    base_thresholds = {
        "review": threshold_at_fpr(base, valid_part.y, cfg.review_fpr),
        "block": threshold_at_fpr(base, valid_part.y, cfg.block_fpr),
    }
    metadata: dict[str, Any] = {
        "name": out.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": spec.feature_names,
        "spec_digest": spec.digest,
        "lightgbm_version": lgb.__version__,
        "python_version": platform.python_version(),
        "params": params,
        "best_iteration": booster.current_iteration(),
        "num_trees": booster.num_trees(),
        "data": {
            "history": str(history),
            "history_sha256": file_sha256(history),
            "columns": str(columns) if columns else None,
            "train_start": s.isoformat(),
            "train_end": e.isoformat(),
            "validation_start": _iso(valid_part.start),
            "validation_end": _iso(valid_part.end),
        },
        "counts": {
            "train": {"payments": len(train_part), "frauds": train_part.frauds},
            "validation": {"payments": len(valid_part), "frauds": valid_part.frauds},
        },
        "thresholds": {
            **thresholds,
            "review_fpr": cfg.review_fpr,
            "block_fpr": cfg.block_fpr,
            "rule": "lowest score at which at most <fpr> of the legitimate validation payments score at or "
            "above it; verdict block if score >= block, review if score >= review, else allow",
        },
        "baseline_thresholds": base_thresholds,
        "config": cfg.as_dict(),
    }
    artifact = ModelArtifact(booster, metadata)
    step("evaluating on the validation slice")
    title = f"Validation of {out.name} on [{valid_part.start:%Y-%m-%d}, {valid_part.end:%Y-%m-%d})"
    metrics = assess(
        valid_part, valid_scores, artifact, cfg, base_thresholds, out / "report" if report else None, title
    )
    metadata["validation_metrics"] = {
        k: v for k, v in metrics["model"].items() if k not in ("verdicts", "thresholds")
    }
    base_metrics = metrics["baseline"]
    metadata["validation_metrics"]["baseline"] = {
        "roc_auc": base_metrics["roc_auc"],
        "average_precision": base_metrics["average_precision"],
        "recall_at_fpr_0.01": base_metrics["recall_at_fpr_0.01"],
    }
    metadata["training_seconds"] = round(time.perf_counter() - started, 2)
    artifact.save(out)
    step(f"wrote {out} ({artifact.version}, {booster.num_trees()} trees)")
    return artifact
