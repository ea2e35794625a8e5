"""The compiled model (lleaves) scores as LightGBM does, and LightGBM takes over whenever it cannot.

Small models trained here (a compile takes a second or two, not models/default's ten or more),
compiled for real in a child process as the service does; real LightGBM and real lleaves. The
tests needing lleaves are skipped, saying so, where it is not installed (it is an optional extra).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from antifraud.engine import compiled_model
from antifraud.engine.compiled_model import (
    RUNTIME_ENV,
    CompileError,
    RuntimeChoice,
    artifact_key,
    artifact_paths,
    check_rows,
    runtime_choice,
    toolchain,
)
from antifraud.engine.model import ModelRuntime
from antifraud.engine.model_dir import MODEL_FILE, ModelError

needs_lleaves = pytest.mark.skipif(
    toolchain() is None, reason="lleaves is not installed (pip install 'antifraud[compiled]')"
)
N_FEATURES = 9


def _train(seed: int, rounds: int) -> lgb.Booster:
    """A binary model whose trees split on missing values too (NaNs in training)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, N_FEATURES))
    x[:, 3] = rng.integers(0, 5, 3000)  # a small integer feature, as counts are
    x[:, 4] = np.round(rng.exponential(100, 3000), 2)  # amounts
    logit = x[:, 0] - 0.7 * x[:, 1] + (x[:, 3] > 2) + np.where(np.isnan(x[:, 2]), 1.5, x[:, 2])
    x[rng.random(x.shape) < 0.15] = np.nan
    y = (logit + rng.normal(size=3000) > 1.2).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "seed": seed}
    names = [f"f{i}" for i in range(N_FEATURES)]
    return lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=rounds)


def _model_dir(root: Path, booster: lgb.Booster, name: str = "m") -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    booster.save_model(str(directory / MODEL_FILE))
    return directory


def _edge_rows(booster: lgb.Booster) -> np.ndarray:
    """Rows with features exactly at, just below and just above every split threshold, missing
    elsewhere or at zero: where `<=` against `<`, or NaN handling, would tell two runtimes apart."""
    splits = booster.trees_to_dataframe()
    splits = splits[splits["split_feature"].notna()]
    column = {name: i for i, name in enumerate(booster.feature_name())}
    rows = []
    for feature, threshold in zip(splits["split_feature"], splits["threshold"], strict=True):
        for value in (threshold, np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf)):
            for background in (np.nan, 0.0):
                row = np.full(N_FEATURES, background)
                row[column[feature]] = value
                rows.append(row)
    extremes = [np.full(N_FEATURES, v) for v in (0.0, -0.0, 1e300, -1e300, 1e-300, np.nan)]
    return np.array(rows + extremes, dtype=np.float64)


@pytest.fixture(scope="module")
def boosters() -> tuple[lgb.Booster, lgb.Booster]:
    """Two different models over the same features."""
    return _train(seed=1, rounds=60), _train(seed=2, rounds=40)


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory: pytest.TempPathFactory, boosters: tuple[lgb.Booster, lgb.Booster]) -> Path:
    """A model directory whose compiled artifact exists (compiled once for the module)."""
    directory = _model_dir(tmp_path_factory.mktemp("compiled"), boosters[0])
    if toolchain() is not None:
        ModelRuntime(directory, runtime=RuntimeChoice.COMPILED)
    return directory


def _copy(directory: Path, root: Path) -> Path:
    target = root / directory.name
    shutil.copytree(directory, target)
    return target


@needs_lleaves
def test_compiled_scores_equal_lightgbm_within_1e9(
    compiled_dir: Path, boosters: tuple[lgb.Booster, ...]
) -> None:
    model = ModelRuntime(compiled_dir, runtime=RuntimeChoice.COMPILED)
    assert model.runtime == "compiled"
    booster = boosters[0]
    rows = np.vstack([check_rows(booster.model_to_string(), count=3000, seed=5), _edge_rows(booster)])
    assert np.isnan(rows).any(axis=1).sum() > 1000  # many rows with missing features
    expected = booster.predict(rows, num_threads=1)
    got = np.array([model.predict_one(row) for row in rows])
    assert np.max(np.abs(got - expected)) <= 1e-9
    # the plain path is LightGBM to the last bit, and contributions still come from LightGBM
    plain = ModelRuntime(compiled_dir, runtime=RuntimeChoice.LIGHTGBM)
    assert plain.runtime == "lightgbm"
    assert np.array_equal([plain.predict_one(row) for row in rows[:200]], expected[:200])
    assert np.array_equal(model.contribution_values(rows[7]), plain.contribution_values(rows[7]))


