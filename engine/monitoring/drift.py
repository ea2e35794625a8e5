"""Drift of live traffic against a model's reference profile, and the thresholds that flag it.

The population stability index of a feature compares the shares of its non-missing values in the
reference's bins: PSI = sum over bins of (live - reference) x ln(live / reference). A bin empty on
either side would make the logarithm infinite, so every share is floored at `PSI_FLOOR` (0.0001)
first: an empty bin then weighs as if it held one value in ten thousand. Missing values are left
out of the PSI and followed on their own (`FeatureDrift.missing_now`): a client that stops sending a
field shows as a rise of its missing share, not as a change in the shape of what still arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

from antifraud.engine.monitoring.profile import Distribution, ReferenceProfile, as_values

#: features computed from the payment's time alone (features/spec.yaml)
CLOCK_FEATURES: Final = ("hour_of_day", "day_of_week")
#: the smallest share a bin is given in the PSI (docs/monitoring.md, "Population stability index")
PSI_FLOOR: Final = 1e-4


def psi(reference: Distribution, values: np.ndarray) -> float:
    """The population stability index of `values`' non-missing part against `reference`'s bins
    (the module docstring). 0.0 when either side has no non-missing value: there is no shape to
    compare, and the missing share says the rest."""
    counts, _ = reference.counts(values)
    total = counts.sum()
    if total == 0 or not reference.shares:
        return 0.0
    live = np.maximum(counts / total, PSI_FLOOR)
    expected = np.maximum(np.asarray(reference.shares, dtype=float), PSI_FLOOR)
    return float(np.sum((live - expected) * np.log(live / expected)))


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift over a period: its PSI and its missing share then and now."""

    feature: str
    psi: float
    missing_reference: float
    missing_now: float
    rows: int  # rows of the period
    present: int = 0  # of which non-missing (the rows the PSI is computed on)

    @property
    def missing_increase(self) -> float:
        """How much the missing share rose (negative when it fell)."""
        return self.missing_now - self.missing_reference


def feature_drift(profile: ReferenceProfile, features: Mapping[str, np.ndarray]) -> list[FeatureDrift]:
    """The drift of every profiled feature found in `features` (name -> one value per row, NaN or
    None missing), in the profile's feature order. A profiled feature absent from `features` is
    reported as missing on every row."""
    rows = max((len(v) for v in features.values()), default=0)
    drifts = []
    for name, reference in profile.features.items():
        values = as_values(features[name]) if name in features else np.full(rows, np.nan)
        counts, missing = reference.counts(values)
        drifts.append(
            FeatureDrift(
                feature=name,
                psi=psi(reference, values),
                missing_reference=reference.missing,
                missing_now=missing / values.size if values.size else 0.0,
                rows=int(values.size),
                present=int(counts.sum()),
            )
        )
    return drifts


def measured(
    degraded: np.ndarray, model_versions: np.ndarray, scores: np.ndarray, model_version: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Which decisions the drift is measured on, as two masks: the feature drift's (answered with
    every signal) and the score drift's (of those, the ones scored by `model_version`, the reference
    profile's model). A degraded answer's stateful features are missing by design, and the degraded
    share already counts it; another model's scores are not comparable with this model's reference.
    The verdict mix and the degraded share count every decision.

    `degraded`: bool per decision; `model_versions`: the model that scored each (None: none);
    `scores`: float, NaN where no model scored."""
    features = ~np.asarray(degraded, dtype=bool)
    same = (
        np.asarray(np.asarray(model_versions, dtype=object) == model_version, dtype=bool)
        if model_version is not None
        else np.zeros(features.size, dtype=bool)
    )
    return features, features & same & ~np.isnan(np.asarray(scores, dtype=float))


def score_drift(profile: ReferenceProfile, scores: np.ndarray) -> float:
    """The PSI of the model's scores against the reference's score distribution."""
    return psi(profile.score, scores)


def verdict_mix(verdicts: Sequence[str]) -> dict[str, float]:
    """The share of each verdict among `verdicts` (only the verdicts that occur)."""
    names, counts = np.unique(np.asarray(verdicts, dtype=str), return_counts=True)
    total = counts.sum()
    return {str(n): float(c / total) for n, c in zip(names, counts, strict=True)} if total else {}


def verdict_shift(reference: Mapping[str, float], now: Mapping[str, float]) -> dict[str, float]:
    """The change of each verdict's share (now - reference), for every verdict on either side."""
    return {v: now.get(v, 0.0) - reference.get(v, 0.0) for v in sorted(set(reference) | set(now))}


