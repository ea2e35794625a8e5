"""A Lua script called over a connection of its own: the scoring path's Redis calls, thin.

A payment costs two script calls (its features, then its decision log entry). Through redis-py's
`Script` each call goes through the client's command machinery: the connection pool's lock and
bookkeeping, argument encoding in Python, the retry wrapper and the response callbacks. Measured on
the feature call of a payment (166 arguments), that machinery costs about 35 us of the worker's
CPU per call out of 90 (docs/performance.md, "The Redis client"). `DirectScript` keeps what matters
of redis-py (its `Connection`: connecting, authentication, socket timeouts, the hiredis reply
parser, the retry policy the client was built with) and drops the rest: the arguments are packed by
hiredis in C and the call goes out on one connection kept for it.

The connection is used by one thread at a time: a call made while another thread holds it (the
feedback routes run in a thread pool) goes through the client's pool as before. A Redis Cluster
client is passed through to redis-py unchanged.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # hiredis is an install extra of redis-py: without it, redis-py's own packer
    _hiredis_pack = None


class DirectScript:
    """One Lua script, called as `script(keys, args)`; the reply is what redis-py's `Script` returns
    (nested lists of integers and bytes: a script's reply has no fixed type)."""

    def __init__(self, client: redis.Redis | RedisCluster, source: str) -> None:
        self._client = client
        self._source = source
        self._fallback = client.register_script(source)  # type: ignore[misc]
        self.sha: str = self._fallback.sha
        self._direct = isinstance(client, redis.Redis)
        self._conn: AbstractConnection | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def __call__(self, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """EVALSHA over the script's own connection (loading the script when Redis lacks it)."""
        if not self._direct or not self._lock.acquire(blocking=False):
            return self._fallback(keys=keys, args=args)
        try:
            conn = self._connection()
            packed = self._pack(conn, ["EVALSHA", self.sha, len(keys), *keys, *args])
            try:
                return self._round_trip(conn, packed)
            except NoScriptError:
                # a restarted or flushed Redis: load the script once and call it again
                cast(redis.Redis, self._client).script_load(self._source)
                return self._round_trip(conn, packed)
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the script's own connection (a later call opens a new one)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.disconnect()
            self._conn = None

    def _connection(self) -> AbstractConnection:
        # A connection made before a fork belongs to the parent: the child opens its own.
        if self._conn is None or self._pid != os.getpid():
            pool = cast(redis.Redis, self._client).connection_pool
            self._conn = cast(AbstractConnection, pool.make_connection())
            self._pid = os.getpid()
        return self._conn

    @staticmethod
    def _pack(conn: AbstractConnection, command: list[EncodableT]) -> list[bytes]:
        if _hiredis_pack is not None:
            return [_hiredis_pack(tuple(command))]
        return cast(list[bytes], conn.pack_command(*command))

    @staticmethod
    def _round_trip(conn: AbstractConnection, packed: list[bytes]) -> Any:
        # The client's own retry policy, as redis-py applies it to any command: a failed attempt
        # drops the socket, and the next one reconnects.
        def attempt() -> Any:
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()

        return conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
