"""The one reader of a model directory: `model.txt` (LightGBM text format) + `metadata.json`.

Both the serving runtime (engine/model.py) and the offline tools (training/model_artifact.py) read
a model directory through :func:`read_model_dir`, so they refuse the same broken files with the
same words and name the model with the same :func:`model_version`. It sits low in the import
graph (LightGBM and the standard library only) because the service must not import training/.

Only LightGBM's text format is read: a model directory may come from anywhere, and unlike a
pickle the text format cannot run code when loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import lightgbm as lgb

MODEL_FILE: Final = "model.txt"
METADATA_FILE: Final = "metadata.json"


class ModelError(ValueError):
    """A model directory is missing, unreadable or does not match the feature spec."""


def model_version(name: str, model_text: str) -> str:
    """`<name>-<first 12 hex of sha256(model.txt)>`: the version the service reports for a model."""
    return f"{name}-{hashlib.sha256(model_text.encode()).hexdigest()[:12]}"


def check_complete(text: str, path: Path) -> None:
    """Refuse a model file that is not whole (ModelError).

    LightGBM aborts the process on a truncated model instead of raising, so a model caught
    half-copied would take a worker down: the tree sizes the header announces must add up to the
    trees that follow, and the parameters section must close the file.
    """
    sizes = re.search(r"^tree_sizes=([0-9 ]+)$", text, re.MULTILINE)
    start, end = text.find("Tree=0"), text.find("end of trees")
    whole = (
        sizes is not None
        and start >= 0
        and end > start
        and sum(map(int, sizes.group(1).split())) == end - start
        and "end of parameters" in text[end:]
    )
    if not whole:
        raise ModelError(
            f"{path}: not a LightGBM text model, or an incomplete one (was it still being copied?): "
            "write the new model beside it and rename it into place"
        )


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


@dataclass(frozen=True)
class ModelDirectory:
    """What a model directory holds, read and checked: the booster, its text and the metadata."""

    path: Path
    text: str  # model.txt as read: the version is its digest
    booster: lgb.Booster
    metadata: dict[str, Any]  # metadata.json; empty when the directory has none and none was required

    @property
    def name(self) -> str:
        """The directory's name, which names the model."""
        return self.path.name

    @property
    def version(self) -> str:
        """The model's version, as the service reports it (:func:`model_version`)."""
        return model_version(self.name, self.text)


def read_model_dir(directory: str | Path, require_metadata: bool = True) -> ModelDirectory:
    """Read and check a model directory; ModelError says what is wrong and what to do.

    Checked: the directory and model.txt exist, metadata.json (required unless
    `require_metadata` is False: the service can serve a bare model.txt) is a JSON object,
    model.txt is a whole LightGBM text model, and the features metadata.json records (when it
    records them) are the booster's, in the same order.
    """
    directory = Path(directory)
    model_file, meta_file = directory / MODEL_FILE, directory / METADATA_FILE
    if not directory.is_dir():
        raise ModelError(f"{directory}: model directory not found (train one with `antifraud train`)")
    required = (model_file, meta_file) if require_metadata else (model_file,)
    for f in required:
        if not f.is_file():
            raise ModelError(
                f"{f} not found: {directory} is not a complete model directory "
                f"(train one with `antifraud train ... --out {directory}`)"
            )
    metadata: dict[str, Any] = {}
    if meta_file.is_file():
        try:
            loaded = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{meta_file}: not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ModelError(
                f"{meta_file}: not a JSON object (no `features` list); was it written by antifraud train?"
            )
        metadata = loaded
    text = model_file.read_text()
    check_complete(text, model_file)
    try:
        booster = lgb.Booster(model_str=text)
    except lgb.basic.LightGBMError as exc:
        raise ModelError(f"{model_file}: not a LightGBM text model: {exc}") from exc
    recorded = metadata.get("features")
    diff = (
        feature_mismatch([str(f) for f in recorded], booster.feature_name())
        if isinstance(recorded, list)
        else None
    )
    if diff is not None:
        raise ModelError(f"{directory}: model.txt and metadata.json disagree on the features: {diff}")
    return ModelDirectory(directory, text, booster, metadata)