class ThresholdsError(ValueError):
    """A thresholds YAML that cannot be used (unknown key, a value of the wrong type)."""


@dataclass(frozen=True)
class Thresholds:
    """When a figure is flagged (defaults documented in docs/monitoring.md); loadable from YAML."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    missing_increase: float = 0.10  # absolute rise of a feature's missing share
    score_psi_alert: float = 0.25
    verdict_shift: float = 0.05  # absolute change of a verdict's share
    degraded_share: float = 0.01
    skew_share: float = 0.01  # online/offline mismatch share per feature
    min_rows: int = 500  # below this, nothing is flagged, and the report says why
    # live performance of a week against the model's validation figures (out of sample), judged only
    # once the week's labels are mature enough and its frauds numerous enough: a young or thin week's
    # recall and AP move by chance
    recall_drop_warn: float = 0.10  # absolute drop of recall at the review threshold
    recall_drop_alert: float = 0.20
    ap_drop_warn: float = 0.10  # relative drop of average precision (0.2: a fifth lower)
    ap_drop_alert: float = 0.20
    fpr_rise_warn: float = 0.01  # absolute rise of the realised false-positive rate (review or block)
    fpr_rise_alert: float = 0.02
    performance_min_maturity: float = 0.8  # share of the week's payments older than the label delay
    performance_min_frauds: int = 20  # frauds labelled in the week
    #: features never flagged (their figures are still reported): the clock's own features, whose mix
    #: over a period shorter than their cycle (a day, a week) differs from the reference by construction
    ignore: tuple[str, ...] = CLOCK_FEATURES

    @classmethod
    def load(cls, path: Path | None) -> Thresholds:
        """The defaults overridden by the keys of a YAML mapping at `path` (None: the defaults).
        ThresholdsError names the file and the key at fault."""
        if path is None:
            return cls()
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ThresholdsError(f"{path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ThresholdsError(f"{path}: expected a mapping such as `psi_alert: 0.25`")
        fields = [f.name for f in dataclasses.fields(cls)]
        values: dict[str, Any] = {}  # each value checked against its field by _checked
        for key, value in data.items():
            if key not in fields:
                raise ThresholdsError(f"{path}: unknown threshold {key!r}; known: {', '.join(fields)}")
            values[key] = _checked(path, key, value)
        return dataclasses.replace(cls(), **values)


#: thresholds that count rows (whole numbers), and those that are shares or relative changes (<= 1)
_COUNTS: Final = ("min_rows", "performance_min_frauds")
_SHARES: Final = ("performance_min_maturity", "ap_drop_warn", "ap_drop_alert")


def _checked(path: Path, key: str, value: object) -> object:
    """A threshold's value from YAML as its field's type; ThresholdsError when it is not one."""
    if key == "ignore":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ThresholdsError(f"{path}: ignore must be a list of feature names, not {value!r}")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ThresholdsError(f"{path}: {key} must be a number >= 0, not {value!r}")
    if key in _SHARES and value > 1:
        raise ThresholdsError(f"{path}: {key} is a share, between 0 and 1, not {value!r}")
    if key in _COUNTS:
        if value != int(value):
            raise ThresholdsError(f"{path}: {key} must be a whole number, not {value!r}")
        return int(value)
    return float(value)
