"""Honest, time-based evaluation: `antifraud evaluate` on a period after the training period.

Metrics (docs/training.md defines each): ROC AUC, average precision, card precision@k per day,
recall at 0.1% and 1% false-positive rate, the verdict mix at the model's thresholds and the
expected cost

    cost = amount of fraud allowed + review_cost x payments reviewed
           + block_cost_factor x amount of legitimate payments blocked

(a reviewed fraud is assumed caught, a blocked fraud costs nothing). The same metrics are computed
for `baseline_scores`, a hand-written rules-only score, as the point of comparison.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from training.config import TrainConfig, TrainingError, load_config
from training.dataset import Dataset, ProgressArg, as_progress, build_dataset, check_period, read_history
from training.model_artifact import ModelArtifact
from training.report import write_report
from training.scoring import VERDICTS, verdicts

FPR_TARGETS = (0.001, 0.01)

# The rules-only baseline: (feature, threshold, points). A payment scores the points of every
# condition `feature >= threshold` it meets; a missing feature meets none. These mirror what a
# fraud team writes first: velocity, country mismatch, amount far above the card's habit, fresh
# devices and cards, and cards or merchants already hit by fraud.
BASELINE_RULES: tuple[tuple[str, float, float], ...] = (
    ("card_count_10m", 2, 1.0),
    ("card_count_1h", 3, 2.0),
    ("card_count_24h", 8, 1.0),
    ("card_distinct_merchants_1h", 3, 1.0),
    ("card_distinct_countries_24h", 2, 1.0),
    ("ip_card_country_mismatch", 1, 2.0),
    ("card_amount_to_mean_30d", 3, 2.0),
    ("card_amount_zscore_30d", 3, 1.0),
    ("card_new_device", 1, 1.0),
    ("card_new_country", 1, 1.0),
    ("card_frauds_30d", 1, 3.0),
    ("card_declines_24h", 2, 1.0),
    ("ip_distinct_cards_24h", 3, 2.0),
    ("device_distinct_cards_24h", 3, 2.0),
    ("merchant_fraud_rate_30d", 0.05, 1.0),
)


def baseline_scores(features: pd.DataFrame) -> np.ndarray:
    """A rules-only score in [0, 1]: the comparison point for the model ("model vs rules-only").

    The share of `BASELINE_RULES` points a payment collects, plus a tie-breaker below one point
    that grows with the amount relative to the card's habit, so that payments with equal points are
    not ranked at random. Rules whose feature is absent from the spec are skipped.
    """
    total = np.zeros(len(features))
    available = 0.0
    for name, threshold, points in BASELINE_RULES:
        if name in features:
            values = features[name].to_numpy(dtype=float)
            total += points * np.nan_to_num(values >= threshold, nan=0.0)
            available += points
    if "card_amount_to_mean_30d" in features:
        ratio = np.nan_to_num(features["card_amount_to_mean_30d"].to_numpy(dtype=float), nan=1.0)
        total += 0.5 * (1 - 1 / (1 + np.clip(ratio, 0, None)))  # in [0, 0.5)
    return total / max(available + 0.5, 1.0)


# ----------------------------------------------------------------------------------------- metrics


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The lowest score at which at most `fpr` of the legitimate payments score at or above it.

    With n legitimate payments, k = floor(fpr x n) of them may be flagged: the threshold is just
    above the (k+1)-th highest legitimate score. Payments with score >= threshold are flagged.
    """
    legit = np.sort(np.asarray(scores, dtype=float)[np.asarray(labels) == 0])[::-1]
    if len(legit) == 0:
        raise TrainingError("no legitimate payments to set a threshold on")
    k = int(np.floor(fpr * len(legit)))
    if k >= len(legit):
        return float(legit[-1])
    return float(np.nextafter(legit[k], np.inf))


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Share of frauds caught at the best threshold whose false-positive rate is at most `fpr`."""
    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr].max())


def card_precision_at_k(
    labels: np.ndarray, scores: np.ndarray, cards: np.ndarray, timestamps: pd.Series, k: int = 100
) -> tuple[float, list[float]]:
    """Card precision@k averaged over days, and the value of each day.

    Each UTC day, cards are ranked by their highest score that day; of the top k (all cards when a
    day has fewer), the share that had at least one fraudulent payment that day. This is what a
    team of investigators checking k cards a day would find.
    """
    frame = pd.DataFrame(
        {
            "day": pd.to_datetime(timestamps, utc=True).dt.floor("D").to_numpy(),
            "card": np.asarray(cards),
            "score": np.asarray(scores, dtype=float),
            "label": np.asarray(labels, dtype=float),
        }
    )
    per_card = frame.groupby(["day", "card"], sort=False).agg(score=("score", "max"), label=("label", "max"))
    per_card = per_card.reset_index().sort_values(["day", "score"], ascending=[True, False], kind="stable")
    top = per_card.groupby("day", sort=True).head(k)
    daily = top.groupby("day", sort=True)["label"].mean()
    return float(daily.mean()), [float(v) for v in daily.to_numpy()]


def expected_cost(
    labels: np.ndarray, verdict: np.ndarray, amounts: np.ndarray, review_cost: float, block_cost_factor: float
) -> dict[str, float]:
    """The cost formula of the module docstring, with its three parts."""
    fraud = np.asarray(labels) == 1
    amounts = np.asarray(amounts, dtype=float)
    missed = float(amounts[fraud & (verdict == "allow")].sum())
    reviews = float(review_cost * (verdict == "review").sum())
    blocked_good = float(block_cost_factor * amounts[~fraud & (verdict == "block")].sum())
    return {
        "total": missed + reviews + blocked_good,
        "fraud_allowed": missed,
        "reviews": reviews,
        "legit_blocked": blocked_good,
        "allow_everything": float(amounts[fraud].sum()),
    }


def cost_curve(
    labels: np.ndarray, scores: np.ndarray, amounts: np.ndarray, config: TrainConfig, points: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Cost when every payment scoring >= t is blocked (no review), for a grid of thresholds t."""
    scores = np.asarray(scores, dtype=float)
    # scores crowd near 0: a log-spaced grid plus score quantiles resolves both ends
    grid = np.unique(
        np.r_[np.geomspace(1e-5, 1.0, points), np.quantile(scores, np.linspace(0.5, 1.0, points))]
    )
    fraud = np.asarray(labels) == 1
    amounts = np.asarray(amounts, dtype=float)
    order = np.argsort(-scores, kind="stable")
    s, fr, am = scores[order], fraud[order], amounts[order]
    # cumulative sums over payments sorted by descending score: blocked set = a prefix
    good_blocked = np.r_[0.0, np.cumsum(np.where(fr, 0.0, am))]
    fraud_blocked = np.r_[0.0, np.cumsum(np.where(fr, am, 0.0))]
    n_blocked = np.searchsorted(-s, -grid, side="right")
    cost = (fraud_blocked[-1] - fraud_blocked[n_blocked]) + config.block_cost_factor * good_blocked[n_blocked]
    return grid, cost