@needs_lleaves
def test_the_artifact_is_cached_and_never_committed(compiled_dir: Path) -> None:
    text = (compiled_dir / MODEL_FILE).read_text()
    key = artifact_key(compiled_dir.name, text)
    assert key is not None
    paths = artifact_paths(compiled_dir, key)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["model_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert manifest["object_sha256"] == hashlib.sha256(paths.object.read_bytes()).hexdigest()
    assert (paths.folder / ".gitignore").read_text() == "*\n"
    before = paths.object.stat().st_mtime_ns
    ModelRuntime(compiled_dir, runtime=RuntimeChoice.AUTO)  # loads it, compiles nothing
    assert paths.object.stat().st_mtime_ns == before


def test_lightgbm_when_asked(compiled_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_ENV, "lightgbm")
    fresh = compiled_dir.parent / "fresh"
    fresh.mkdir()
    shutil.copy(compiled_dir / MODEL_FILE, fresh / MODEL_FILE)
    model = ModelRuntime(fresh)
    assert model.runtime == "lightgbm"
    assert not (fresh / "compiled").exists()  # the compiler was not even started


def test_an_unknown_runtime_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_ENV, "onnx")
    with pytest.raises(ModelError, match="ANTIFRAUD_MODEL_RUNTIME='onnx'"):
        runtime_choice()


def test_lightgbm_without_the_compiler(
    tmp_path: Path, boosters: tuple[lgb.Booster, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # lleaves absent, as on an install without the extra (toolchain() reads the installed packages)
    monkeypatch.setattr(compiled_model, "toolchain", lambda: None)
    directory = _model_dir(tmp_path, boosters[0])
    model = ModelRuntime(directory, runtime=RuntimeChoice.AUTO)
    assert model.runtime == "lightgbm"
    row = check_rows(boosters[0].model_to_string(), count=1)[0]
    assert model.predict_one(row) == boosters[0].predict(row.reshape(1, -1))[0]
    with pytest.raises(CompileError, match="lleaves is not installed"):
        ModelRuntime(directory, runtime=RuntimeChoice.COMPILED)


@needs_lleaves
def test_a_damaged_artifact_is_not_used(compiled_dir: Path, tmp_path: Path) -> None:
    directory = _copy(compiled_dir, tmp_path)
    key = artifact_key(directory.name, (directory / MODEL_FILE).read_text())
    assert key is not None
    paths = artifact_paths(directory, key)
    blob = bytearray(paths.object.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    paths.object.write_bytes(bytes(blob))
    # compiled: compiled again before it serves (the damaged code never runs)
    assert ModelRuntime(directory, runtime=RuntimeChoice.COMPILED).runtime == "compiled"
    assert paths.object.read_bytes() != bytes(blob)
    # auto: LightGBM, and nothing compiled by the serving process (a deploy step does it)
    paths.object.write_bytes(bytes(blob))
    model = ModelRuntime(directory, runtime=RuntimeChoice.AUTO)
    assert model.runtime == "lightgbm"
    assert paths.object.read_bytes() == bytes(blob)


@needs_lleaves
def test_a_stale_artifact_is_not_used(
    compiled_dir: Path, tmp_path: Path, boosters: tuple[lgb.Booster, lgb.Booster]
) -> None:
    directory = _copy(compiled_dir, tmp_path)
    old_key = artifact_key(directory.name, (directory / MODEL_FILE).read_text())
    boosters[1].save_model(str(directory / MODEL_FILE))  # a new model.txt in the same directory
    new_key = artifact_key(directory.name, (directory / MODEL_FILE).read_text())
    assert old_key is not None and new_key is not None and new_key.stem != old_key.stem
    old, new = artifact_paths(directory, old_key), artifact_paths(directory, new_key)
    # worse than a leftover: the old code under the new name, with a manifest claiming the new model
    shutil.copy(old.object, new.object)
    manifest = json.loads(old.manifest.read_text())
    manifest["model_sha256"] = new_key.model_sha256
    new.manifest.write_text(json.dumps(manifest))
    model = ModelRuntime(directory, runtime=RuntimeChoice.AUTO)
    assert model.runtime == "lightgbm"  # its scores are the old model's: refused
    rows = check_rows(boosters[1].model_to_string(), count=500, seed=3)
    assert np.array_equal([model.predict_one(r) for r in rows], boosters[1].predict(rows))
    with pytest.raises(CompileError, match="differ from LightGBM's"):
        ModelRuntime(directory, runtime=RuntimeChoice.COMPILED)
    # removed, the new model's own artifact is compiled and scores as the new model
    new.object.unlink()
    new.manifest.unlink()
    model = ModelRuntime(directory, runtime=RuntimeChoice.COMPILED)
    got = np.array([model.predict_one(r) for r in rows])
    assert np.max(np.abs(got - boosters[1].predict(rows))) <= 1e-9


@needs_lleaves
def test_a_failed_compile_is_not_retried_at_every_start(compiled_dir: Path, tmp_path: Path) -> None:
    directory = _copy(compiled_dir, tmp_path)
    shutil.rmtree(directory / "compiled")
    key = artifact_key(directory.name, (directory / MODEL_FILE).read_text())
    assert key is not None
    paths = artifact_paths(directory, key)
    paths.folder.mkdir()
    paths.failed.write_text("LLVM ran out of memory\n")
    model = ModelRuntime(directory, runtime=RuntimeChoice.AUTO)
    assert model.runtime == "lightgbm"
    assert not paths.object.exists()  # nothing was started
