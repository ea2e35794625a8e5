"""The service as real processes: a redis-server and `antifraud serve` on loopback, started and stopped.

One launcher for everything that runs the service end to end on one machine: `antifraud demo`, the
load benchmark (benchmarks/load_http.py) and the reliability tests (tests/reliability/helpers.py).

    with ServiceStack(workers=2, keys={"checkout": "scorer"}) as stack:
        ...  # stack.port, stack.keys["checkout"], stack.redis_url

or in phases, when Redis must be loaded before the service starts (the demo's backfill):

    with contextlib.closing(ServiceStack(...)) as stack:
        stack.start_redis()
        ...  # load stack.redis_url
        stack.start_server()

Everything lives in one directory (a fresh temporary one unless given): the Redis directory
`redis/`, the API key file `keys.yaml`, the workers' shared metrics `metrics/`, the log `server.log`.
The process helpers below read /proc, so the stack runs on Linux only.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

import redis

from antifraud.engine.auth import Role, new_key
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.redis_url import connect
from antifraud.engine.settings import HOOKS_PID_FILE, ROOT, SINK_PID_FILE

# Where the server's stdout and stderr go:
#   "inherit": this process's own (the demo prints them on the console);
#   "log": both appended to <directory>/server.log (tests read it);
#   "errors": stderr appended to server.log, stdout discarded (the benchmark: stdout is a banner).
Output = Literal["inherit", "log", "errors"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceStack:
    """A redis-server (embedded, or one given by URL) and `antifraud serve --workers N` as a subprocess.

    Options, all keyword-only:
    - workers: uvicorn worker processes; each listens on its own SO_REUSEPORT socket.
    - tcp_redis: the embedded Redis also listens on a free TCP port, and the service uses it
      (otherwise its unix socket); appendonly: AOF on; redis_config: `CONFIG SET` name -> value
      after every start of the embedded Redis (e.g. {"appendfsync": "always"});
      rdb: an RDB file copied into the Redis directory before its first start (restored state).
    - redis_url: serve on this Redis instead of starting one (the stack never stops it).
    - keys: API keys to create, name -> role; `stack.keys[name]` is the key itself.
    - model_dir, rules_dir: passed as --model and --rules (the service's defaults otherwise); both
      are attributes, so a caller may point them into `stack.dir` before `start_server()`.
    - env: variables for the server on top of this process's environment; None removes one.
    - shared_metrics: PROMETHEUS_MULTIPROC_DIR=<directory>/metrics even with one worker (with
      several it is always set, as `serve` needs; with one and this off it is removed, as `serve`
      itself runs one worker).
    - output: see `Output`; ready_timeout: seconds to wait for every worker at start.
    - directory: where the stack's files go (kept); otherwise a temporary directory named
      `prefix...`, removed by `close()`.
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        tcp_redis: bool = False,
        appendonly: bool = False,
        redis_config: Mapping[str, str | int] | None = None,
        rdb: Path | None = None,
        redis_url: str | None = None,
        keys: Mapping[str, Role] | None = None,
        model_dir: Path | None = None,
        rules_dir: Path | None = None,
        env: Mapping[str, str | None] | None = None,
        shared_metrics: bool = False,
        output: Output = "log",
        ready_timeout: float = 60.0,
        directory: Path | None = None,
        prefix: str = "antifraud-stack-",
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
            directory = Path(self._tmp.name)
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        self.tcp_redis = tcp_redis
        self.redis_config = dict(redis_config or {})
        self.rdb = rdb
        self.external_redis_url = redis_url
        self.redis: EmbeddedRedis | None = None
        if redis_url is None:
            port = free_port() if tcp_redis else 0
            self.redis = EmbeddedRedis(self.dir / "redis", appendonly=appendonly, port=port)
        self.port = free_port()
        self.keys_file = self.dir / "keys.yaml"
        self.keys = {name: new_key(self.keys_file, name, role) for name, role in (keys or {}).items()}
        self.model_dir = model_dir
        self.rules_dir = rules_dir
        self.env = dict(env or {})
        self.shared_metrics = shared_metrics
        self.output: Output = output
        self.ready_timeout = ready_timeout
        self.log = self.dir / "server.log"
        self.server: subprocess.Popen[bytes] | None = None
        self._restored = False

    # -- Redis

    @property
    def redis_url(self) -> str:
        """The URL the service is given (and a client may use)."""
        if self.external_redis_url is not None:
            return self.external_redis_url
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}" if self.tcp_redis else self.redis.url

    def redis_client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client on the stack's Redis (the caller closes it)."""
        return connect(self.redis_url, **kwargs)

    def start_redis(self) -> None:
        """Start the embedded redis-server (restored from `rdb` the first time) and apply redis_config.

        Also a restart after `stop_redis()`: same directory, so an AOF or RDB there is loaded."""
        if self.redis is None:
            return
        if self.rdb is not None and not self._restored:
            shutil.copyfile(self.rdb, self.redis.directory / "dump.rdb")
            self._restored = True
        self.redis.start()
        if self.redis_config:
            with contextlib.closing(self.redis_client()) as client:
                for name, value in self.redis_config.items():
                    client.config_set(name, value)

    def stop_redis(self) -> None:
        """Stop the embedded redis-server cleanly (SIGTERM: it flushes its AOF) and wait for it."""
        if self.redis is None:
            return
        if self.redis.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.redis.process.pid, signal.SIGCONT)  # a caller may have left it paused
        self.redis.stop()

    # -- the service

    def server_env(self) -> dict[str, str]:
        """The server's environment: this process's, the metrics directory, then `env`."""
        env = dict(os.environ)
        if self.workers > 1 or self.shared_metrics:
            (self.dir / "metrics").mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.dir / "metrics")
        else:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # what `serve` does with one worker
        for name, value in self.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def command(self) -> list[str]:
        """The `antifraud serve` command line."""
        command = [sys.executable, "-m", "antifraud.engine.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--redis", self.redis_url, "--workers", str(self.workers)]
        # the decision store (and its sink's files) in the stack's directory, never the working one's
        command += ["--data-dir", str(self.dir / "data")]
        if self.model_dir is not None:
            command += ["--model", str(self.model_dir)]
        if self.rules_dir is not None:
            command += ["--rules", str(self.rules_dir)]
        if self.keys:
            command += ["--api-keys", str(self.keys_file)]
        return command

    def start_server(self) -> None:
        """Start `antifraud serve` and wait until every worker listens and /ready answers 200."""
        with contextlib.ExitStack() as files:
            if self.output == "inherit":
                stdout, stderr = None, None
            else:
                log = files.enter_context(open(self.log, "ab"))
                stdout = log if self.output == "log" else subprocess.DEVNULL
                stderr = log
            self.server = subprocess.Popen(
                self.command(),
                env=self.server_env(),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop_server()
            raise

    def _wait_ready(self) -> None:
        assert self.server is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(
                    f"the service exited at start (status {self.server.returncode}):\n{self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                status, _ = http_get(self.port, "/ready")
                # Every worker must be up before a client connects: each listens on its own
                # SO_REUSEPORT socket once its app has started, and the kernel spreads new
                # connections only over the sockets listening when they arrive.
                if status == 200 and listening(self.port) >= self.workers:
                    time.sleep(0.5)
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"the service did not become ready within {self.ready_timeout:.0f} s:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if self.output == "inherit":
            return "(its output is above)"
        return self.log_text()[-3000:] or f"(nothing in {self.log})"

    def log_text(self) -> str:
        """What the server wrote to its log file so far ("" when there is none)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop_server(self) -> None:
        """SIGINT (`serve` stops its workers, each finishing what it has in flight), SIGKILL after 15 s."""
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)
        self.server = None

    def sink_pid(self) -> int | None:
        """The decision sink `serve` runs beside its workers (its pid file), or None when it runs none."""
        return self._child_pid(SINK_PID_FILE)

    def hooks_pid(self) -> int | None:
        """The webhook delivery worker `serve` runs beside its workers, or None when it runs none."""
        return self._child_pid(HOOKS_PID_FILE)

    def _child_pid(self, pid_file: str) -> int | None:
        try:
            pid = int((self.dir / "data" / pid_file).read_text())
        except (OSError, ValueError):
            return None
        return pid if self.server is not None and pid in descendants(self.server.pid) else None

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the workers (or the server itself with one worker)."""
        assert self.server is not None, "the service is not running"
        if self.workers == 1:
            return [self.server.pid]
        children = {self.sink_pid(), self.hooks_pid()}
        return [
            p
            for p in descendants(self.server.pid)
            if p not in children and b"resource_tracker" not in cmdline(p)
        ]

    def cpu_pids(self) -> dict[str, list[int]]:
        """The stack's processes by role: "server" (the workers), "sink" (the decision sink),
        "supervisor" (the rest of the server's tree, the webhook worker included), "redis" (empty with
        an external Redis)."""
        assert self.server is not None, "the service is not running"
        workers = self.worker_pids()
        sink = self.sink_pid()
        every = [self.server.pid, *descendants(self.server.pid)]
        supervisor = [p for p in every if p not in workers and p != sink]
        embedded = self.redis.process if self.redis is not None else None
        return {
            "server": workers,
            "sink": [sink] if sink is not None else [],
            "supervisor": supervisor,
            "redis": [embedded.pid] if embedded else [],
        }

    def pids(self) -> list[int]:
        """Every live process of the stack (server, its descendants, the embedded Redis)."""
        out = []
        if self.server is not None:
            out += [self.server.pid, *descendants(self.server.pid)]
        if self.redis is not None and self.redis.process is not None:
            out.append(self.redis.process.pid)
        return out

    # -- the whole

    def start(self) -> None:
        """Start Redis, then the service; stops both if the service does not come up."""
        self.start_redis()
        try:
            self.start_server()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the service, then the embedded Redis (the directory stays)."""
        self.stop_server()
        self.stop_redis()

    def close(self) -> None:
        """Stop everything and remove the temporary directory (if the stack made it)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ServiceStack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Processes and sockets, from /proc (Linux)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A blocking GET on 127.0.0.1 (start-up checks only): status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def listening(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port or *:port (IPv4, from /proc/net/tcp)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as f:
        next(f)  # the header
        # local address is the 2nd field, the state the 4th (0A: LISTEN)
        return sum(1 for line in f if (cols := line.split())[1] in wanted and cols[3] == "0A")


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> bytes:
    """A process's command line, NUL-separated (empty if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