def verdict_mix(labels: np.ndarray, verdict: np.ndarray, amounts: np.ndarray) -> dict[str, dict[str, float]]:
    """Per verdict: payments, their share, frauds among them and fraud amount."""
    fraud = np.asarray(labels) == 1
    amounts = np.asarray(amounts, dtype=float)
    mix = {}
    for v in VERDICTS:
        sel = verdict == v
        mix[v] = {
            "payments": int(sel.sum()),
            "share": float(sel.mean()) if len(sel) else 0.0,
            "frauds": int((sel & fraud).sum()),
            "fraud_amount": float(amounts[sel & fraud].sum()),
        }
    return mix


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    rows: pd.DataFrame,
    thresholds: dict[str, float],
    config: TrainConfig,
) -> dict[str, Any]:
    """Every metric of the module docstring for one score vector over the payments in `rows`."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise TrainingError(
            "the period has payments of only one class (no fraud, or only fraud): "
            "ROC AUC and average precision need both; choose a longer or later period"
        )
    amounts = rows["amount"].to_numpy(dtype=float)
    verdict = verdicts(scores, thresholds)
    cp, _ = card_precision_at_k(
        labels, scores, rows["card_id"].to_numpy(), rows["timestamp"], config.precision_k
    )
    grid, cost = cost_curve(labels, scores, amounts, config)
    best = int(np.argmin(cost))
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        f"card_precision_at_{config.precision_k}": cp,
        **{f"recall_at_fpr_{fpr:g}": recall_at_fpr(labels, scores, fpr) for fpr in FPR_TARGETS},
        "thresholds": dict(thresholds),
        "verdicts": verdict_mix(labels, verdict, amounts),
        "cost": expected_cost(labels, verdict, amounts, config.review_cost, config.block_cost_factor),
        "cost_optimal_block_threshold": {"threshold": float(grid[best]), "cost": float(cost[best])},
    }


def counts(rows: pd.DataFrame) -> dict[str, Any]:
    """Rows, frauds, fraud rate and fraud amount of a period."""
    fraud = rows["label"].to_numpy() == 1
    return {
        "payments": len(rows),
        "frauds": int(fraud.sum()),
        "fraud_rate": float(fraud.mean()) if len(rows) else 0.0,
        "fraud_amount": float(rows["amount"].to_numpy(dtype=float)[fraud].sum()),
        "cards": int(rows["card_id"].nunique()),
    }


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
    baseline_thresholds: dict[str, float] | None,
    out_dir: Path | None,
    title: str,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """Metrics of the model and of the rules-only baseline on one dataset; writes the report if asked.

    `baseline_thresholds` None: the baseline's thresholds are set on this very data (optimistic
    for the baseline, and said so in the warnings).
    """
    warnings = list(warnings or [])
    y = data.y
    if data.frauds in (0, len(data)):
        raise TrainingError(
            f"[{_when(data.start)}, {_when(data.end)}) has {len(data):,} payments and {data.frauds:,} "
            "frauds: the metrics need both frauds and legitimate payments; choose a longer period"
        )
    base = baseline_scores(data.features)
    if baseline_thresholds is None:
        baseline_thresholds = {
            "review": threshold_at_fpr(base, y, config.review_fpr),
            "block": threshold_at_fpr(base, y, config.block_fpr),
        }
        warnings.append("the baseline's thresholds were set on this period itself (optimistic for it)")
    metrics: dict[str, Any] = {
        "title": title,
        "period": {"start": _when(data.start), "end": _when(data.end)},
        "model_version": artifact.version,
        "counts": counts(data.rows),
        "model": compute_metrics(y, scores, data.rows, artifact.thresholds, config),
        "baseline": compute_metrics(y, base, data.rows, baseline_thresholds, config),
        "cost_parameters": {"review_cost": config.review_cost, "block_cost_factor": config.block_cost_factor},
        "warnings": warnings,
    }
    if out_dir is not None:
        write_outputs(out_dir, metrics, data, scores, artifact, config)
    return metrics


def _when(t: pd.Timestamp) -> str:
    """A date when the time is midnight UTC (the usual case), else the full ISO time."""
    return f"{t:%Y-%m-%d}" if t == t.normalize() else t.isoformat()


def write_outputs(
    out_dir: Path,
    metrics: dict[str, Any],
    data: Dataset,
    scores: np.ndarray,
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
        scores,
        baseline_scores(data.features),
        data.rows["amount"].to_numpy(dtype=float),
        importances(artifact)[: config.top_features],
        config,
    )


def config_of(artifact: ModelArtifact, config: Path | None) -> TrainConfig:
    """The evaluation settings: a given TRAIN.yaml, else those the model was trained with."""
    if config is not None:
        return load_config(config)
    recorded = artifact.metadata.get("config") or {}
    known = {f.name for f in fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in recorded.items() if k in known})
    except (TypeError, ValueError):
        return TrainConfig()


def evaluate(
    history: Path,
    model_dir: Path,
    start: date | str,
    end: date | str,
    out_dir: Path | None = None,
    columns: Path | None = None,
    config: Path | None = None,
    progress: ProgressArg = None,
) -> dict[str, Any]:
    """Metrics of a trained model on the payments in [start, end) of a labelled history.

    Writes metrics.json, the plots and report.md/report.html to `out_dir` when given. The
    rules-only baseline is held to the model's rule: its thresholds were set at train time on the
    same validation slice at the same false-positive rates (metadata `baseline_thresholds`).
    A period overlapping the training period is evaluated, with a warning in `warnings`.
    """
    s, e = check_period(start, end)
    step = as_progress(progress)
    artifact = ModelArtifact.load(model_dir)
    cfg = config_of(artifact, config)
    step(f"reading {history}")
    rows = read_history(history, columns, require_label=True)
    data = build_dataset(rows, s, e, progress=step, source=str(history))
    warnings: list[str] = []
    if overlap := artifact.training_overlap(s, e):
        warnings.append(
            f"the period overlaps the training period [{overlap[0]}, {overlap[1]}): these metrics are "
            "optimistic; evaluate on dates from the training end on"
        )
    step(f"scoring {len(data):,} payments with {artifact.version}")
    scores = artifact.predict(data.features[artifact.features].to_numpy(dtype=float))
    title = f"Evaluation of {artifact.version} on [{s}, {e})"
    metrics = assess(
        data, scores, artifact, cfg, artifact.metadata.get("baseline_thresholds"), None, title, warnings
    )
    metrics["history"] = str(history)
    if out_dir is not None:
        write_outputs(out_dir, metrics, data, scores, artifact, cfg)
        step(f"wrote {out_dir / 'report.md'}")
    return metrics
