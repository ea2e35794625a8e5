"""The decision store and sink in tests: a PostgreSQL schema of its own, and the real sink run until
the buffers in Redis are written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from antifraud.engine.sink import Sink
from antifraud.engine.store import open_store

#: the local PostgreSQL server CI's machine runs (trust authentication)
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def require_postgres() -> None:
    """Skip the test, saying why, when psycopg or the local PostgreSQL server is missing (CI's
    machine runs one; the Parquet store is tested everywhere)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=2):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable at {PG_ADMIN}: {exc}")


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """The URL of a fresh schema on the local PostgreSQL server, dropped afterwards (a skip when
    there is none: `require_postgres`)."""
    require_postgres()
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{PG_ADMIN}?schema={schema}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"drop schema if exists {schema} cascade")  # a name made above: no quoting needed


def drain(client: redis.Redis, store_url: str) -> None:
    """Run the real sink until both streams are written to the store (lag 0)."""
    store = open_store(store_url)
    try:
        sink = Sink(client, store, block_ms=10, linger_ms=0)
        for _ in range(1000):
            if not sink.run_once() and not any(sink.lag().values()):
                return
        raise AssertionError(f"the sink did not drain the streams: {sink.lag()}")
    finally:
        store.close()
