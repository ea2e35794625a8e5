"""Model directories: round trip, version, and clear refusals (wrong spec, broken files)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from antifraud.features.spec import DEFAULT_SPEC_PATH, load_spec
from antifraud.training.baselines import LogisticBaseline
from antifraud.training.model_artifact import ArtifactError, ModelArtifact, feature_mismatch


def _booster(names: list[str], seed: int = 0) -> lgb.Booster:
    """A small real booster over the given feature names (random data, a learnable target)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, len(names)))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=400) > 1).astype(int)
    params = {"objective": "binary", "num_leaves": 7, "verbosity": -1, "num_threads": 1, "seed": 1}
    return lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=10)


@pytest.fixture
def artifact() -> ModelArtifact:
    spec = load_spec()
    meta = {
        "features": spec.feature_names,
        "spec_digest": spec.digest,
        "thresholds": {"review": 0.2, "block": 0.8},
        "data": {"train_start": "2026-01-01", "train_end": "2026-02-10"},
    }
    return ModelArtifact(_booster(spec.feature_names), meta)


def test_round_trip_keeps_predictions_metadata_and_version(artifact: ModelArtifact, tmp_path: Path) -> None:
    out = artifact.save(tmp_path / "default")
    loaded = ModelArtifact.load(out)
    x = np.random.default_rng(3).normal(size=(50, len(artifact.features)))
    x[::7, 5] = np.nan  # missing values go through the same branches
    np.testing.assert_array_equal(loaded.predict(x), artifact.predict(x))
    assert loaded.features == artifact.features
    assert loaded.thresholds == {"review": 0.2, "block": 0.8}
    assert loaded.metadata["data"] == artifact.metadata["data"]
    sha = hashlib.sha256((out / "model.txt").read_bytes()).hexdigest()
    assert loaded.version == f"default-{sha[:12]}" == artifact.version
    assert loaded.metadata["model_sha256"] == sha
    assert re.fullmatch(r"default-[0-9a-f]{12}", loaded.version)


def test_the_model_is_stored_as_lightgbm_text(artifact: ModelArtifact, tmp_path: Path) -> None:
    out = artifact.save(tmp_path / "m")
    text = (out / "model.txt").read_text()
    assert text.startswith("tree\n") and "feature_names=" in text
    assert json.loads((out / "metadata.json").read_text())["features"] == artifact.features
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.txt"]


def test_a_model_for_other_features_is_refused_with_the_difference(tmp_path: Path) -> None:
    spec = load_spec()
    names = [n for n in spec.feature_names if n != "card_count_10m"] + ["card_count_5m"]
    ModelArtifact(_booster(names), {"features": names, "spec_digest": "0123456789abcdef"}).save(
        tmp_path / "old"
    )
    with pytest.raises(ArtifactError) as err:
        ModelArtifact.load(tmp_path / "old")
    message = str(err.value)
    assert "card_count_5m" in message and "card_count_10m" in message and "Retrain" in message
    assert ModelArtifact.load(tmp_path / "old", check_spec=False).features == names


def test_a_reordered_feature_list_is_refused(tmp_path: Path) -> None:
    names = load_spec().feature_names
    swapped = [names[1], names[0], *names[2:]]
    ModelArtifact(_booster(swapped), {"features": swapped}).save(tmp_path / "m")
    with pytest.raises(ArtifactError, match=r"another order.*position 0"):
        ModelArtifact.load(tmp_path / "m")


def test_a_new_spec_file_with_the_same_features_only_warns(artifact: ModelArtifact, tmp_path: Path) -> None:
    out = artifact.save(tmp_path / "m")
    edited = tmp_path / "spec.yaml"
    edited.write_text(DEFAULT_SPEC_PATH.read_text() + "\n# a comment\n")
    spec = load_spec(edited)
    with pytest.warns(UserWarning, match="check what changed"):
        ModelArtifact.load(out, spec=spec)


def test_a_spec_with_other_features_is_refused(artifact: ModelArtifact, tmp_path: Path) -> None:
    out = artifact.save(tmp_path / "m")
    edited = tmp_path / "spec.yaml"
    edited.write_text(
        DEFAULT_SPEC_PATH.read_text().replace(
            "windows: [10m, 1h, 24h, 7d, 30d]", "windows: [1h, 24h, 7d, 30d]"
        )
    )
    with pytest.raises(ArtifactError, match=r"model needs .* the spec no longer has: \['card_count_10m'"):
        ModelArtifact.load(out, spec=load_spec(edited))


