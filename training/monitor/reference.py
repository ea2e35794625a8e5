"""The reference profile written with every model: its validation slice's features, scores and
verdict mix (`antifraud.engine.monitoring.ReferenceProfile`, saved as `<model dir>/reference.json`).

`antifraud train` writes it (`training.train.run_training` calls `reference_profile`); for a model
directory trained before profiles existed, `write_reference` rebuilds it from the history the model
was trained on, without retraining: the validation slice recorded in metadata.json is replayed
(point-in-time features, as `evaluate` computes them) and scored by the model. Both score the slice
with the final model, the one the service runs, so a profile rebuilt from the same history is the
one training wrote.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from antifraud.engine.monitoring import ReferenceProfile, build_profile
from antifraud.engine.monitoring.drift import verdict_mix
from antifraud.training.config import TrainingError
from antifraud.training.dataset import Dataset, ProgressArg, as_progress
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.replay import replay
from antifraud.training.scoring import verdicts


def reference_profile(
    version: str, validation: Dataset, scores: np.ndarray, thresholds: dict[str, float]
) -> ReferenceProfile:
    """The profile of a model on its validation slice: every feature, the `scores` the model gave
    the slice, and the verdict mix those scores get under the model's `thresholds`."""
    return build_profile(
        version,
        (f"{validation.start:%Y-%m-%d}", f"{validation.end:%Y-%m-%d}"),
        {str(name): validation.features[name].to_numpy(dtype=float) for name in validation.features.columns},
        scores,
        verdict_mix(list(verdicts(scores, thresholds))),
    )


def validation_period(artifact: ModelArtifact) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The validation slice [start, end) recorded in the model's metadata.json (`data`)."""
    data = artifact.metadata.get("data") or {}
    try:
        return pd.Timestamp(data["validation_start"]), pd.Timestamp(data["validation_end"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(
            f"{artifact.path}: metadata.json records no validation slice (data.validation_start, "
            "validation_end): retrain the model with antifraud train"
        ) from exc


def write_reference(
    model_dir: Path,
    history: Path,
    columns: Path | None = None,
    label_delay: timedelta | None = None,
    progress: ProgressArg = None,
) -> ReferenceProfile:
    """Rebuild `model_dir/reference.json` from `history` (the file the model was trained on): its
    recorded validation slice replayed and scored by the model. The column map and label delay
    recorded with the model are reused unless given. Raises TrainingError (a ValueError)."""
    step = as_progress(progress)
    artifact = ModelArtifact.load(model_dir)
    columns, label_delay, notes = artifact.reading(columns, label_delay)
    for note in notes:
        step(note)
    start, end = validation_period(artifact)
    last_day = (end - pd.Timedelta(microseconds=1)).date()
    replayed = replay(
        history,
        start.date(),
        last_day + timedelta(days=1),
        None,
        columns=columns,
        label_delay=label_delay,
        progress=step,
    )
    valid = replayed.dataset.between(start, end)  # the slice may start or end within a day
    step(f"scoring the validation slice's {len(valid):,} payments with {artifact.version}")
    scores = artifact.predict(valid.features[artifact.features].to_numpy(dtype=float))
    profile = reference_profile(artifact.version, valid, scores, artifact.thresholds)
    profile.save(Path(model_dir))
    return profile
