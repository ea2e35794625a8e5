"""A trained model as a directory: `model.txt` (LightGBM text format) + `metadata.json`.

Only LightGBM's text format is read: a model directory may come from anywhere, and unlike a
pickle the text format cannot run code when loaded. `engine/model.py` loads the same directory
for serving and names it with the same `version`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from features.spec import FeatureSpec, load_spec
from training.config import TrainingError

MODEL_FILE = "model.txt"
METADATA_FILE = "metadata.json"


class ArtifactError(TrainingError):
    """A model directory is missing, unreadable, inconsistent or built for another feature spec."""


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def feature_mismatch(model_features: list[str], spec_features: list[str]) -> str | None:
    """Describe how two feature lists differ, or None when they are identical (order included)."""
    if model_features == spec_features:
        return None
    missing = [f for f in model_features if f not in spec_features]
    extra = [f for f in spec_features if f not in model_features]
    parts = []
    if missing:
        parts.append(f"the model needs {len(missing)} feature(s) the spec no longer has: {missing[:10]}")
    if extra:
        parts.append(f"the spec has {len(extra)} feature(s) the model was not trained on: {extra[:10]}")
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(model_features, spec_features, strict=True)) if a != b)
        parts.append(
            f"same features in another order (first difference at position {first}: "
            f"model {model_features[first]!r}, spec {spec_features[first]!r})"
        )
    return "; ".join(parts)


@dataclass
class ModelArtifact:
    """A booster, what is known about how it was trained, and where it lives on disk."""

    booster: lgb.Booster
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def features(self) -> list[str]:
        """Feature names in the column order the booster expects."""
        return list(self.metadata.get("features") or self.booster.feature_name())

    @property
    def thresholds(self) -> dict[str, float]:
        """Score thresholds: `review` and `block` (a score >= threshold gets that verdict)."""
        t = self.metadata.get("thresholds") or {}
        return {"review": float(t.get("review", 1.0)), "block": float(t.get("block", 1.0))}

    @property
    def name(self) -> str:
        """The directory name (or the recorded name before it is saved)."""
        return self.path.name if self.path is not None else str(self.metadata.get("name", "model"))

    @property
    def version(self) -> str:
        """`<name>-<first 12 hex of sha256(model.txt)>`, as the serving engine reports it."""
        return f"{self.name}-{_sha12(self.model_text())}"

    def model_text(self) -> str:
        """The booster in LightGBM's text format (all trees it holds)."""
        return str(self.booster.model_to_string())

    def predict(self, features: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """Fraud scores in [0, 1] for a feature matrix in `features` order."""
        return np.asarray(self.booster.predict(features, num_threads=num_threads), dtype=float)

    def training_overlap(self, start: date, end: date) -> tuple[date, date] | None:
        """The training period [start, end) recorded in the metadata, if [start, end) overlaps it:
        scores there are optimistic (the model has seen those payments)."""
        trained = self.metadata.get("data", {})
        if not (trained.get("train_start") and trained.get("train_end")):
            return None
        ts, te = date.fromisoformat(trained["train_start"]), date.fromisoformat(trained["train_end"])
        return (ts, te) if start < te and ts < end else None

    def save(self, directory: str | Path) -> Path:
        """Write model.txt and metadata.json into `directory` (created if needed); returns it.

        Each file is written aside and renamed into place: the serving engine polls model
        directories and must never read a half-written model.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = self.model_text()
        meta = {
            **self.metadata,
            "name": directory.name,
            "version": f"{directory.name}-{_sha12(text)}",
            "model_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        _write_atomic(directory / MODEL_FILE, text)
        _write_atomic(directory / METADATA_FILE, json.dumps(meta, indent=2, default=_json_default) + "\n")
        self.path, self.metadata = directory, meta
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, spec: FeatureSpec | None = None, check_spec: bool = True
    ) -> ModelArtifact:
        """Read a model directory; with `check_spec`, refuse a model built for other features.

        The feature list must equal the current spec's (names and order). A different spec digest
        with the same names only warns: the spec file changed (maybe a comment, maybe a prior).
        """
        directory = Path(directory)
        model_file, meta_file = directory / MODEL_FILE, directory / METADATA_FILE
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: model directory not found (train one with `antifraud train`)")
        for f in (model_file, meta_file):
            if not f.is_file():
                raise ArtifactError(f"{f} not found: {directory} is not a complete model directory")
        try:
            metadata = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{meta_file}: not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict) or not isinstance(metadata.get("features"), list):
            raise ArtifactError(f"{meta_file}: no `features` list; was it written by antifraud train?")
        try:
            booster = lgb.Booster(model_str=model_file.read_text())
        except lgb.basic.LightGBMError as exc:
            raise ArtifactError(f"{model_file}: not a LightGBM text model: {exc}") from exc
        recorded = [str(f) for f in metadata["features"]]
        inside = booster.feature_name()
        if (diff := feature_mismatch(recorded, inside)) is not None:
            raise ArtifactError(f"{directory}: model.txt and metadata.json disagree on the features: {diff}")
        if check_spec:
            spec = spec or load_spec()
            if (diff := feature_mismatch(recorded, spec.feature_names)) is not None:
                raise ArtifactError(
                    f"{directory} was trained for another feature spec (digest "
                    f"{metadata.get('spec_digest')}, current {spec.digest}): {diff}. Retrain the model "
                    "on the current spec, or restore the spec it was trained with."
                )
            if metadata.get("spec_digest") not in (None, spec.digest):
                warnings.warn(
                    f"{directory}: trained with feature spec {metadata.get('spec_digest')}, current spec is "
                    f"{spec.digest}; the feature names match, but check what changed in features/spec.yaml",
                    stacklevel=2,
                )
        return cls(booster=booster, metadata=metadata, path=directory)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    # numpy scalars and dates reach the metadata from metrics; JSON has no type for either
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
