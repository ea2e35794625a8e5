"""Running the real decision sink in tests: the buffers in Redis -> a store."""

from __future__ import annotations

import redis

from antifraud.engine.sink import Sink
from antifraud.engine.store import open_store


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
