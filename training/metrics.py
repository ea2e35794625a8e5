"""The evaluation metrics, and the typed records that carry them (docs/training.md defines each).

ROC AUC, average precision, card precision@k per day, recall at 0.1 % and 1 % false-positive rate,
the false-positive rate actually reached at a score's thresholds, the verdict mix and the expected
cost

    cost = amount of fraud allowed + review_cost x payments reviewed
           + challenge_cost x payments challenged
           + block_cost_factor x amount of legitimate payments blocked

(a reviewed fraud is assumed caught, a challenged fraud stopped by the second factor the fraudster
lacks, a blocked fraud costs nothing).

The records are TypedDicts rather than dataclasses so that metrics.json is the record itself,
with no conversion step to keep in sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NotRequired, TypedDict

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from antifraud.engine.costs import CostParameters, expected_cost, verdict_mix
from antifraud.training.config import TrainConfig, TrainingError
from antifraud.training.scoring import verdicts

FPR_TARGETS = (0.001, 0.01)
# Card precision@100 is the literature's standard (what ~100 investigations a day find); it is
# always reported under that name, and `card_precision_at_k` holds the configured k's value too.
STANDARD_K = 100
# The three scores every evaluation shows, in display order, with their display names.
SIDES: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("logistic", "logistic"),
    ("baseline", "rules-only"),
)


class Thresholds(TypedDict):
    """Score thresholds: review or block at score >= review, block at score >= block."""

    review: float
    block: float


class RealisedFpr(TypedDict):
    """Share of legitimate payments scoring at or above each threshold (what was aimed at: the config)."""

    review: float
    block: float


class CostOptimum(TypedDict):
    """The single block threshold (no review) of lowest cost, and that cost."""

    threshold: float
    cost: float


# Functional syntax: the recall keys contain dots.
SideMetrics = TypedDict(
    "SideMetrics",
    {
        "roc_auc": float,
        "average_precision": float,
        "card_precision_at_100": float,
        "card_precision_at_k": float,
        "precision_k": int,
        "recall_at_fpr_0.001": float,
        "recall_at_fpr_0.01": float,
        "thresholds": Thresholds,
        "realised_fpr": RealisedFpr,
        "verdicts": dict[str, dict[str, float]],  # verdict_mix
        "cost": dict[str, float],  # expected_cost
        "cost_optimal_block_threshold": CostOptimum,
    },
)
# The scalar metrics, in the order headline tables show them.
HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("roc_auc", "ROC AUC"),
    ("average_precision", "average precision"),
    ("card_precision_at_100", "card precision@100"),
    ("recall_at_fpr_0.001", "recall at 0.1 % FPR"),
    ("recall_at_fpr_0.01", "recall at 1 % FPR"),
)


class Period(TypedDict):
    """[start, end) as ISO dates (or times when not at midnight UTC)."""

    start: str
    end: str


class Counts(TypedDict):
    """Rows, frauds, fraud rate, fraud amount and cards of a period."""

    payments: int
    frauds: int
    fraud_rate: float
    fraud_amount: float
    cards: int


class Assessment(TypedDict):
    """What `antifraud.training.evaluate.assess` returns and metrics.json holds: three scores on one
    period."""

    title: str
    period: Period
    model_version: str
    counts: Counts
    aimed_fpr: RealisedFpr
    model: SideMetrics
    logistic: SideMetrics
    baseline: SideMetrics
    cost_parameters: CostParameters
    warnings: list[str]
    history: NotRequired[str]  # the history file evaluated
    notes: NotRequired[list[str]]  # what `evaluate` reused from the model directory (column map, delay)


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


def thresholds_at(scores: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Thresholds:
    """Review and block thresholds at the configured false-positive rates (`threshold_at_fpr`)."""
    return {
        "review": threshold_at_fpr(scores, labels, config.review_fpr),
        "block": threshold_at_fpr(scores, labels, config.block_fpr),
    }


def realised_fpr(scores: np.ndarray, labels: np.ndarray, thresholds: Thresholds) -> RealisedFpr:
    """The false-positive rate each threshold actually reached on these payments.

    The share of legitimate payments scoring at or above `review` (reviewed or blocked) and at or
    above `block` (blocked): set on earlier data, a threshold aimed at 0.1 % may reach more or less.
    """
    legit = np.asarray(scores, dtype=float)[np.asarray(labels) == 0]
    if len(legit) == 0:
        raise TrainingError("no legitimate payments to measure a false-positive rate on")
    return {
        "review": float(np.mean(legit >= thresholds["review"])),
        "block": float(np.mean(legit >= thresholds["block"])),
    }


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


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    rows: pd.DataFrame,
    thresholds: Thresholds,
    config: TrainConfig,
) -> SideMetrics:
    """Every metric of the module docstring for one score vector over the payments in `rows`."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise TrainingError(
            "the period has payments of only one class (no fraud, or only fraud): "
            "ROC AUC and average precision need both; choose a longer or later period"
        )
    amounts = rows["amount"].to_numpy(dtype=float)
    verdict = verdicts(scores, {"review": thresholds["review"], "block": thresholds["block"]})
    cards, times = rows["card_id"].to_numpy(), rows["timestamp"]
    cp_k, _ = card_precision_at_k(labels, scores, cards, times, config.precision_k)
    cp_100 = (
        cp_k if config.precision_k == STANDARD_K else card_precision_at_k(labels, scores, cards, times)[0]
    )
    grid, cost = cost_curve(labels, scores, amounts, config)
    best = int(np.argmin(cost))
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "card_precision_at_100": cp_100,
        "card_precision_at_k": cp_k,
        "precision_k": config.precision_k,
        "recall_at_fpr_0.001": recall_at_fpr(labels, scores, 0.001),
        "recall_at_fpr_0.01": recall_at_fpr(labels, scores, 0.01),
        "thresholds": {"review": float(thresholds["review"]), "block": float(thresholds["block"])},
        "realised_fpr": realised_fpr(scores, labels, thresholds),
        "verdicts": verdict_mix(labels, verdict, amounts),
        "cost": expected_cost(labels, verdict, amounts, **config.cost_parameters()),
        "cost_optimal_block_threshold": {"threshold": float(grid[best]), "cost": float(cost[best])},
    }


