"""DirectScript answers exactly as redis-py's Script does, and survives what a live Redis does to it:
a flushed script cache, a restart, a Lua error, concurrent threads and a forked worker."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
import redis

from antifraud.engine.redis_script import DirectScript
from antifraud.engine.redis_server import EmbeddedRedis

# Echoes its keys and arguments back with a counter, so every reply is distinguishable.
SOURCE = """
local n = redis.call('INCR', KEYS[1])
if ARGV[1] == 'fail' then return redis.error_reply('asked to fail') end
return {n, KEYS, ARGV, {tonumber(ARGV[2]) or 0, 'x'}}
"""


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
