"""Training settings (TRAIN.yaml): defaults that work without tuning, each overridable from YAML.

A TRAIN.yaml holds any subset of the fields of `TrainConfig`; `lightgbm:` holds extra LightGBM
parameters passed through as they are. Example::

    validation_fraction: 0.2
    gap_fraction: 0.25
    imbalance: none
    review_fpr: 0.01
    block_fpr: 0.001
    review_cost: 2.0
    block_cost_factor: 0.1
    lightgbm: {max_bin: 127}      # any other LightGBM parameter

docs/training.md explains every default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from antifraud.engine.costs import CostParameters

# Never more than two threads: training runs next to the scoring service on small machines.
MAX_THREADS = 2
IMBALANCE_MODES = ("none", "sqrt", "scale_pos_weight", "is_unbalance")


class TrainingError(ValueError):
    """A training, evaluation or scoring input is wrong; the message names the file, column or date."""


class ConfigError(TrainingError):
    """A TRAIN.yaml is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of train/evaluate/score, with its default.

    Trees and thresholds (training/train.py): the number of trees is chosen on the last
    `validation_fraction` of the period, after a gap of the label delay (at most `gap_fraction`
    of the period); `block` is the lowest score at which at most `block_fpr` of the legitimate
    validation payments would be blocked, `review` the same for `review_fpr`. With `refit` the
    final model is then trained on the whole period with that number of trees.
    Cost: missed fraud costs its amount, a review costs `review_cost`, a challenge (a second factor
    asked of the payer) `challenge_cost`, a blocked legitimate payment `block_cost_factor` x its amount.
    """

    validation_fraction: float = 0.2
    # The gap is the label delay, but never more than this share of the period: with the default
    # 30-day delay and a 40-day period, 10 days of gap still leave 22 days to choose the trees on.
    gap_fraction: float = 0.25
    # Refit on the whole period (the validation days included) once the trees and thresholds are
    # chosen: measured out of time (docs/training.md), average precision 0.97 instead of 0.93 on the
    # sample's following weeks; the latest days hold the newest fraud rings.
    refit: bool = True
    # No reweighting: measured out of time on simulated histories (docs/training.md), weighting
    # frauds by sqrt(legit/fraud) or by the full ratio lost 0.3 to 3 points of average precision on
    # the larger ones (within noise on the smallest), and skews scores away from probabilities
    # (the risk score is anchored on the thresholds, engine.verdicts.RiskScale).
    # Imbalance is handled by early stopping on average precision and by thresholds set at a
    # false-positive rate, not at 0.5.
    imbalance: str = "none"
    num_leaves: int = 31
    learning_rate: float = 0.05
    max_trees: int = 300
    early_stopping_rounds: int = 40
    min_child_samples: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    # One thread: on a 2-core machine shared with another busy process, LightGBM's two OpenMP
    # threads busy-wait on each other and training took 5x longer (16 s vs 3 s) than with one.
    num_threads: int = 1
    seed: int = 7
    review_fpr: float = 0.01
    block_fpr: float = 0.001
    review_cost: float = 2.0
    block_cost_factor: float = 0.1
    # the friction of a second factor: a share of good payers asked for one give up the purchase
    challenge_cost: float = 0.5
    precision_k: int = 100
    top_features: int = 20
    lightgbm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (0.05 <= self.validation_fraction <= 0.5, "validation_fraction must be in [0.05, 0.5]"),
            (0 <= self.gap_fraction <= 0.4, "gap_fraction must be in [0, 0.4]"),
            (self.imbalance in IMBALANCE_MODES, f"imbalance must be one of {', '.join(IMBALANCE_MODES)}"),
            (2 <= self.num_leaves <= 255, "num_leaves must be in [2, 255]"),
            (0 < self.learning_rate <= 1, "learning_rate must be in (0, 1]"),
            (1 <= self.max_trees <= 2000, "max_trees must be in [1, 2000]"),
            (self.early_stopping_rounds >= 1, "early_stopping_rounds must be >= 1"),
            (1 <= self.num_threads <= MAX_THREADS, f"num_threads must be 1 or {MAX_THREADS}"),
            (0 < self.block_fpr <= self.review_fpr < 1, "need 0 < block_fpr <= review_fpr < 1"),
            (self.review_cost >= 0, "review_cost must be >= 0"),
            (self.challenge_cost >= 0, "challenge_cost must be >= 0"),
            (self.block_cost_factor >= 0, "block_cost_factor must be >= 0"),
            (self.precision_k >= 1, "precision_k must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def cost_parameters(self) -> CostParameters:
        """The cost settings, as `metrics.expected_cost` takes them and reports record them."""
        return {
            "review_cost": self.review_cost,
            "block_cost_factor": self.block_cost_factor,
            "challenge_cost": self.challenge_cost,
        }

    def lgb_params(self, scale_pos_weight: float | None) -> dict[str, Any]:
        """LightGBM parameters for a binary model; `scale_pos_weight` from the imbalance rule."""
        params: dict[str, Any] = {
            "objective": "binary",
            "metric": ["average_precision", "auc"],
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        if self.imbalance == "is_unbalance":
            params["is_unbalance"] = True
        elif scale_pos_weight is not None:
            params["scale_pos_weight"] = scale_pos_weight
        params.update(self.lightgbm)
        if int(params.get("num_threads", 1)) > MAX_THREADS or int(params.get("num_threads", 1)) < 1:
            raise ConfigError(f"lightgbm.num_threads must be 1 or {MAX_THREADS}")
        return params

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for metadata.json)."""
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None) -> TrainConfig:
    """Read a TRAIN.yaml (None: the defaults); unknown keys are errors, not silently ignored."""
    if path is None:
        return TrainConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    if "lightgbm" in raw and not isinstance(raw["lightgbm"], dict):
        raise ConfigError(f"{path}: lightgbm must be a mapping of LightGBM parameters")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(TrainConfig(), name)
        # YAML reads 1 as int where a float is expected: accept numbers for numbers, nothing else
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
            raise ConfigError(f"{path}: {name} must be a {type(default).__name__}, got {value!r}")
        values[name] = value
    try:
        return TrainConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
