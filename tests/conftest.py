"""Shared fixtures: a real redis-server per test session, flushed between tests; a module's simulated
history (its own `sim` fixture) written as a Parquet history file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis

from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.training.history import write_history


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
