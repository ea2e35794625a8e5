"""The two comparison points every evaluation shows next to the model.

- `baseline_scores`: a hand-written rules-only score ("what a fraud team writes first").
- `LogisticBaseline`: a logistic regression on a small standard feature set (amount, the card's
  recent count and mean amount, the merchant's and terminal's known-fraud share). It is the
  usual first model in the card-fraud literature: a LightGBM model that does not beat it is not
  worth its complexity.

`LogisticBaseline` is stored as plain JSON (`baseline_logistic.json` in a model directory):
feature names, imputation values, scaling and coefficients. Scoring needs only numpy, never a
pickle.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from antifraud.training.config import TrainingError

# ------------------------------------------------------------------------------------ rules-only

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


# ------------------------------------------------------------------------------------- logistic

LOGISTIC_FILE = "baseline_logistic.json"
LOGISTIC_FEATURES: tuple[str, ...] = (
    "amount",
    "card_count_24h",
    "card_count_7d",
    "card_count_30d",
    "card_mean_24h",
    "card_mean_7d",
    "card_mean_30d",
    "merchant_fraud_rate_1d",
    "merchant_fraud_rate_7d",
    "merchant_fraud_rate_30d",
    "terminal_fraud_rate_1d",
    "terminal_fraud_rate_7d",
    "terminal_fraud_rate_30d",
)
# Amounts and counts are heavy-tailed: on a log scale one large payment does not dominate the fit.
LOG1P_FEATURES = frozenset(n for n in LOGISTIC_FEATURES if n == "amount" or "_count_" in n or "_mean_" in n)
_FORMAT = "antifraud-logistic-baseline/1"


@dataclass(frozen=True)
class LogisticBaseline:
    """A fitted logistic regression on `features` (in this order), stored as plain numbers.

    Scoring a payment: take each feature (missing -> `impute`, the training median), log1p it if
    it is in `log1p`, standardise with `mean` / `scale`, then 1 / (1 + exp(-(coef . x + intercept))).
    """

    features: tuple[str, ...]
    log1p: tuple[str, ...]
    impute: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    C: float = 1.0

    @classmethod
    def fit(cls, features: pd.DataFrame, y: np.ndarray, C: float = 1.0) -> LogisticBaseline:
        """Fit on the `LOGISTIC_FEATURES` present in `features` (absent ones are skipped).

        `C` is scikit-learn's inverse regularisation strength (L2). Raises TrainingError when no
        feature of the set is present or `y` has a single class.
        """
        from sklearn.linear_model import LogisticRegression  # heavy import, only when fitting

        names = tuple(n for n in LOGISTIC_FEATURES if n in features.columns)
        if not names:
            raise TrainingError(
                "the logistic baseline found none of its features "
                f"({', '.join(LOGISTIC_FEATURES)}) in the feature frame; check the feature spec"
            )
        y = np.asarray(y)
        if len(y) != len(features):
            raise TrainingError(f"the logistic baseline got {len(features):,} rows but {len(y):,} labels")
        if len(np.unique(y)) < 2:
            raise TrainingError(
                "the logistic baseline needs both frauds and legitimate payments in its training rows; "
                "widen the training period"
            )
        raw = features[list(names)].to_numpy(dtype=float)
        with warnings.catch_warnings():  # a column missing on every row: nanmedian warns, gives NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(np.where(np.isfinite(raw), raw, np.nan), axis=0)
        impute = np.nan_to_num(medians, nan=0.0)  # a column missing on every row: 0, then scale 0 -> 1
        logged = tuple(n for n in names if n in LOG1P_FEATURES)
        x = _transform(raw, names, logged, impute)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        scale = np.where(std > 0, std, 1.0)
        model = LogisticRegression(C=C, max_iter=1000)
        model.fit((x - mean) / scale, y.astype(int))
        return cls(
            features=names,
            log1p=logged,
            impute=tuple(float(v) for v in impute),
            mean=tuple(float(v) for v in mean),
            scale=tuple(float(v) for v in scale),
            coef=tuple(float(v) for v in model.coef_[0]),
            intercept=float(model.intercept_[0]),
            C=float(C),
        )

    def missing(self, features: pd.DataFrame) -> list[str]:
        """The fitted features absent from `features` (predict imputes them: say so to the user)."""
        return [n for n in self.features if n not in features.columns]

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Fraud probabilities of the rows of `features`; a fitted feature absent from the frame
        counts as missing on every row (its training median)."""
        raw = np.empty((len(features), len(self.features)))
        for i, name in enumerate(self.features):
            raw[:, i] = features[name].to_numpy(dtype=float) if name in features.columns else np.nan
        x = (_transform(raw, self.features, self.log1p, np.asarray(self.impute)) - self.mean) / self.scale
        z = x @ np.asarray(self.coef, dtype=float) + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))), dtype=float)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-friendly dict; `from_dict` reads it back."""
        return {
            "format": _FORMAT,
            "features": list(self.features),
            "log1p": list(self.log1p),
            "impute": list(self.impute),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "C": self.C,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> LogisticBaseline:
        """The baseline `to_dict` wrote; TrainingError naming what is wrong otherwise."""
        if d.get("format") != _FORMAT:
            raise TrainingError(f"not a logistic baseline (format {d.get('format')!r}, expected {_FORMAT!r})")
        names = _strings(d, "features")
        n = len(names)
        values = {key: _numbers(d, key, n) for key in ("impute", "mean", "scale", "coef")}
        logged = _strings(d, "log1p")
        if not set(logged) <= set(names):
            raise TrainingError("logistic baseline: 'log1p' names features that are not in 'features'")
        intercept, c = d.get("intercept"), d.get("C", 1.0)
        if not isinstance(intercept, int | float) or not isinstance(c, int | float):
            raise TrainingError("logistic baseline: 'intercept' and 'C' must be numbers")
        if any(v == 0 for v in values["scale"]):
            raise TrainingError("logistic baseline: 'scale' must not contain 0")
        return cls(
            features=names,
            log1p=logged,
            impute=values["impute"],
            mean=values["mean"],
            scale=values["scale"],
            coef=values["coef"],
            intercept=float(intercept),
            C=float(c),
        )

    def save(self, path: Path) -> None:
        """Write the JSON file (`LOGISTIC_FILE` in a model directory)."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LogisticBaseline:
        """Read a file `save` wrote; TrainingError naming the file otherwise."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"{path}: cannot read the logistic baseline: {exc}") from exc
        if not isinstance(raw, dict):
            raise TrainingError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(raw)
        except TrainingError as exc:
            raise TrainingError(f"{path}: {exc}") from exc


def _transform(
    raw: np.ndarray, names: tuple[str, ...], logged: tuple[str, ...], impute: np.ndarray
) -> np.ndarray:
    """Impute missing (and infinite) values, then log1p the heavy-tailed columns."""
    x = np.where(np.isfinite(raw), raw, impute)
    for i, name in enumerate(names):
        if name in logged:
            x[:, i] = np.log1p(np.clip(x[:, i], 0.0, None))
    return x


def _strings(d: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = d.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TrainingError(f"logistic baseline: '{key}' must be a list of feature names")
    return tuple(value)


def _numbers(d: Mapping[str, object], key: str, n: int) -> tuple[float, ...]:
    value = d.get(key)
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)
    ):
        raise TrainingError(f"logistic baseline: '{key}' must be {n} finite numbers, one per feature")
    return tuple(float(v) for v in value)
