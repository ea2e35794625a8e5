"""A Lua script called over a connection of its own: the scoring path's Redis calls, thin.

A payment costs two script calls (its features, then its decision log entry). Through redis-py's
`Script` each call goes through the client's command machinery: the connection pool's lock and
bookkeeping, argument encoding in Python, the retry wrapper and the response callbacks: about a
third of the worker's CPU per call (docs/performance.md, "The Redis client"). `DirectScript` keeps
what matters (connecting, authentication, socket timeouts, the hiredis reply parser, the client's
retry policy) and drops the rest: hiredis packs the arguments in C and the call goes out on one
connection kept for it.

Two ways to call, one script:
- `script(keys, args)` blocks, on a redis-py `Connection` of its own. It serves one thread at a
  time: a call made while another thread holds it (the feedback routes run in a thread pool) goes
  through the client's pool instead.
- `await script.acall(keys, args)` lets the event loop serve other requests while Redis works: a
  worker then overlaps its payments' Redis waits. It costs the same CPU as the blocking call (an
  asyncio protocol with the hiredis parser, no redis.asyncio machinery, which measured ~150 us more
  per call). Calls in flight share one connection per process, their replies matched in order. At
  most `in_flight` calls are sent at once: under a burst, more would queue inside Redis, where the
  socket timeout counts the wait (a call that waited there for 30 ms counted as Redis failing and
  tripped the worker's circuit breaker, in a first version without the bound); past the bound a
  call waits in the worker, outside the timeout, as a blocking worker's requests do. It speaks to a
  plain TCP or unix-socket Redis with a password and a database number; any other client (TLS,
  RESP3, a Redis Cluster) is served by the blocking call.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis
from redis.cluster import RedisCluster
from redis.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

_NOSCRIPT = "NOSCRIPT"


class DirectScript:
    """One Lua script, called as `script(keys, args)` or `await script.acall(keys, args)`; the reply
    is what redis-py's `Script` returns (nested lists of integers and bytes: a script's reply has no
    fixed type)."""

    def __init__(self, client: redis.Redis | RedisCluster, source: str, in_flight: int = 4) -> None:
        self._client = client
        self._in_flight = in_flight
        self._source = source
        self._fallback = client.register_script(source)  # type: ignore[misc]
        self.sha: str = self._fallback.sha
        self._direct = isinstance(client, redis.Redis)
        self._conn: AbstractConnection | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._loop_conn: _LoopConnection | None = None
        # the event loop and process the connection and its lock belong to
        self._owner: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._connecting: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None
        self._async_options = _async_options(client) if isinstance(client, redis.Redis) else None

    def __call__(self, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """EVALSHA over the script's own connection (loading the script when Redis lacks it)."""
        if not self._direct or not self._lock.acquire(blocking=False):
            return self._fallback(keys=keys, args=args)
        try:
            conn = self._connection()
            packed = _pack(keys, args, self.sha)
            try:
                return self._round_trip(conn, packed)
            except NoScriptError:
                # a restarted or flushed Redis: load the script once and call it again
                cast(redis.Redis, self._client).script_load(self._source)
                return self._round_trip(conn, packed)
        finally:
            self._lock.release()

    async def acall(self, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """The same call without blocking the event loop while Redis runs the script."""
        options = self._async_options
        if options is None:
            return self(keys, args)
        await self._loop_connection(options)  # this loop's connection and slots
        async with cast(asyncio.Semaphore, self._slots):
            conn = await self._loop_connection(options)  # a new one if it was lost meanwhile
            reply = await conn.send(_pack(keys, args, self.sha), options.timeout)
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith(_NOSCRIPT):
                await conn.send(_command("SCRIPT", "LOAD", self._source), options.timeout)
                reply = await conn.send(_pack(keys, args, self.sha), options.timeout)
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    def close(self) -> None:
        """Close the script's own connections (a later call opens new ones)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.disconnect()
            self._conn = None
        if self._loop_conn is not None and self._owner is not None:
            loop, pid = self._owner
            if pid == os.getpid() and not loop.is_closed():
                self._loop_conn.close()
        self._loop_conn = None

    def _connection(self) -> AbstractConnection:
        # A connection made before a fork belongs to the parent: the child opens its own.
        if self._conn is None or self._pid != os.getpid():
            pool = cast(redis.Redis, self._client).connection_pool
            self._conn = cast(AbstractConnection, pool.make_connection())
            self._pid = os.getpid()
        return self._conn

    @staticmethod
    def _round_trip(conn: AbstractConnection, packed: bytes) -> Any:
        # The client's own retry policy, as redis-py applies it to any command: a failed attempt
        # drops the socket, and the next one reconnects.
        def attempt() -> Any:
            conn.send_packed_command([packed], check_health=False)
            return conn.read_response()

        return conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())

    async def _loop_connection(self, options: _AsyncOptions) -> _LoopConnection:
        owner = (asyncio.get_running_loop(), os.getpid())
        conn = self._loop_conn
        if conn is not None and not conn.lost and self._owner == owner:
            return conn
        if self._connecting is None or self._owner != owner:
            # first call, another loop (a test's) or a forked worker: its own connection and lock
            self._connecting, self._loop_conn, self._owner = asyncio.Lock(), None, owner
            self._slots = asyncio.Semaphore(self._in_flight)
        async with self._connecting:  # calls arriving while it connects wait for the one connection
            conn = self._loop_conn
            if conn is None or conn.lost:
                conn = self._loop_conn = await _LoopConnection.open(options)
            return conn


def _pack(keys: Sequence[str], args: Sequence[EncodableT], sha: str) -> bytes:
    return _command("EVALSHA", sha, len(keys), *keys, *args)


def _command(*parts: EncodableT) -> bytes:
    # hiredis's stub declares a one-element tuple; it takes any number of parts
    return hiredis.pack_command(parts)  # type: ignore[arg-type]


class _AsyncOptions:
    """Where and how the event-loop connection connects: read off the redis-py client's pool."""

    def __init__(self, kwargs: dict[str, Any], unix: bool) -> None:
        self.path: str | None = kwargs["path"] if unix else None
        self.host: str = kwargs.get("host", "localhost")
        self.port: int = int(kwargs.get("port", 6379))
        self.username: str | None = kwargs.get("username")
        self.password: str | None = kwargs.get("password")
        self.db: int = int(kwargs.get("db", 0))
        self.timeout: float | None = kwargs.get("socket_timeout")
        self.connect_timeout: float | None = kwargs.get("socket_connect_timeout", self.timeout)
        self.encoding: str | None = (
            kwargs.get("encoding", "utf-8") if kwargs.get("decode_responses") else None
        )


def _async_options(client: redis.Redis) -> _AsyncOptions | None:
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    plain = {Connection: False, UnixDomainSocketConnection: True}
    if pool.connection_class not in plain or str(kwargs.get("protocol", 2)) not in ("2", "None"):
        return None
    if kwargs.get("credential_provider") is not None:
        return None
    return _AsyncOptions(kwargs, plain[pool.connection_class])


class _LoopConnection(asyncio.Protocol):
    """One connection on the running event loop: commands written in order, replies matched to them
    in order. A timeout or a lost connection fails every call in flight and the connection is
    dropped (its later replies could no longer be matched); the next call opens a new one."""

    def __init__(self, encoding: str | None) -> None:
        self._reader = hiredis.Reader(encoding=encoding) if encoding else hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.lost = False

    @classmethod
    async def open(cls, options: _AsyncOptions) -> _LoopConnection:
        """Connect, authenticate and select the database."""
        loop = asyncio.get_running_loop()

        def factory() -> _LoopConnection:
            return cls(options.encoding)

        try:
            if options.path is not None:
                connecting = loop.create_unix_connection(factory, options.path)
            else:
                connecting = loop.create_connection(factory, options.host, options.port)
            _, conn = await asyncio.wait_for(connecting, options.connect_timeout)
        except (TimeoutError, OSError) as exc:
            where = options.path or f"{options.host}:{options.port}"
            raise redis.ConnectionError(f"cannot connect to Redis at {where}: {exc!r}") from exc
        setup: list[tuple[EncodableT, ...]] = []
        if options.password is not None:
            auth = (options.username, options.password) if options.username else (options.password,)
            setup.append(("AUTH", *auth))
        if options.db:
            setup.append(("SELECT", options.db))
        for command in setup:
            reply = await conn.send(_command(*command), options.connect_timeout)
            if isinstance(reply, hiredis.ReplyError):
                conn.close()
                raise redis.ConnectionError(f"Redis refused {command[0]!s}: {reply}")
        return conn

    def send(self, packed: bytes, timeout: float | None) -> asyncio.Future[Any]:
        """Write one packed command; the future resolves to its reply (hiredis's `ReplyError` for an
        error reply), or fails with redis-py's TimeoutError or ConnectionError."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.lost or self._transport is None:
            future.set_exception(redis.ConnectionError("connection to Redis closed"))
            return future
        self._waiting.append(future)
        self._transport.write(packed)
        if timeout is not None:
            timer = loop.call_later(timeout, self._fail, redis.TimeoutError("Timeout reading from Redis"))
            future.add_done_callback(lambda _f: timer.cancel())
        return future

    def close(self) -> None:
        """Close the connection; calls in flight fail."""
        self._fail(redis.ConnectionError("connection to Redis closed"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def _fail(self, error: redis.RedisError) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