def counts(rows: pd.DataFrame) -> Counts:
    """Rows, frauds, fraud rate and fraud amount of a period."""
    fraud = rows["label"].to_numpy() == 1
    return {
        "payments": len(rows),
        "frauds": int(fraud.sum()),
        "fraud_rate": float(fraud.mean()) if len(rows) else 0.0,
        "fraud_amount": float(rows["amount"].to_numpy(dtype=float)[fraud].sum()),
        "cards": int(rows["card_id"].nunique()),
    }


# ---------------------------------------------------------------------------------- prequential


class Spread(TypedDict):
    """Mean and standard deviation of one metric over folds (std 0 with a single fold)."""

    mean: float
    std: float


class SpreadFpr(TypedDict):
    """Realised false-positive rates at the review and block thresholds over folds."""

    review: Spread
    block: Spread


SideSummary = TypedDict(
    "SideSummary",
    {
        "roc_auc": Spread,
        "average_precision": Spread,
        "card_precision_at_100": Spread,
        "recall_at_fpr_0.001": Spread,
        "recall_at_fpr_0.01": Spread,
        "realised_fpr": SpreadFpr,
    },
)


class Removed(TypedDict):
    """Test payments left out because their card's fraud was already known before their day."""

    payments: int
    frauds: int
    cards: int


class FoldRecord(TypedDict):
    """One prequential fold: its periods, its test counts and the three scores' metrics."""

    index: int
    train: Period
    test: Period
    gap_days: int
    train_counts: Counts
    counts: Counts  # test payments kept (after removing known-compromised cards)
    removed: Removed
    num_trees: int
    late_labels: int  # training frauds whose label_time is at or after the test start
    model: SideMetrics
    logistic: SideMetrics
    baseline: SideMetrics


class PrequentialSettings(TypedDict):
    """The fold layout a prequential evaluation ran with."""

    train_days: int
    gap_days: int
    test_days: int
    folds: int
    end: str
    # the delay that filled missing label times or was given; None when every fraud had its own
    label_delay_days: float | None


class PrequentialMetrics(TypedDict):
    """metrics.json of `antifraud evaluate --protocol prequential`: per fold, then mean and std."""

    title: str
    protocol: str
    settings: PrequentialSettings
    aimed_fpr: RealisedFpr
    folds: list[FoldRecord]
    model: SideSummary
    logistic: SideSummary
    baseline: SideSummary
    cost_parameters: CostParameters
    warnings: list[str]
    notes: list[str]  # choices made for the user (the default gap)
    history: NotRequired[str]


def spread(values: list[float]) -> Spread:
    """Mean and (population) standard deviation of per-fold values."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std())}


def summarise(sides: list[SideMetrics]) -> SideSummary:
    """Mean and std over folds of one score's headline metrics."""
    return {
        "roc_auc": spread([m["roc_auc"] for m in sides]),
        "average_precision": spread([m["average_precision"] for m in sides]),
        "card_precision_at_100": spread([m["card_precision_at_100"] for m in sides]),
        "recall_at_fpr_0.001": spread([m["recall_at_fpr_0.001"] for m in sides]),
        "recall_at_fpr_0.01": spread([m["recall_at_fpr_0.01"] for m in sides]),
        "realised_fpr": {
            "review": spread([m["realised_fpr"]["review"] for m in sides]),
            "block": spread([m["realised_fpr"]["block"] for m in sides]),
        },
    }


# ---------------------------------------------------------------------------------- comparisons


def central(value: object) -> float | None:
    """A metric's value: the number itself, or the mean of a `Spread`; None when absent."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Mapping) and isinstance(value.get("mean"), int | float):
        return float(value["mean"])
    return None


def model_vs_logistic(metrics: Mapping[str, object]) -> str | None:
    """One plain sentence when the model does not beat the logistic baseline on average precision
    or card precision@100 (means over folds for a prequential result); None when it beats it on both.
    """
    model, logistic = metrics.get("model"), metrics.get("logistic")
    if not isinstance(model, Mapping) or not isinstance(logistic, Mapping):
        return None
    lost = []
    for key, label in (
        ("average_precision", "average precision"),
        ("card_precision_at_100", "card precision@100"),
    ):
        m, lo = central(model.get(key)), central(logistic.get(key))
        if m is not None and lo is not None and m <= lo:
            lost.append(f"{label} {m:.3f} vs {lo:.3f}")
    if not lost:
        return None
    return (
        f"The model does not beat the logistic baseline ({'; '.join(lost)}): on this data its extra "
        "complexity buys nothing; check the features and the label delay before trusting it."
    )
