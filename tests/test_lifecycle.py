"""Start and stop like a service (issue 13, point 7), against real processes.

`antifraud serve` runs as a subprocess on its embedded redis-server; the tests send it the signals
systemd, Docker and Kubernetes (SIGTERM) and a terminal (SIGINT) send, and then look in /proc for
anything it left behind. /ready is checked in process against a real redis-server, up and down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from antifraud.engine.api import create_app
from antifraud.engine.redis_server import MAX_SOCKET_PATH, EmbeddedRedis, RedisAlreadyRunning, servers_in
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.stack import descendants, free_port, listening

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

# Wide margins: the machine is shared, and a start loads the model and the rules.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited and holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Serve:
    """`antifraud serve` on the embedded Redis, in `cwd`, with no key file (local development)."""

    def __init__(
        self, cwd: Path, workers: int = 1, data_dir: Path | None = None, extra: list[str] | None = None
    ) -> None:
        self.cwd = cwd
        self.workers = workers
        self.port = free_port()
        self.data_dir = data_dir if data_dir is not None else cwd / "var"  # the default: ./var
        self.log = cwd / f"serve-{self.port}.log"
        args = [sys.executable, "-m", "antifraud.engine.cli", "serve", "--port", str(self.port)]
        args += ["--workers", str(workers)]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        args += extra or []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTIFRAUD_", "PROMETHEUS_"))}
        env["ANTIFRAUD_ALLOW_NO_AUTH"] = "1"
        with self.log.open("wb") as sink:
            # its own session: a signal sent to it reaches it alone, as from systemd or `kill`
            self.process = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        """What the service printed so far."""
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> dict[str, object]:
        """Wait until every worker listens and /ready answers 200; its body."""
        body: dict[str, object] = {}

        def ready() -> bool:
            nonlocal body
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=5)
            except httpx.TransportError:
                return False
            body = response.json()
            return response.status_code == 200 and listening(self.port) >= self.workers

        wait_until(ready, START_TIMEOUT, "antifraud serve ready")
        return body

    def redis_pid(self) -> int:
        """The embedded redis-server's pid, from its pid file, checked against /proc."""
        record = json.loads((self.data_dir / "redis" / "redis.pid").read_text())
        assert record["owner"] == self.process.pid
        assert servers_in(self.data_dir / "redis") == [record["pid"]]
        return int(record["pid"])

    def kill(self) -> None:
        """SIGKILL the whole session, whatever a failed test left running."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture
def services() -> Iterator[list[Serve]]:
    """Every service a test starts; killed at the end if it is still running."""
    started: list[Serve] = []
    yield started
    for service in started:
        service.kill()


@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2), (signal.SIGINT, 2)],
    ids=["SIGTERM-1-worker", "SIGINT-1-worker", "SIGTERM-2-workers", "SIGINT-2-workers"],
)
def test_a_stop_signal_stops_the_workers_and_the_embedded_redis(
    tmp_path: Path, services: list[Serve], signum: int, workers: int
) -> None:
    service = Serve(tmp_path, workers=workers)
    services.append(service)
    body = service.wait_ready()
    assert body == {"ready": True, "checks": {"redis": True, "model": True, "rules": True}}
    redis_pid = service.redis_pid()
    # the default data directory is ./var under the working directory, not the package's folder
    assert Path(os.readlink(f"/proc/{redis_pid}/cwd")) == (tmp_path / "var" / "redis").resolve()
    tree = descendants(service.process.pid)
    # the redis-server, and with several workers the worker processes (one worker runs in `serve`)
    assert redis_pid in tree and len(tree) >= 1 + (workers if workers > 1 else 0)

    started = time.monotonic()
    service.process.send_signal(signum)
    status = service.process.wait(timeout=STOP_TIMEOUT)
    took = time.monotonic() - started
    assert status == 0, service.output()[-3000:]
    wait_until(lambda: not any(alive(pid) for pid in tree), 10, f"{tree} to exit")
    assert servers_in(tmp_path / "var" / "redis") == []
    assert not (tmp_path / "var" / "redis" / "redis.pid").exists()  # the clean-up ran
    print(f"{signal.Signals(signum).name} with {workers} worker(s): exited 0 in {took:.2f} s")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_service_that_cannot_start_exits_1_and_stops_its_redis(
    tmp_path: Path, services: list[Serve], workers: int
) -> None:
    service = Serve(tmp_path, workers=workers, extra=["--rules", str(tmp_path / "no-such-rules")])
    services.append(service)
    assert service.process.wait(timeout=START_TIMEOUT) == 1, service.output()[-3000:]
    assert "not a directory" in service.output()
    assert servers_in(tmp_path / "var" / "redis") == []


def test_a_sigkilled_service_leaves_no_redis_and_the_next_start_has_one(
    tmp_path: Path, services: list[Serve]
) -> None:
    first = Serve(tmp_path)
    services.append(first)
    first.wait_ready()
    redis_pid = first.redis_pid()
    first.process.kill()  # SIGKILL the service alone: no clean-up code runs
    first.process.wait(timeout=STOP_TIMEOUT)
    # the redis-server was told to stop with its parent (Linux's parent-death signal)
    wait_until(lambda: not alive(redis_pid), 10, "the embedded Redis of a SIGKILLed service to stop")
    assert (tmp_path / "var" / "redis" / "redis.pid").exists()  # left behind, with its socket

    second = Serve(tmp_path)
    services.append(second)
    second.wait_ready()
    assert len(servers_in(tmp_path / "var" / "redis")) == 1
    assert second.redis_pid() != redis_pid
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=STOP_TIMEOUT) == 0


def _leave_a_redis_behind(directory: Path) -> int:
    """A redis-server in `directory` whose starter has died without stopping it, as after a crash
    of a build without the parent-death signal: started from a thread, which does not arm it."""
    script = (
        "import os, sys, threading\n"
        "from antifraud.engine.redis_server import EmbeddedRedis\n"
        "server = EmbeddedRedis(sys.argv[1])\n"
        "starter = threading.Thread(target=server.start)\n"
        "starter.start(); starter.join()\n"
        "print(server.process.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    # stderr not captured: the server inherits it, and would hold a captured pipe open for ever
    done = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


def test_a_redis_left_behind_by_a_dead_run_is_stopped_and_replaced(
    tmp_path: Path, services: list[Serve]
) -> None:
    orphan = _leave_a_redis_behind(tmp_path / "var" / "redis")
    try:
        assert alive(orphan) and servers_in(tmp_path / "var" / "redis") == [orphan]
        service = Serve(tmp_path)
        services.append(service)
        service.wait_ready()
        assert not alive(orphan)
        assert servers_in(tmp_path / "var" / "redis") == [service.redis_pid()]
        assert f"stopped redis-server pid {orphan}" in " ".join(service.output().split())
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(timeout=STOP_TIMEOUT) == 0
        assert servers_in(tmp_path / "var" / "redis") == []
    finally:
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)


def test_a_redis_of_a_live_service_is_refused_with_a_clear_message(
    tmp_path: Path, services: list[Serve]
) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedRedis(data_dir / "redis") as running:  # started by this live process
        assert running.process is not None
        service = Serve(tmp_path, data_dir=data_dir)
        services.append(service)
        assert service.process.wait(timeout=START_TIMEOUT) == 1
        said = " ".join(service.output().split())
        assert f"a redis-server (pid {running.process.pid}) started by process {os.getpid()}" in said
        assert "--data-dir" in said
        # untouched: still the only server there, still answering
        assert servers_in(data_dir / "redis") == [running.process.pid]
        with closing(redis.Redis.from_url(running.url)) as client:
            assert client.ping()
        with pytest.raises(RedisAlreadyRunning, match="already runs in"):
            EmbeddedRedis(data_dir / "redis").start()


def test_a_stale_socket_file_with_no_server_is_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    directory.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:  # bound and closed: the file stays, nobody listens
        dead.bind(str(directory / "redis.sock"))
    (directory / "redis.pid").write_text('{"pid": 999999999, "owner": 1}\n')  # a dead run's
    with EmbeddedRedis(directory) as server, closing(redis.Redis.from_url(server.url)) as client:
        assert client.ping() and server.replaced is None


def test_two_data_directories_never_share_a_server(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a" / "redis") as a, EmbeddedRedis(tmp_path / "b" / "redis") as b:
        assert a.socket != b.socket
        assert a.process is not None and b.process is not None
        assert servers_in(tmp_path / "a" / "redis") == [a.process.pid]
        assert servers_in(tmp_path / "b" / "redis") == [b.process.pid]


def test_a_data_directory_too_long_for_a_socket_falls_back_to_a_short_private_one(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5) / "redis"
    assert len(os.fsencode(deep / "redis.sock")) > MAX_SOCKET_PATH
    with EmbeddedRedis(deep) as server, closing(redis.Redis.from_url(server.url)) as client:
        assert server.socket_is_fallback and len(os.fsencode(server.socket)) <= MAX_SOCKET_PATH
        assert client.ping()
        assert server.socket.parent.stat().st_mode & 0o077 == 0  # private to this user
        # the same directory finds the same socket (so a left-behind server is found), another not
        assert EmbeddedRedis(deep).socket == server.socket
        assert EmbeddedRedis(deep.parent / "other").socket != server.socket


def test_a_service_too_long_for_a_socket_says_where_its_redis_listens(
    tmp_path: Path, services: list[Serve]
) -> None:
    data_dir = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5)
    service = Serve(tmp_path, data_dir=data_dir)
    services.append(service)
    service.wait_ready()
    said = " ".join(service.output().split())
    assert "too long for a unix socket" in said
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=STOP_TIMEOUT) == 0
    assert servers_in(data_dir / "redis") == []


# ------------------------------------------------------------------------------------------------
# /ready


def test_ready_answers_200_with_every_check_true_and_503_naming_the_failing_one(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    settings = Settings(
        redis_url=None, model_dir=ROOT / "models" / "default", rules_dir=ROOT / "rules", api_keys_file=None
    )
    try:
        with TestClient(create_app(settings, client=client)) as http:
            up = http.get("/ready")
            assert up.status_code == 200
            assert up.json() == {"ready": True, "checks": {"redis": True, "model": True, "rules": True}}
            server.stop()
            down = http.get("/ready")
            assert down.status_code == 503
            body = down.json()
            assert body["ready"] is False
            assert body["checks"]["model"] is True and body["checks"]["rules"] is True
            assert str(body["checks"]["redis"]).startswith("unreachable: ")
            # documented in the OpenAPI, same shape both ways
            responses = http.get("/openapi.json").json()["paths"]["/ready"]["get"]["responses"]
            assert {"200", "503"} <= set(responses)
    finally:
        client.close()
        server.stop()


def test_embedded_redis_started_from_a_thread_outlives_the_thread(tmp_path: Path) -> None:
    """The parent-death signal follows the starting thread: it is armed from the main thread only."""
    server = EmbeddedRedis(tmp_path / "redis")
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    try:
        time.sleep(0.5)
        assert server.process is not None and server.process.poll() is None
        with closing(redis.Redis.from_url(server.url)) as client:
            assert client.ping()
    finally:
        server.stop()


def test_serve_runs_the_sink_by_default_drains_decisions_into_the_store_and_stops_it(
    tmp_path: Path, services: list[Serve]
) -> None:
    from antifraud.engine.store import open_store

    service = Serve(tmp_path)
    services.append(service)
    service.wait_ready()
    body = {
        "transaction_id": "sunk-1",
        "timestamp": "2026-03-01T12:00:00Z",
        "card_id": "card_a",
        "merchant_id": "m_1",
        "amount": 12.5,
        "currency": "EUR",
    }
    answered = httpx.post(f"http://127.0.0.1:{service.port}/v1/score", json=body, timeout=10)
    assert answered.status_code == 200, answered.text
    store = open_store(str(tmp_path / "var" / "decisions"))  # the default: DATA_DIR/decisions
    try:
        wait_until(lambda: store.decision("sunk-1") is not None, 30, "the sink to write the decision")
        stored = store.decision("sunk-1")
        assert stored is not None and stored["verdict"] == answered.json()["verdict"]
    finally:
        store.close()
    # the decision is read back through the service once the sink has moved it out of the buffer
    read = httpx.get(f"http://127.0.0.1:{service.port}/v1/decisions/sunk-1", timeout=10)
    assert read.status_code == 200 and read.json()["verdict"] == answered.json()["verdict"]
    tree = descendants(service.process.pid)  # the redis-server and the sink
    sink_pid = int((tmp_path / "var" / "sink.pid").read_text())
    assert len(tree) >= 2 and sink_pid in tree
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=STOP_TIMEOUT) == 0, service.output()[-3000:]
    wait_until(lambda: not any(alive(pid) for pid in tree), 10, f"{tree} to exit")
    assert "decision sink" in service.output()
    assert not (tmp_path / "var" / "sink.pid").exists()
