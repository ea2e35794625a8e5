"""A model's reference profile: what its inputs and scores looked like on the validation slice.

Each feature (and the score) is summarised by a `Distribution`: the share of missing values and the
shares of the non-missing values in quantile bins. Bins are right-closed: bin i holds the values v
with edges[i-1] < v <= edges[i] (the first bin everything up to edges[0], the last everything above
the last edge), so a point mass such as "0 payments in the last hour" fills one bin whole instead of
leaving an empty one below it. Training writes the profile as `<model dir>/reference.json`
(`ReferenceProfile.save`); the monitor and the service read it back (`ReferenceProfile.load`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from antifraud.engine.files import atomic_write

REFERENCE_FILE: Final = "reference.json"
#: the layout of reference.json; a file of another version is refused rather than misread
FORMAT_VERSION: Final = 1


class ProfileError(ValueError):
    """A reference.json that cannot be read (broken JSON, another format version, bad fields)."""


def as_values(values: np.ndarray | Sequence[float | None]) -> np.ndarray:
    """`values` as a flat float array; None (a feature missing in a decision's JSON) becomes NaN."""
    array = np.asarray(values)
    if array.dtype == object:
        array = np.array([np.nan if v is None else float(v) for v in array.ravel()], dtype=float)
    return np.asarray(array, dtype=float).ravel()


@dataclass(frozen=True)
class Distribution:
    """A feature's (or the score's) reference distribution: quantile bins of its non-missing values."""

    edges: tuple[float, ...]  # inner bin edges, ascending, deduplicated (len = bins - 1)
    shares: tuple[float, ...]  # share of the reference's non-missing values per bin (len = bins)
    missing: float  # share of reference rows where the value is missing (NaN/None)

    def counts(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """Per-bin counts of the non-missing `values` (right-closed bins, the module docstring) and
        how many are missing (NaN)."""
        array = as_values(values)
        present = ~np.isnan(array)
        bins = np.searchsorted(np.asarray(self.edges, dtype=float), array[present], side="left")
        return np.bincount(bins, minlength=len(self.shares)), int(array.size - present.sum())

    @classmethod
    def of(cls, values: np.ndarray, bins: int = 10) -> Distribution:
        """The distribution of `values`: edges at the 1/bins .. (bins-1)/bins quantiles of the
        non-missing values (repeated quantiles merged), the shares of each bin, the missing share.
        With no non-missing value there is no bin: only the missing share (1.0) is known."""
        array = as_values(values)
        present = array[~np.isnan(array)]
        missing = float(1 - present.size / array.size) if array.size else 0.0
        if present.size == 0:
            return cls((), (), missing)
        quantiles = np.quantile(present, np.arange(1, bins) / bins, method="inverted_cdf")
        edges = tuple(float(e) for e in np.unique(quantiles[np.isfinite(quantiles)]))
        reference = cls(edges, (0.0,) * (len(edges) + 1), missing)
        counts, _ = reference.counts(present)
        return cls(edges, tuple(float(c) for c in counts / present.size), missing)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (floats are written with repr, so they read back exactly)."""
        return {"edges": list(self.edges), "shares": list(self.shares), "missing": self.missing}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        """The inverse of `to_dict`; ProfileError when the bins do not fit the edges."""
        edges = tuple(float(e) for e in data["edges"])
        shares = tuple(float(s) for s in data["shares"])
        if shares and len(shares) != len(edges) + 1:
            raise ProfileError(f"{len(edges)} edges need {len(edges) + 1} shares, found {len(shares)}")
        if list(edges) != sorted(set(edges)):
            raise ProfileError("bin edges must be strictly ascending")
        return cls(edges, shares, float(data["missing"]))


@dataclass(frozen=True)
class ReferenceProfile:
    """What a model saw on its validation slice: per-feature and score distributions, verdict mix."""

    model_version: str
    rows: int  # reference rows (the validation slice)
    period: tuple[str, str]  # ISO dates of the slice, [start, end)
    features: dict[str, Distribution]  # by feature name (features.spec names)
    score: Distribution
    verdicts: dict[str, float]  # verdict mix on the slice under the model's thresholds (may be {})

    def to_dict(self) -> dict[str, Any]:
        """The JSON document written to reference.json."""
        return {
            "format": FORMAT_VERSION,
            "model_version": self.model_version,
            "rows": self.rows,
            "period": list(self.period),
            "score": self.score.to_dict(),
            "verdicts": dict(self.verdicts),
            "features": {name: d.to_dict() for name, d in self.features.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """The inverse of `to_dict`; ProfileError for another format version or a missing field."""
        if data.get("format") != FORMAT_VERSION:
            raise ProfileError(f"format {data.get('format')!r}, expected {FORMAT_VERSION}")
        try:
            start, end = (str(d) for d in data["period"])
            return cls(
                model_version=str(data["model_version"]),
                rows=int(data["rows"]),
                period=(start, end),
                features={str(k): Distribution.from_dict(v) for k, v in data["features"].items()},
                score=Distribution.from_dict(data["score"]),
                verdicts={str(k): float(v) for k, v in (data.get("verdicts") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"bad reference profile: {exc}") from exc

    def save(self, model_dir: Path) -> Path:
        """Write `model_dir / reference.json` atomically (the service polls model directories)."""
        path = Path(model_dir) / REFERENCE_FILE
        atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> ReferenceProfile | None:
        """The profile in `model_dir / reference.json`; None when the file is absent (a model trained
        before profiles existed). ProfileError (naming the file) when it cannot be read."""
        path = Path(model_dir) / REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, ProfileError) as exc:
            raise ProfileError(f"{path}: {exc}") from exc


def build_profile(
    model_version: str,
    period: tuple[str, str],
    features: Mapping[str, np.ndarray],
    scores: np.ndarray,
    verdicts: Mapping[str, float] | None = None,
    bins: int = 10,
) -> ReferenceProfile:
    """The reference profile of a slice: `features` (name -> one value per row, NaN missing), the
    model's `scores` of the same rows, and the verdict mix under the model's thresholds."""
    score_values = as_values(scores)
    for name, values in features.items():
        if len(values) != score_values.size:
            raise ValueError(f"feature {name} has {len(values)} values for {score_values.size} scores")
    return ReferenceProfile(
        model_version=model_version,
        rows=int(score_values.size),
        period=period,
        features={name: Distribution.of(values, bins) for name, values in features.items()},
        score=Distribution.of(score_values, bins),
        verdicts=dict(verdicts or {}),
    )
