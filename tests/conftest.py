"""Shared fixtures: a real redis-server per test session, flushed between tests; a module's simulated
history (its own `sim` fixture) written as a Parquet history file; a small real model to serve."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import pandas as pd
import pytest
import redis
from sinks import postgres_schema

from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.features.offline import OfflineFeatures
from antifraud.training.history import write_history
from antifraud.training.simulator import simulate

# The same scores on every machine: the compiled model (engine/compiled_model.py) agrees with LightGBM
# within 1e-9, not bit for bit, and only machines with lleaves and a compiled artifact would use it.
# tests/test_compiled_model.py chooses its runtime explicitly.
os.environ.setdefault("ANTIFRAUD_MODEL_RUNTIME", "lightgbm")


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The services' data directory (ANTIFRAUD_DATA_DIR, and so their default decision store) for the
    session: a temporary one, never the working directory's var/."""
    directory = tmp_path_factory.mktemp("data")
    previous = os.environ.get("ANTIFRAUD_DATA_DIR")
    os.environ["ANTIFRAUD_DATA_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("ANTIFRAUD_DATA_DIR", None)
    else:
        os.environ["ANTIFRAUD_DATA_DIR"] = previous


@pytest.fixture(autouse=True)
def test_data_dir(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own data directory, so its decision store holds only its own decisions (tests
    reuse transaction ids); module-scoped services keep the session's."""
    directory = tmp_path / "data"
    monkeypatch.setenv("ANTIFRAUD_DATA_DIR", str(directory))
    return directory


@pytest.fixture(params=["parquet", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty decision store of each backend: a Parquet directory, or a schema of its
    own on PostgreSQL (dropped after; skipped, saying why, where no server is reachable)."""
    if request.param == "parquet":
        yield str(tmp_path / "store")
        return
    with postgres_schema(request.module.__name__.rsplit(".", 1)[-1]) as url:
        yield url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server for the whole test session (never the machine's own Redis)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client on an empty database."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="module")
def history_file(sim: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The requesting module's `sim` history as a Parquet file."""
    path = tmp_path_factory.mktemp("history") / "history.parquet"
    write_history(sim, path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real LightGBM model on the spec's features, for the service's tests (a module may define
    its own `model_dir`); training itself is tested elsewhere."""
    history = simulate(days=10, cards=300, merchants=30, seed=2)
    history = history.sort_values("timestamp", kind="stable").reset_index(drop=True)
    features = OfflineFeatures()
    x = features.transform(history)[features.feature_names]
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1},
        lgb.Dataset(x, history["label"].to_numpy()),
        num_boost_round=20,
    )
    directory = tmp_path_factory.mktemp("model") / "test-model"
    directory.mkdir()
    booster.save_model(str(directory / "model.txt"))
    return directory