def test_broken_directories(artifact: ModelArtifact, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="model directory not found"):
        ModelArtifact.load(tmp_path / "nowhere")
    out = artifact.save(tmp_path / "m")
    (out / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"metadata\.json: not valid JSON"):
        ModelArtifact.load(out)
    (out / "metadata.json").write_text("{}")
    with pytest.raises(ArtifactError, match="no `features` list"):
        ModelArtifact.load(out)
    artifact.save(out)
    (out / "model.txt").write_text("this is not a model")
    with pytest.raises(ArtifactError, match=r"model\.txt: not a LightGBM text model"):
        ModelArtifact.load(out)
    (out / "model.txt").unlink()
    with pytest.raises(ArtifactError, match=r"model\.txt not found"):
        ModelArtifact.load(out)


def test_metadata_that_disagrees_with_the_model_is_refused(artifact: ModelArtifact, tmp_path: Path) -> None:
    out = artifact.save(tmp_path / "m")
    meta = json.loads((out / "metadata.json").read_text())
    meta["features"] = meta["features"][::-1]
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"model\.txt and metadata\.json disagree"):
        ModelArtifact.load(out)


def test_feature_mismatch_wording() -> None:
    assert feature_mismatch(["a", "b"], ["a", "b"]) is None
    assert "the spec has 1 feature(s) the model was not trained on: ['c']" in str(
        feature_mismatch(["a", "b"], ["a", "b", "c"])
    )


def _logistic() -> LogisticBaseline:
    rng = np.random.default_rng(4)
    features = pd.DataFrame({"amount": rng.gamma(2.0, 30.0, 300), "card_count_24h": rng.poisson(2, 300)})
    y = (features["amount"] > 90).to_numpy(dtype=int)
    return LogisticBaseline.fit(features, y)


def test_the_logistic_baseline_travels_with_the_model(artifact: ModelArtifact, tmp_path: Path) -> None:
    logistic = _logistic()
    out = ModelArtifact(artifact.booster, dict(artifact.metadata), logistic=logistic).save(tmp_path / "m")
    assert json.loads((out / "baseline_logistic.json").read_text())["features"] == [
        "amount",
        "card_count_24h",
    ]
    assert ModelArtifact.load(out).logistic == logistic
    # saved again without one (an older model's way), the stale file goes: it would describe another model
    ModelArtifact(artifact.booster, dict(artifact.metadata)).save(out)
    assert not (out / "baseline_logistic.json").exists() and ModelArtifact.load(out).logistic is None
    (out / "baseline_logistic.json").write_text("{broken")
    with pytest.raises(ArtifactError, match=r"baseline_logistic\.json"):
        ModelArtifact.load(out)


def test_saved_under_another_name(artifact: ModelArtifact, tmp_path: Path) -> None:
    """A model written aside (then moved into place) carries its final directory's name."""
    artifact.save(tmp_path / ".default.partial-1234", name="default")
    meta = json.loads((tmp_path / ".default.partial-1234" / "metadata.json").read_text())
    assert meta["name"] == "default" and meta["version"].startswith("default-")


def test_reading_reuses_what_the_model_recorded(artifact: ModelArtifact, tmp_path: Path) -> None:
    columns = tmp_path / "columns.yaml"
    columns.write_text("label: IS_FRAUD\n")
    meta = {
        **artifact.metadata,
        "data": {"columns": str(columns), "label_delay_seconds": 7 * 86400.0, "label_delay_given": True},
    }
    model = ModelArtifact(artifact.booster, meta)
    used, delay, notes = model.reading(None, None)
    assert (used, delay) == (columns, timedelta(days=7)) and len(notes) == 2 and "7 days" in notes[1]
    other = tmp_path / "other.yaml"
    assert model.reading(other, timedelta(hours=36)) == (other, timedelta(hours=36), [])
    # the default delay, with every label_time in the file: nothing worth saying about the delay
    quiet = ModelArtifact(artifact.booster, {**meta, "data": {"label_delay_seconds": 30 * 86400.0}})
    assert quiet.reading(None, None) == (None, timedelta(days=30), [])
    columns.unlink()
    with pytest.raises(ArtifactError, match="no longer exists: pass --columns"):
        model.reading(None, None)
