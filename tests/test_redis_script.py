"""DirectScript answers exactly as redis-py's Script does, and survives what a live Redis does to it:
a flushed script cache, a restart, a Lua error, concurrent threads and a forked worker."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from pathlib import Path

import pytest
import redis
import uvloop

from antifraud.engine.redis_script import DirectScript
from antifraud.engine.redis_server import EmbeddedRedis

# Echoes its keys and arguments back with a counter, so every reply is distinguishable.
SOURCE = """
local n = redis.call('INCR', KEYS[1])
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return {n, KEYS, ARGV, {tonumber(ARGV[2]) or 0, 'x'}}
"""
# Busy for ARGV[1] microseconds of Redis's own clock, then returns 1.
SLOW = "local t = redis.call('TIME'); local stop = t[1] * 1e6 + t[2] + ARGV[1]; " + (
    "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] >= stop; return 1"
)


def test_replies_equal_redis_py_script(redis_client: redis.Redis) -> None:
    direct = DirectScript(redis_client, SOURCE)
    plain = redis_client.register_script(SOURCE)
    for i in range(20):
        args: list[str | int] = ["a", i, "é", str(-i)]
        mine = direct(["af:{k}:n", "af:{k}:m"], args)
        theirs = plain(keys=["af:{k}:n", "af:{k}:m"], args=args)
        assert mine[0] + 1 == theirs[0]
        assert mine[1:] == theirs[1:]
    direct.close()


def test_reloads_a_flushed_script_and_keeps_working_after_a_lua_error(redis_client: redis.Redis) -> None:
    direct = DirectScript(redis_client, SOURCE)
    assert direct(["c"], ["x", 1])[0] == 1
    redis_client.script_flush()
    assert direct(["c"], ["x", 1])[0] == 2
    with pytest.raises(redis.ResponseError, match="asked to fail"):
        direct(["c"], ["fail"])
    assert direct(["c"], ["x", 1])[0] == 4  # the failing call had counted, and the connection lives
    direct.close()


def test_reconnects_after_a_restart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "r") as server:
        direct = DirectScript(redis.Redis.from_url(server.url), SOURCE)
        assert direct(["c"], ["x"])[0] == 1
    # the same socket path, a new process: the old connection is dead and the script unknown. As
    # with any redis-py command, the call on the dead socket fails unless the client was built
    # with retries; the next one connects again.
    with EmbeddedRedis(tmp_path / "r") as server:
        try:
            first = direct(["c"], ["x"])[0]
        except redis.ConnectionError:
            first = 0
        assert direct(["c"], ["x"])[0] == first + 1
        direct.close()


def test_threads_share_one_script(redis_client: redis.Redis) -> None:
    direct = DirectScript(redis_client, SOURCE)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(200):
                reply = direct([f"t{i}"], [f"{i}-{j}", j])
                assert reply[0] == j + 1 and reply[2] == [f"{i}-{j}".encode(), str(j).encode()]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    direct.close()


def _child(url: str, direct: DirectScript, out: multiprocessing.queues.Queue[int]) -> None:
    out.put(direct(["f"], ["child"])[0])


def test_a_forked_worker_opens_its_own_connection(redis_client: redis.Redis) -> None:
    direct = DirectScript(redis_client, SOURCE)
    assert direct(["f"], ["parent"])[0] == 1  # the parent's connection exists before the fork
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.queues.Queue[int] = ctx.Queue()
    child = ctx.Process(target=_child, args=("", direct, out))
    child.start()
    child.join(10)
    assert out.get(timeout=5) == 2
    assert direct(["f"], ["parent"])[0] == 3  # the parent's socket was not shared
    direct.close()


# The event-loop call: the same replies and the same failures, without blocking the loop.


def test_acall_replies_equal_the_blocking_call_with_many_in_flight(redis_client: redis.Redis) -> None:
    direct = DirectScript(redis_client, SOURCE)

    async def run() -> list[object]:
        return await asyncio.gather(*[direct.acall([f"a{i % 3}"], [f"v{i}", i]) for i in range(60)])

    replies = asyncio.run(run())
    counters = {f"a{k}": 0 for k in range(3)}
    for i, reply in enumerate(replies):  # each reply is its own call's, in the order sent
        counters[f"a{i % 3}"] += 1
        assert reply == [
            counters[f"a{i % 3}"],
            [f"a{i % 3}".encode()],
            [f"v{i}".encode(), str(i).encode()],
            [i, b"x"],
        ]
    assert direct(["a0"], ["v", 1])[0] == 21  # the blocking call sees the same state
    direct.close()


def test_acall_reloads_a_flushed_script_and_raises_lua_errors(redis_client: redis.Redis) -> None:
    direct = DirectScript(redis_client, SOURCE)

    async def run() -> None:
        assert (await direct.acall(["c"], ["x"]))[0] == 1
        redis_client.script_flush()
        assert (await direct.acall(["c"], ["x"]))[0] == 2
        with pytest.raises(redis.ResponseError, match="asked to fail"):
            await direct.acall(["c"], ["fail"])
        assert (await direct.acall(["c"], ["x"]))[0] == 4

    asyncio.run(run())
    direct.close()


def test_acall_times_out_then_recovers(redis_server: EmbeddedRedis) -> None:
    direct = DirectScript(redis.Redis.from_url(redis_server.url, socket_timeout=0.05), SLOW)

    async def run() -> None:
        with pytest.raises(redis.TimeoutError):
            await direct.acall([], [300_000])  # 0.3 s of script against a 50 ms timeout
        await asyncio.sleep(0.4)
        assert await direct.acall([], [0]) == 1  # a new connection

    asyncio.run(run())
    direct.close()


def test_acall_bounds_the_calls_in_flight_so_a_burst_does_not_time_out(redis_server: EmbeddedRedis) -> None:
    # 15 calls of 10 ms of script each, against a 100 ms timeout: sent all at once, the last ones
    # would wait ~150 ms inside Redis and time out; two at a time, each waits at most ~20 ms there.
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.1)
    direct = DirectScript(client, SLOW, in_flight=2)

    async def burst() -> list[object]:
        return await asyncio.gather(*[direct.acall([], [10_000]) for _ in range(15)])

    assert asyncio.run(burst()) == [1] * 15
    direct.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_reply_waiting_unread_behind_a_busy_loop_is_not_a_timeout(
    redis_server: EmbeddedRedis, loop: str
) -> None:
    # Redis answers at once, but the worker's loop is busy for 4x the timeout before it reads the
    # socket: the timer is due when the loop comes back, yet the reply is read first, so no timeout
    # (a timeout counted from the write would fail every call behind a long stretch of work).
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.05)
    direct = DirectScript(client, SOURCE)

    async def busy_then_read() -> object:
        await direct.acall(["warm"], ["x"])  # connected
        call = asyncio.ensure_future(direct.acall([f"busy-{loop}"], ["x"]))
        await asyncio.sleep(0)  # the call is written
        time.sleep(0.2)  # CPU work of other requests, holding the loop
        return await call

    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(busy_then_read())[0] == 1  # type: ignore[index]
    direct.close()


def test_acall_reconnects_after_a_restart_and_uses_password_and_db(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "r") as server:
        redis.Redis.from_url(server.url).config_set("requirepass", "s3cret")
        client = redis.Redis.from_url(server.url, password="s3cret", db=3)
        direct = DirectScript(client, SOURCE)

        async def first() -> None:
            assert (await direct.acall(["c"], ["x"]))[0] == 1

        asyncio.run(first())
        assert client.get("c") == b"1"  # in database 3
    with EmbeddedRedis(tmp_path / "r") as server:  # a new server: no password, and the old socket dead
        client = redis.Redis.from_url(server.url, db=3)
        direct = DirectScript(client, SOURCE)

        async def again() -> None:
            assert (await direct.acall(["c"], ["x"]))[0] == 1

        asyncio.run(again())
        direct.close()


def test_acall_falls_back_to_the_blocking_call_for_other_clients(redis_server: EmbeddedRedis) -> None:
    class Custom(redis.UnixDomainSocketConnection):
        pass  # a connection class the event-loop call does not know: it must not guess

    pool = redis.ConnectionPool(connection_class=Custom, path=str(redis_server.socket))
    client = redis.Redis(connection_pool=pool)
    direct = DirectScript(client, SOURCE)
    client.delete("r3")
    assert asyncio.run(direct.acall(["r3"], ["x"]))[0] == 1
    direct.close()
