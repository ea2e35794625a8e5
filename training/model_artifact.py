"""A trained model as a directory: `model.txt` (LightGBM text format) + `metadata.json`, and the
logistic baseline fitted on the same data (`baseline_logistic.json`, plain JSON; older model
directories have none).

The directory is read by `antifraud.engine.model_dir.read_model_dir`, the reader the serving runtime
(`engine/model.py`) uses too: both refuse the same broken or truncated files and name the model
with the same `version`. Only LightGBM's text format is read (it cannot run code when loaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from antifraud.engine.model_dir import (
    METADATA_FILE,
    MODEL_FILE,
    ModelError,
    feature_mismatch,
    model_version,
    read_model_dir,
)
from antifraud.features.spec import FeatureSpec, load_spec
from antifraud.training.baselines import LOGISTIC_FILE, LogisticBaseline
from antifraud.training.config import TrainConfig, TrainingError

__all__ = ["METADATA_FILE", "MODEL_FILE", "ArtifactError", "ModelArtifact", "feature_mismatch"]


class ArtifactError(TrainingError):
    """A model directory is missing, unreadable, inconsistent or built for another feature spec."""


@dataclass
class ModelArtifact:
    """A booster, what is known about how it was trained, and where it lives on disk."""

    booster: lgb.Booster
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    logistic: LogisticBaseline | None = None  # the comparison point, fitted on the same payments

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
        return model_version(self.name, self.model_text())

    def model_text(self) -> str:
        """The booster in LightGBM's text format (all trees it holds)."""
        return str(self.booster.model_to_string())

    def train_config(self) -> TrainConfig:
        """The settings the model was trained with (metadata `config`); the defaults where unknown."""
        recorded = self.metadata.get("config") or {}
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        try:
            return TrainConfig(**{k: v for k, v in recorded.items() if k in known})
        except (TypeError, ValueError):
            return TrainConfig()

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

    def reading(
        self, columns: Path | None, label_delay: timedelta | None
    ) -> tuple[Path | None, timedelta | None, list[str]]:
        """The column map and label delay to read a history with for this model, and what was reused.

        What is given wins; otherwise the model's recorded column map and label delay are used (a
        history must be read as it was read for training: another delay changes the label-based
        features), and each reuse is said in a sentence. Raises ArtifactError when the recorded
        column map no longer exists.
        """
        data = self.metadata.get("data") or {}
        notes: list[str] = []
        if columns is None and data.get("columns"):
            columns = Path(str(data["columns"]))
            if not columns.is_file():
                raise ArtifactError(
                    f"{self.name} was trained with the column map {columns}, which no longer exists: "
                    "pass --columns"
                )
            notes.append(f"read the history with the model's column map {columns}")
        if label_delay is None and data.get("label_delay_seconds") is not None:
            label_delay = timedelta(seconds=float(data["label_delay_seconds"]))
            if data.get("label_delay_given") or data.get("label_time_defaulted"):
                hours = label_delay.total_seconds() / 3600
                said = f"{hours / 24:g} days" if hours % 24 == 0 else f"{hours:g} hours"
                notes.append(f"used the model's label delay of {said} for rows without label_time")
        return columns, label_delay, notes

    def save(self, directory: str | Path, name: str | None = None) -> Path:
        """Write model.txt, metadata.json and (when there is one) baseline_logistic.json into
        `directory` (created if needed); returns it. `name` (default: the directory's name) names
        the model and its version: a model written aside and then moved into place gives its
        final directory's name.

        Each file is written aside and renamed into place: the serving engine polls model
        directories and must never read a half-written model.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = name or directory.name
        text = self.model_text()
        meta = {
            **self.metadata,
            "name": name,
            "version": model_version(name, text),
            "model_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        _write_atomic(directory / MODEL_FILE, text)
        _write_atomic(directory / METADATA_FILE, json.dumps(meta, indent=2, default=_json_default) + "\n")
        if self.logistic is not None:
            _write_atomic(directory / LOGISTIC_FILE, json.dumps(self.logistic.to_dict(), indent=2) + "\n")
        else:
            # a baseline left by an earlier model would be read as this model's
            (directory / LOGISTIC_FILE).unlink(missing_ok=True)
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
        try:
            read = read_model_dir(directory)
        except ModelError as exc:
            raise ArtifactError(str(exc)) from exc
        metadata, booster = read.metadata, read.booster
        if not isinstance(metadata.get("features"), list):
            raise ArtifactError(
                f"{directory / METADATA_FILE}: no `features` list; was it written by antifraud train?"
            )
        recorded = [str(f) for f in metadata["features"]]
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
        logistic = None
        if (directory / LOGISTIC_FILE).is_file():  # absent from model directories older than it
            try:
                logistic = LogisticBaseline.load(directory / LOGISTIC_FILE)
            except TrainingError as exc:
                raise ArtifactError(str(exc)) from exc
        return cls(booster=booster, metadata=metadata, path=directory, logistic=logistic)


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
