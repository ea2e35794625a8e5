"""Load benchmark of the scoring service over HTTP: open-loop fixed-rate replay of sample payments.

    .venv/bin/python benchmarks/load_http.py                      # the full matrix (about 5-9 min)
    .venv/bin/python benchmarks/load_http.py --quick              # one repeat, shorter cells
    .venv/bin/python benchmarks/load_http.py --self-test          # the load generator alone
    .venv/bin/python benchmarks/load_http.py --components 3000    # each step of a request, in-process
    .venv/bin/python benchmarks/load_http.py --workers 1 --profile 600   # py-spy, one worker at 600/s

What it does, all on loopback and stopping by itself:

1. loads the sample history and splits it: every payment and feedback event before the last
   `--replay-days` days is loaded into a real redis-server with `OnlineFeatures.backfill` (the
   Redis snapshot is cached in var/loadtest/ keyed by the sample, the feature spec and score.lua,
   so a second run skips the 80-110 s backfill; `--no-cache` rebuilds it);
2. for each repeat and worker count: a fresh redis-server restored from that snapshot, and
   `antifraud serve --workers N --redis URL --api-keys FILE` as a subprocess with a fresh key;
3. for each offered rate: the replay window's payments, in time order, re-stamped with unique
   transaction ids (never duplicates) and, when the window is replayed again, timestamps moved on
   by the window's length (time only moves forward, so velocity features stay realistic), sent at a
   FIXED RATE: request i is due at t0 + i/rate whatever happened to earlier ones (open loop), on
   `--connections` keep-alive connections; a due request waits for a free connection in a client
   queue. Latency is measured from the scheduled time, so queueing anywhere (client, kernel,
   server) is counted and coordinated omission is not hidden. Requests not answered by the end of
   the cell plus `--drain` seconds count as timeouts with infinite latency.

Each cell reports achieved throughput (200 answers completed inside the measured window / its
length), p50/p99/p99.9/max latency, errors and timeouts, where time goes per stage (from each
answer's `timings`: features, model, rules, the rest of the scorer, decision log; and "outside",
which is the client-observed service time minus the scorer's own stages: HTTP parsing, validation,
authentication, response serialization, metrics and event-loop waits), and CPU per request of the
client, the server workers and Redis, and the cores used meanwhile by every other process on the
machine (from /proc, so Linux only). On a shared machine each cell first waits, for at most
`--quiet-wait` seconds, until other processes use under `--quiet-cores`.

Saturation rate: the highest offered rate at which the median over repeats of the achieved
throughput is at least 95 % of the offered rate, p99 is within `--saturation-p99-ms` (default 50 ms,
the service's own time budget `ANTIFRAUD_BUDGET_MS`) and under 0.1 % of requests failed. The
highest rate meeting the latency aim (`--aim-p99-ms`, 5 ms) is reported beside it. Once a rate
delivers under 80 % of its target, higher rates are skipped for that worker count in that repeat.

The load generator is one Python process (uvloop, raw HTTP/1.1 on asyncio protocols, request bytes
built before each cell, answers parsed after it) sharing the machine's cores with the server and
Redis; `--self-test` measures what it can do against a null server, and each cell reports the
generator's own CPU per request and its dispatch lag (send time - scheduled time).
A figure, not a test. Results are also written as JSON to reports/ (`--out` to choose).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.auth import new_key
from engine.redis_server import EmbeddedRedis
from engine.schema import TRANSACTION_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "history.parquet"
CACHE = ROOT / "var" / "loadtest"
REPORTS = ROOT / "reports"
DEFAULT_RATES = (250, 500, 1000, 1500, 2000, 2500, 3000)
STAGES = ("features", "model", "rules", "scorer_other", "log", "outside")
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Payments to replay


@dataclass
class Replay:
    """The replay window's payments as JSON-ready dicts (time order) and what Redis was loaded with."""

    bodies: list[dict[str, Any]]
    times_ms: np.ndarray  # each payment's own event time
    window_ms: int  # length of the window: the shift applied each time it is replayed again
    start_ms: int  # the window's start; everything before it is in Redis
    backfilled: int = 0  # events (payments and feedback) loaded into Redis before the window


def load_replay(replay_days: int) -> tuple[pd.DataFrame, Replay]:
    """The sample history and the payments of its last `replay_days` days, ready to send."""
    from training.history import load_history

    history = load_history(SAMPLE)
    last = history["timestamp"].max().normalize() + pd.Timedelta(days=1)
    start = last - pd.Timedelta(days=replay_days)
    window = history[history["timestamp"] >= start]
    columns = [c for c in TRANSACTION_COLUMNS if c in window.columns and c != "timestamp"]
    frame = window[columns].astype(object).where(window[columns].notna(), None)
    bodies = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items() if v is not None}
        for rec in frame.to_dict("records")
    ]
    times_ms = (window["timestamp"].astype("int64") // 1_000_000).to_numpy()
    start_ms = int(start.timestamp() * 1000)
    return history, Replay(bodies, times_ms, replay_days * 86_400_000, start_ms)


class RequestSource:
    """Endless stream of unique, time-ordered payments from the replay window, as HTTP requests."""

    def __init__(self, replay: Replay, host: str, port: int, key: str, tag: str) -> None:
        self.replay = replay
        self.tag = tag
        self.position = 0
        self.head = (
            f"POST /v1/score HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()

    def take(self, n: int) -> list[bytes]:
        """The next n requests (built before a cell so the generator does no JSON work during it)."""
        out = []
        size = len(self.replay.bodies)
        for _ in range(n):
            lap, row = divmod(self.position, size)
            body = dict(self.replay.bodies[row])
            body["transaction_id"] = f"lt-{self.tag}-{self.position}"
            ms = int(self.replay.times_ms[row]) + lap * self.replay.window_ms
            body["timestamp"] = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
            payload = json.dumps(body, separators=(",", ":")).encode()
            out.append(self.head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            self.position += 1
        return out


# --------------------------------------------------------------------------------------------------
# Redis and the service


def snapshot(history: pd.DataFrame, replay: Replay, use_cache: bool) -> Path:
    """An RDB file of Redis loaded with every event before the replay window (cached in var/)."""
    from features.online import OnlineFeatures

    digest = hashlib.sha256()
    for path in (SAMPLE, ROOT / "features" / "spec.yaml", ROOT / "features" / "score.lua"):
        digest.update(path.read_bytes())
    digest.update(str(replay.start_ms).encode())
    target = CACHE / f"snapshot-{digest.hexdigest()[:16]}.rdb"
    meta = target.with_suffix(".json")
    if use_cache and target.exists() and meta.exists():
        replay.backfilled = int(json.loads(meta.read_text())["events"])
        print(f"Redis snapshot: cached {target.relative_to(ROOT)} ({replay.backfilled:,} events)")
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="antifraud-load-") as tmp, EmbeddedRedis(Path(tmp)) as rds:
        import redis

        client = redis.Redis.from_url(rds.url)
        replay.backfilled = OnlineFeatures(client).backfill(history, until_ms=replay.start_ms)
        client.save()
        client.close()
        shutil.copyfile(Path(tmp) / "dump.rdb", target)
    meta.write_text(json.dumps({"events": replay.backfilled, "until_ms": replay.start_ms}))
    print(
        f"Redis snapshot: backfilled {replay.backfilled:,} events in "
        f"{time.perf_counter() - started:.0f} s -> {target.relative_to(ROOT)}"
    )
    return target


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """redis-server (restored from the snapshot) and `antifraud serve` with N workers and a fresh key."""

    def __init__(self, rdb: Path, workers: int, tcp_redis: bool) -> None:
        self.rdb, self.workers, self.tcp_redis = rdb, workers, tcp_redis
        self.tmp = tempfile.TemporaryDirectory(prefix="antifraud-load-")
        self.port = free_port()
        self.key = ""
        self.redis: EmbeddedRedis | None = None
        self.server: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Stack:
        tmp = Path(self.tmp.name)
        (tmp / "redis").mkdir()
        shutil.copyfile(self.rdb, tmp / "redis" / "dump.rdb")
        self.redis = EmbeddedRedis(tmp / "redis", port=free_port() if self.tcp_redis else 0).start()
        url = f"redis://127.0.0.1:{self.redis.port}" if self.tcp_redis else self.redis.url
        keys = tmp / "keys.yaml"
        self.key = new_key(keys, "loadtest", "scorer")
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
        (tmp / "metrics").mkdir()
        if self.workers == 1:
            env.pop("PROMETHEUS_MULTIPROC_DIR")  # what `serve` does with one worker
        command = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--redis", url, "--workers", str(self.workers)]
        command += ["--api-keys", str(keys)]
        with open(tmp / "server.log", "wb") as log:
            self.server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self.server is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                log = (Path(self.tmp.name) / "server.log").read_text()[-2000:]
                raise RuntimeError(f"the service exited at start:\n{log}")
            with contextlib.suppress(OSError):
                status, _ = http_get(self.port, "/ready")
                # Every worker must be up before the clock starts: each listens on its own
                # SO_REUSEPORT socket once its app has started, and the kernel spreads new
                # connections only over the sockets listening when they arrive.
                if status == 200 and listening(self.port) >= self.workers:
                    time.sleep(0.5)
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the service did not become ready within {timeout:.0f} s")

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the workers (or the server itself with one)."""
        assert self.server is not None
        if self.workers == 1:
            return [self.server.pid]
        return [p for p in descendants(self.server.pid) if b"resource_tracker" not in cmdline(p)]

    def cpu_pids(self) -> dict[str, list[int]]:
        """Processes whose CPU time a cell accounts, by role."""
        assert self.server is not None and self.redis is not None and self.redis.process is not None
        workers = self.worker_pids()
        every = [self.server.pid, *descendants(self.server.pid)]
        supervisor = [p for p in every if p not in workers]
        return {"server": workers, "supervisor": supervisor, "redis": [self.redis.process.pid]}

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            if self.server.poll() is None:
                self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.redis is not None:
            self.redis.stop()
        self.tmp.cleanup()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A blocking GET on loopback (start-up checks only)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def descendants(pid: int) -> list[int]:
    """Every live descendant of a process (from /proc)."""
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
    """A process's command line (empty if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def listening(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port or *:port (IPv4, from /proc/net/tcp)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as f:
        next(f)  # the header
        # local address is the 2nd field, the state the 4th (0A: LISTEN)
        return sum(1 for line in f if (cols := line.split())[1] in wanted and cols[3] == "0A")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of processes (their own threads, not their children)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


# --------------------------------------------------------------------------------------------------
# The open-loop load generator


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.index = -1  # the request in flight, or -1
        self.need = -1  # total bytes of the answer being read, once its head is complete
        self.status = 0
        self.body_at = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.cell.conns.append(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, index: int) -> None:
        assert self.transport is not None
        self.index = index
        self.cell.sent[index] = time.perf_counter()
        self.transport.write(self.cell.requests[index])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError("answer without content-length")
            stop = head.find(b"\r\n", at + 2)
            self.body_at = end + 4
            self.need = self.body_at + int(head[at + 17 : stop if stop > 0 else None])
        if len(self.buffer) >= self.need:
            body = bytes(self.buffer[self.body_at : self.need])
            del self.buffer[: self.need]
            index, self.index, self.need = self.index, -1, -1
            self.cell.answered(self, index, self.status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.cell.lost(self)


class Cell:
    """One run at one offered rate: schedule, connections, and what happened to each request."""

    def __init__(self, requests: list[bytes], rate: float, measured_from: int) -> None:
        n = len(requests)
        self.requests, self.rate, self.measured_from = requests, rate, measured_from
        self.sched = np.full(n, np.nan)
        self.sent = np.full(n, np.nan)
        self.done = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int16)
        self.bodies: list[bytes | None] = [None] * n
        self.pending: collections.deque[int] = collections.deque()
        self.idle: collections.deque[Connection] = collections.deque()
        self.conns: list[Connection] = []  # every connection opened, to close them all at the end
        self.remaining = n
        self.finished = asyncio.Event()
        self.reconnects = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.loop = asyncio.get_running_loop()

    def dispatch_range(self, start: int, stop: int) -> None:
        """Send requests start..stop-1 (they are due), each on an idle connection or queued."""
        for index in range(start, stop):
            self.dispatch(index)

    def dispatch(self, index: int) -> None:
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed:
                conn.send(index)
                return
        self.pending.append(index)

    def answered(self, conn: Connection, index: int, status: int, body: bytes) -> None:
        self.done[index] = time.perf_counter()
        self.status[index] = status
        self.bodies[index] = body
        self.remaining -= 1
        if self.remaining == 0:
            self.finished.set()
        if self.pending:
            conn.send(self.pending.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: Connection) -> None:
        if self.finished.is_set():  # closed by us at the end: what was in flight is a timeout
            return
        if conn.index >= 0:  # the request in flight failed
            self.done[conn.index] = time.perf_counter()
            self.status[conn.index] = -1
            self.remaining -= 1
            if self.remaining == 0:
                self.finished.set()
        self.reconnects += 1
        self._spawn(self.connect())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self.tasks.discard)

    async def connect(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: Connection(self), "127.0.0.1", self.port)
        except OSError:
            await asyncio.sleep(0.05)
            if not self.finished.is_set():
                self._spawn(self.connect())
            return
        if self.pending:
            conn.send(self.pending.popleft())
        else:
            self.idle.append(conn)


@dataclass
class CpuMark:
    """CPU seconds of each role and the wall clock at one instant."""

    wall: float
    cpu: dict[str, float]


def cpu_mark(pids: dict[str, list[int]]) -> CpuMark:
    """CPU seconds of each role, and of the whole machine as "machine" (all processes, all cores)."""
    cpu = {role: cpu_seconds(p) for role, p in pids.items()}
    cpu["machine"] = machine_busy_seconds()
    return CpuMark(time.perf_counter(), cpu)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all but idle and iowait, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


async def run_cell(
    port: int,
    requests: list[bytes],
    rate: float,
    measured_from: int,
    connections: int,
    drain_s: float,
    pids: dict[str, list[int]],
) -> tuple[Cell, CpuMark, CpuMark]:
    """Send `requests` at `rate`/s, open loop; returns the cell and CPU marks around the measured part."""
    cell = Cell(requests, rate, measured_from)
    cell.port = port
    loop = asyncio.get_running_loop()
    # One at a time, as a client pool grows: opened in one burst, every connection can land on the
    # one uvicorn worker that happens to be awake (it accepts in a loop until the backlog is empty).
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: Connection(cell), "127.0.0.1", port)
        cell.idle.append(conn)
    n = len(requests)
    t0 = time.perf_counter() + 0.05
    cell.sched[:] = t0 + np.arange(n) / rate
    marks: dict[str, CpuMark] = {}
    clock_done: asyncio.Future[None] = loop.create_future()
    clock = threading.Thread(
        target=_clock, args=(cell, loop, pids, marks, clock_done), name="load-clock", daemon=True
    )
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)  # the clock thread gets the GIL within 0.2 ms, not 5 ms
    clock.start()
    try:
        await clock_done
    finally:
        sys.setswitchinterval(switch)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(cell.finished.wait(), timeout=drain_s)
    cell.finished.set()
    for conn in cell.conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0.01)
    clock.join()
    return cell, marks["first"], marks["last"]


def _clock(
    cell: Cell,
    loop: asyncio.AbstractEventLoop,
    pids: dict[str, list[int]],
    marks: dict[str, CpuMark],
    done: asyncio.Future[None],
) -> None:
    """The schedule, on a thread of its own: hands each due request to the event loop on time.

    The event loop's own timers have millisecond resolution (uvloop truncates shorter sleeps to
    zero and spins); a thread sleeping in the kernel wakes within tens of microseconds, and one
    call_soon_threadsafe per wake-up hands over every request that is due.
    """
    sched = cell.sched.tolist()
    n, i = len(sched), 0
    marks["first"] = cpu_mark(pids)
    while i < n:
        delay = sched[i] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        now = time.perf_counter()
        j = i
        while j < n and sched[j] <= now:
            j += 1
        if i <= cell.measured_from < j:
            marks["first"] = cpu_mark(pids)
        loop.call_soon_threadsafe(cell.dispatch_range, i, j)
        i = j
    delay = sched[-1] + (sched[-1] - sched[0]) / max(1, n - 1) - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    marks["last"] = cpu_mark(pids)
    loop.call_soon_threadsafe(done.set_result, None)


# --------------------------------------------------------------------------------------------------
# Results


def pct(values: np.ndarray, q: float) -> float:
    """Percentile without interpolation (an infinite value - a timeout - stays infinite)."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(values, q, method="higher"))


@dataclass
class CellResult:
    """The figures of one cell (times in ms, rates per second)."""

    workers: int
    rate: float
    repeat: int
    measured: int
    achieved: float
    ok: int
    errors: int
    timeouts: int
    p50: float
    p99: float
    p999: float
    max: float
    service_p50: float  # from the request's send time, not its scheduled time
    service_p99: float
    lag_p50: float  # send - scheduled: the client's queue (all connections busy) and timer precision
    lag_p99: float
    stage_p50: dict[str, float] = field(default_factory=dict)
    stage_p99: dict[str, float] = field(default_factory=dict)
    stage_mean: dict[str, float] = field(default_factory=dict)
    total_allow_p50: float = math.nan  # the scorer's total for allowed payments
    total_flagged_p50: float = math.nan  # ... and for review/block
    verdicts: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    cpu_util: dict[str, float] = field(default_factory=dict)  # cores busy, by role
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    worker_share: list[float] = field(default_factory=list)  # CPU share of each worker
    reconnects: int = 0
    # of the requests slower than p99: the share that were review/block themselves, and the share
    # that were waiting or in flight while a review/block answer was being computed
    slow_flagged: float = math.nan
    slow_overlapping_flagged: float = math.nan
    redis_us_per_call: dict[str, float] = field(default_factory=dict)


def summarize(
    cell: Cell,
    first: CpuMark,
    last: CpuMark,
    workers: int,
    repeat: int,
    per_worker: list[float],
) -> CellResult:
    """Latency, throughput, stages and CPU of a finished cell (measured part only)."""
    m = slice(cell.measured_from, None)
    sched, sent, done, status = cell.sched[m], cell.sent[m], cell.done[m], cell.status[m]
    answered = ~np.isnan(done)
    latency = np.where(answered, (done - sched) * 1000, np.inf)
    service = (done - sent)[answered] * 1000
    lag = (sent - sched)[~np.isnan(sent)] * 1000
    ok_mask = status == 200
    window = last.wall - first.wall
    in_window = ok_mask & answered & (done >= first.wall) & (done <= last.wall)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    totals: dict[str, list[float]] = {"allow": [], "flagged": []}
    verdicts: collections.Counter[str] = collections.Counter()
    flagged = np.zeros(len(latency), dtype=bool)
    degraded = 0
    for k, body in enumerate(cell.bodies[m]):
        if body is None or status[k] != 200:
            continue
        answer = json.loads(body)
        t = answer["timings"]
        verdicts[answer["verdict"]] += 1
        degraded += answer["degraded"] is not False
        scorer = t["total_ms"] + t.get("log_ms", 0.0)
        stages["features"].append(t["features_ms"])
        stages["model"].append(t["model_ms"])
        stages["rules"].append(t["rules_ms"])
        stages["scorer_other"].append(t["total_ms"] - t["features_ms"] - t["model_ms"] - t["rules_ms"])
        stages["log"].append(t.get("log_ms", 0.0))
        stages["outside"].append((done[k] - sent[k]) * 1000 - scorer)
        totals["allow" if answer["verdict"] == "allow" else "flagged"].append(t["total_ms"])
        flagged[k] = answer["verdict"] != "allow"
    n_ok = int(ok_mask.sum())
    slow = _slow_attribution(latency, flagged, sched, sent, done)
    cpu = {role: last.cpu[role] - first.cpu[role] for role in last.cpu}
    # everything else running on the machine meanwhile (the noise of a shared VM)
    cpu["others"] = max(0.0, cpu.pop("machine") - sum(cpu.values()))
    return CellResult(
        workers=workers,
        rate=cell.rate,
        repeat=repeat,
        measured=len(latency),
        achieved=float(in_window.sum() / window) if window > 0 else math.nan,
        ok=n_ok,
        errors=int((answered & ~ok_mask).sum()),
        timeouts=int((~answered).sum()),
        p50=pct(latency, 50),
        p99=pct(latency, 99),
        p999=pct(latency, 99.9),
        max=float(latency.max()),
        service_p50=pct(service, 50),
        service_p99=pct(service, 99),
        lag_p50=pct(lag, 50),
        lag_p99=pct(lag, 99),
        stage_p50={s: pct(np.array(v), 50) for s, v in stages.items()},
        stage_p99={s: pct(np.array(v), 99) for s, v in stages.items()},
        stage_mean={s: float(np.mean(v)) if v else math.nan for s, v in stages.items()},
        total_allow_p50=pct(np.array(totals["allow"]), 50),
        total_flagged_p50=pct(np.array(totals["flagged"]), 50),
        verdicts=dict(verdicts),
        degraded=degraded,
        cpu_util={role: c / window for role, c in cpu.items()},
        cpu_us_per_request={role: c / max(1, in_window.sum()) * 1e6 for role, c in cpu.items()},
        worker_share=per_worker,
        reconnects=cell.reconnects,
        slow_flagged=slow[0],
        slow_overlapping_flagged=slow[1],
    )


def _slow_attribution(
    latency: np.ndarray, flagged: np.ndarray, sched: np.ndarray, sent: np.ndarray, done: np.ndarray
) -> tuple[float, float]:
    """How much of the slowest 1 % is review/block answers and what queued behind them."""
    slow = np.nonzero(latency >= pct(latency, 99))[0]
    if len(slow) == 0 or not np.isfinite(latency[slow]).any():
        return math.nan, math.nan
    starts, ends = sent[flagged], done[flagged]
    overlapping = [
        bool(np.any((starts < (done[j] if np.isfinite(done[j]) else np.inf)) & (ends > sched[j])))
        for j in slow
    ]
    return float(flagged[slow].mean()), float(np.mean(overlapping))


def median_of(results: list[CellResult], attr: str) -> float:
    """Median over repeats of one figure."""
    values = [getattr(r, attr) for r in results]
    return float(np.median(values)) if values else math.nan


def fmt(value: float, digits: int = 2) -> str:
    """A figure for a table: '-' when missing, 'timeout' when infinite."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "timeout"
    return f"{value:,.{digits}f}"


def passes(cells: list[CellResult], p99_bound: float) -> bool:
    """The saturation criterion on the median of repeats."""
    if not cells:
        return False
    failed = sum(r.errors + r.timeouts for r in cells) / max(1, sum(r.measured for r in cells))
    return (
        median_of(cells, "achieved") >= 0.95 * cells[0].rate
        and median_of(cells, "p99") <= p99_bound
        and failed <= 0.001
    )


def report(results: list[CellResult], args: argparse.Namespace) -> str:
    """Markdown tables: per cell, medians over repeats; then saturation and stages."""
    lines = []
    by_cell: dict[tuple[int, float], list[CellResult]] = collections.defaultdict(list)
    for r in results:
        by_cell[(r.workers, r.rate)].append(r)
    ordered = sorted(by_cell.items())

    lines.append(
        "| workers | offered /s | achieved /s | p50 ms | p99 ms | p99.9 ms | max ms | errors "
        "| timeouts | repeats | p99 each | client lag p99 ms | CPU cores: server / redis / client / others |"
    )
    lines.append("|---:" * 13 + "|")
    for (workers, rate), cells in ordered:
        cpu = {
            role: float(np.median([c.cpu_util.get(role, 0.0) for c in cells])) for role in cells[0].cpu_util
        }
        lines.append(
            f"| {workers} | {rate:,.0f} | {fmt(median_of(cells, 'achieved'), 0)} "
            f"| {fmt(median_of(cells, 'p50'))} "
            f"| {fmt(median_of(cells, 'p99'))} | {fmt(median_of(cells, 'p999'))} "
            f"| {fmt(median_of(cells, 'max'), 1)} | {sum(c.errors for c in cells)} "
            f"| {sum(c.timeouts for c in cells)} | {len(cells)} "
            f"| {' / '.join(fmt(c.p99, 1) for c in cells)} | {fmt(median_of(cells, 'lag_p99'))} "
            f"| {cpu.get('server', 0):.2f} / {cpu.get('redis', 0):.2f} / {cpu.get('client', 0):.2f} "
            f"/ {cpu.get('others', 0):.2f} |"
        )
    lines.append("")
    for workers in dict.fromkeys(w for (w, _), _ in ordered):
        rates = [rate for (w, rate), _ in ordered if w == workers]
        sat = [r for r in rates if passes(by_cell[(workers, r)], args.saturation_p99_ms)]
        aim = [r for r in rates if passes(by_cell[(workers, r)], args.aim_p99_ms)]
        lines.append(
            f"- {workers} worker(s): saturation rate "
            f"{fmt(max(sat), 0) if sat else 'below the lowest rate'}/s "
            f"(achieved >= 95 %, p99 <= {args.saturation_p99_ms:g} ms, failures <= 0.1 %); "
            f"highest rate with p99 <= {args.aim_p99_ms:g} ms: {fmt(max(aim), 0) if aim else 'none'}/s"
        )
    lines.append("")
    lines.append(
        "Where the time goes (medians over repeats of each stage's p50 / p99, ms; "
        "outside = client-observed service time - scorer stages):"
    )
    lines.append("")
    lines.append(
        "| workers | offered /s | " + " | ".join(STAGES) + " | scorer total allow / flagged p50 "
        "| CPU us/request: server / redis / client | busiest worker's CPU share, each repeat "
        "| slowest 1 %: review/block / overlapping one |"
    )
    lines.append("|---:" * (6 + len(STAGES)) + "|")
    for (workers, rate), cells in ordered:
        stage_cols = " | ".join(
            f"{fmt(float(np.median([c.stage_p50[s] for c in cells])))} / "
            f"{fmt(float(np.median([c.stage_p99[s] for c in cells])))}"
            for s in STAGES
        )
        cpu = {
            role: float(np.median([c.cpu_us_per_request.get(role, 0.0) for c in cells]))
            for role in cells[0].cpu_us_per_request
        }
        shares = " / ".join(f"{max(c.worker_share, default=1.0):.2f}" for c in cells)
        lines.append(
            f"| {workers} | {rate:,.0f} | {stage_cols} "
            f"| {fmt(median_of(cells, 'total_allow_p50'))} / "
            f"{fmt(median_of(cells, 'total_flagged_p50'))} | {cpu.get('server', 0):,.0f} / "
            f"{cpu.get('redis', 0):,.0f} / {cpu.get('client', 0):,.0f} | {shares} "
            f"| {fmt(100 * median_of(cells, 'slow_flagged'), 0)} % / "
            f"{fmt(100 * median_of(cells, 'slow_overlapping_flagged'), 0)} % |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Driver


def redis_command_stats(stack: Stack, reset: bool = False) -> dict[str, float]:
    """usec_per_call of the scripts Redis ran since the last reset."""
    import redis

    assert stack.redis is not None
    client = redis.Redis(unix_socket_path=str(stack.redis.socket))
    try:
        if reset:
            client.config_resetstat()
            return {}
        stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
        return {
            name.removeprefix("cmdstat_"): float(v["usec_per_call"])
            for name, v in stats.items()
            if name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_set", "cmdstat_xadd")
        }
    finally:
        client.close()


def wait_quiet(ours: Sequence[int], max_cores: float, max_wait_s: float) -> float:
    """Wait (at most max_wait_s) until the rest of the machine uses under max_cores; returns its load.

    On a shared machine other people's jobs take the cores the service needs; a cell measured then
    measures them. The load of everything but our processes is sampled over half a second.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before, mine = machine_busy_seconds(), cpu_seconds(ours)
        time.sleep(0.5)
        others = (machine_busy_seconds() - before - (cpu_seconds(ours) - mine)) / 0.5
        if others <= max_cores or time.monotonic() >= deadline:
            return others
        time.sleep(0.5)


def matrix(args: argparse.Namespace, replay: Replay, rdb: Path) -> list[CellResult]:
    """Every repeat x worker count x rate; prints each cell as it finishes.

    Worker counts are interleaved within each repeat, so slow drifts in the load of a shared machine
    touch them alike.
    """
    results: list[CellResult] = []
    for repeat, workers in ((r, w) for r in range(args.repeats) for w in args.workers):
        with Stack(rdb, workers, args.tcp_redis) as stack:
            source = RequestSource(replay, "127.0.0.1", stack.port, stack.key, f"r{repeat}w{workers}")
            pids = {**stack.cpu_pids(), "client": [os.getpid()]}
            for rate in args.rates:
                warm = int(rate * args.warmup)
                requests = source.take(warm + int(rate * args.duration))
                ours = [p for role in pids.values() for p in role]
                others = wait_quiet(ours, args.quiet_cores, args.quiet_wait)
                if others > args.quiet_cores:
                    print(f"  the machine is busy: others use {others:.2f} cores; measuring anyway")
                redis_command_stats(stack, reset=True)
                workers_before = [cpu_seconds([p]) for p in pids["server"]]
                cell, first, last = run_async(
                    run_cell(stack.port, requests, rate, warm, args.connections, args.drain, pids)
                )
                spent = [cpu_seconds([p]) - b for p, b in zip(pids["server"], workers_before, strict=True)]
                shares = [s / max(1e-9, sum(spent)) for s in spent]
                result = summarize(cell, first, last, workers, repeat, shares)
                result.redis_us_per_call = redis_command_stats(stack)
                results.append(result)
                print(
                    f"repeat {repeat + 1} workers {workers} rate {rate:>5,}/s: achieved "
                    f"{result.achieved:7,.0f}/s  p50 {fmt(result.p50):>7}  p99 {fmt(result.p99):>7}  "
                    f"p99.9 {fmt(result.p999):>7} ms  errors {result.errors} timeouts {result.timeouts}  "
                    f"CPU server {result.cpu_util.get('server', 0):.2f} "
                    f"redis {result.cpu_util.get('redis', 0):.2f} "
                    f"client {result.cpu_util.get('client', 0):.2f} "
                    f"others {result.cpu_util.get('others', 0):.2f}",
                    flush=True,
                )
                time.sleep(args.pause)
                if result.achieved < 0.8 * rate:
                    print(f"  saturated: skipping higher rates for {workers} worker(s) in this repeat")
                    break
    return results


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh uvloop event loop (asyncio's own when uvloop is missing)."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------------------------------
# The generator alone, and a profile of the server


CANNED = (
    b'{"transaction_id":"x","verdict":"allow","score":1.6e-6,"risk_score":0,"reasons":{"rules":[],'
    b'"shadow_rules":[],"skipped_rules":[],"model":[]},"model_version":"m","rules_version":"r",'
    b'"degraded":false,"timings":{"features_ms":0,"model_ms":0,"rules_ms":0,"total_ms":0,"log_ms":0}}'
)


class NullServer(asyncio.Protocol):
    """Answers every HTTP request at once with a canned score answer (for --self-test)."""

    answer = (
        b"HTTP/1.1 200 OK\r\nserver: null\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(CANNED)).encode()
        + b"\r\n\r\n"
        + CANNED
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            match = re.search(rb"(?i)content-length: *(\d+)", self.buffer[:end])
            size = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < size:
                return
            del self.buffer[:size]
            self.transport.write(self.answer)


def null_server(port: int) -> None:
    """Serve NullServer on 127.0.0.1:port until killed."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(NullServer, "127.0.0.1", port)
        await server.serve_forever()

    run_async(main())


def self_test(args: argparse.Namespace, replay: Replay) -> list[CellResult]:
    """The generator against a null server (another process, same cores): what it can send."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--null-server", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        source = RequestSource(replay, "127.0.0.1", port, "x", "selftest")
        pids = {"server": [server.pid], "client": [os.getpid()]}
        results = []
        for rate in args.self_test_rates:
            requests = source.take(int(rate * (args.warmup + args.duration)))
            cell, first, last = run_async(
                run_cell(port, requests, rate, int(rate * args.warmup), args.connections, args.drain, pids)
            )
            result = summarize(cell, first, last, 0, 0, [1.0])
            results.append(result)
            print(
                f"null server, rate {rate:>6,}/s: achieved {result.achieved:8,.0f}/s  p50 {fmt(result.p50)}  "
                f"p99 {fmt(result.p99)}  p99.9 {fmt(result.p999)} ms  lag p50/p99 {fmt(result.lag_p50)}/"
                f"{fmt(result.lag_p99)} ms  others {result.cpu_util['others']:.2f} cores, "
                f"client CPU {result.cpu_util['client']:.2f} cores "
                f"({result.cpu_us_per_request['client']:.0f} us/request), null server "
                f"{result.cpu_util['server']:.2f}",
                flush=True,
            )
        return results
    finally:
        server.terminate()
        server.wait()


def profile(args: argparse.Namespace, replay: Replay, rdb: Path) -> None:
    """py-spy record of each worker while the service takes `--profile` payments/s; prints the top."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy (not a project dependency)")
    rate = args.profile
    workers = args.workers[0]
    with Stack(rdb, workers, args.tcp_redis) as stack:
        source = RequestSource(replay, "127.0.0.1", stack.port, stack.key, "profile")
        pids = {**stack.cpu_pids(), "client": [os.getpid()]}
        warm = source.take(int(rate * 2))
        run_async(run_cell(stack.port, warm, rate, 0, args.connections, args.drain, pids))
        others = wait_quiet([p for role in pids.values() for p in role], args.quiet_cores, args.quiet_wait)
        print(f"others use {others:.2f} cores before the profile")
        out_dir = REPORTS / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        spies = []
        for pid in pids["server"]:
            raw = out_dir / f"worker-{workers}w-{rate}rps-{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
            command += ["--duration", str(int(args.duration)), "--nonblocking", "--output", str(raw)]
            spies.append(
                (raw, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            )
        time.sleep(1.0)  # py-spy attaching
        requests = source.take(int(rate * args.duration))
        cell, first, last = run_async(
            run_cell(stack.port, requests, rate, 0, args.connections, args.drain, pids)
        )
        result = summarize(cell, first, last, workers, 0, [])
        for _, spy in spies:
            spy.wait(timeout=60)
    print(
        f"profiled {workers} worker(s) at {rate}/s: achieved {result.achieved:,.0f}/s p50 {fmt(result.p50)} "
        f"p99 {fmt(result.p99)} ms, server CPU {result.cpu_util['server']:.2f} cores "
        f"({result.cpu_us_per_request['server']:.0f} us/request)"
    )
    for raw, _ in spies:
        if raw.exists():
            print(f"\n{raw.relative_to(ROOT)}\n")
            print(profile_summary(raw))
        else:
            print(f"\npy-spy wrote no {raw.name}: can it ptrace the worker (root or CAP_SYS_PTRACE)?")


def components(args: argparse.Namespace, replay: Replay, rdb: Path) -> None:
    """In-process cost of the whole `/v1/score` call and of each step of it.

    No HTTP and no other worker: the app built by `create_app` is called as ASGI with the request
    body in memory, against a real redis-server restored from the snapshot (unix socket). Each
    step is then timed alone on fresh payments, with wall time and CPU time (their difference is
    time the worker spends blocked, mostly waiting for Redis on a synchronous call). The steps are
    called through the objects' public methods as `Scorer.score` calls them (the rules' input with
    the scorer's own `_rule_env`), never through their private helpers, so this keeps working while
    those change.
    """
    import gc

    import orjson

    from engine.api import ANSWER_FIELDS, create_app
    from engine.pipeline import _rule_env
    from engine.schema import Transaction
    from engine.settings import Settings
    from features.online import to_ms

    n = args.components
    with tempfile.TemporaryDirectory(prefix="antifraud-load-") as tmp:
        (Path(tmp) / "redis").mkdir()
        shutil.copyfile(rdb, Path(tmp) / "redis" / "dump.rdb")
        with EmbeddedRedis(Path(tmp) / "redis") as rds:
            keys = Path(tmp) / "keys.yaml"
            key = new_key(keys, "components", "scorer")
            app = create_app(Settings(redis_url=rds.url, api_keys_file=keys))
            reloader = app.state.reloader
            reloader.load_all()
            gc.collect()
            gc.freeze()
            scorer = reloader.scorer
            source = RequestSource(replay, "127.0.0.1", 80, key, "components")
            rows: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)

            def timed(name: str, fn: Any, *a: Any, **kw: Any) -> Any:
                w, c = time.perf_counter(), time.process_time()
                out = fn(*a, **kw)
                rows[name].append((time.perf_counter() - w, time.process_time() - c))
                return out

            async def asgi(bodies: list[bytes]) -> None:
                headers = [(b"host", b"x"), (b"authorization", f"Bearer {key}".encode())]
                headers.append((b"content-type", b"application/json"))
                for body in bodies:
                    scope = {
                        "type": "http",
                        "asgi": {"version": "3.0"},
                        "http_version": "1.1",
                        "method": "POST",
                        "scheme": "http",
                        "path": "/v1/score",
                        "raw_path": b"/v1/score",
                        "query_string": b"",
                        "root_path": "",
                        "headers": [*headers, (b"content-length", str(len(body)).encode())],
                        "client": ("127.0.0.1", 9),
                        "server": ("127.0.0.1", 80),
                    }
                    sent: list[Any] = []

                    async def receive(body: bytes = body) -> dict[str, Any]:
                        return {"type": "http.request", "body": body, "more_body": False}

                    async def send(message: Any, sent: list[Any] = sent) -> None:
                        sent.append(message)

                    w, c = time.perf_counter(), time.process_time()
                    await app(scope, receive, send)
                    rows["ASGI app call, whole request (no HTTP parsing, no socket)"].append(
                        (time.perf_counter() - w, time.process_time() - c)
                    )
                    assert sent[0]["status"] == 200, sent

            def bodies(k: int) -> list[bytes]:
                return [r.partition(b"\r\n\r\n")[2] for r in source.take(k)]

            gc_pauses: list[float] = []
            gc_started = [0.0]

            def on_gc(phase: str, info: dict[str, Any]) -> None:
                if info["generation"] == 2:
                    if phase == "start":
                        gc_started[0] = time.perf_counter()
                    else:
                        gc_pauses.append(time.perf_counter() - gc_started[0])

            gc.callbacks.append(on_gc)
            run_async(asgi(bodies(min(500, n))))  # warm-up
            rows.clear()
            gc_pauses.clear()
            whole = "ASGI app call, whole request (no HTTP parsing, no socket)"
            run_async(asgi(bodies(n)))
            frozen_pauses, frozen_rows = list(gc_pauses), rows.pop(whole)
            gc.unfreeze()
            gc_pauses.clear()
            run_async(asgi(bodies(n)))
            unfrozen_pauses, unfrozen_rows = list(gc_pauses), rows.pop(whole)
            rows[whole], rows[f"{whole}, after gc.unfreeze()"] = frozen_rows, unfrozen_rows
            gc.callbacks.remove(on_gc)
            gc.collect()
            gc.freeze()

            online, store, model, rules = (
                scorer.features,
                scorer.store,
                scorer.loaded.model,
                scorer.loaded.rules,
            )
            assert model is not None, "no model loaded"
            # A raw row for derive alone: every entity present with an empty history, so derive does
            # its work for each entity without a Redis call.
            raw = np.zeros(len(online.plan.raw_names))
            raw[[online.plan.raw_index[f"{p.entity}:present"] for p in online.plan.entities]] = 1.0
            flagged_rows = []
            for body in bodies(n):
                txn = timed(
                    "parse: Transaction.model_validate_json (raw body)", Transaction.model_validate_json, body
                )
                payment = timed("scorer: txn.model_dump()", txn.model_dump)
                features = timed(
                    "features: OnlineFeatures.score (EVALSHA round trip + derive)", online.score, payment
                )
                timed(
                    "features: derive alone (Deriver.transform_one, CPU only)",
                    online.deriver.transform_one,
                    raw,
                    payment,
                    to_ms(payment["timestamp"]),
                )
                score = timed("model: predict_one", model.predict_one, features.values)
                env = timed("rules: _rule_env", _rule_env, payment, online.feature_names, features.values)
                outcome = timed(
                    "rules: decide",
                    rules.decide,
                    score,
                    env,
                    txn.merchant_id,
                    no_score_verdict=scorer.fail_policy,
                )
                if (outcome.verdict or scorer.fail_policy) != "allow":
                    flagged_rows.append(features.values)
            for values in flagged_rows[: max(50, n // 10)]:
                timed(
                    "model: TreeSHAP contributions of a review/block (GET /v1/decisions only)",
                    model.contributions,
                    values,
                )
            for body in bodies(n):
                txn = Transaction.model_validate_json(body)
                decision = timed(
                    "scorer.score(), whole (features .. decision log, metrics)", scorer.score, txn
                )
                answer = {name: decision[name] for name in ANSWER_FIELDS}  # what /v1/score answers
                timed("response: orjson.dumps of the answer's fields", orjson.dumps, answer)
                copy = {**decision, "transaction_id": decision["transaction_id"] + "-copy"}
                timed("decision log: store.put (orjson + EVALSHA SET/XADD)", store.put, copy)
                timed(
                    "metrics: Metrics.observe (one process)",
                    scorer.metrics.observe,
                    decision,
                    decision["timings"],
                )

    print(f"in-process, {n:,} payments per step, medians (us); blocked = wall - CPU:\n")
    print("| step | wall p50 | wall p99 | CPU p50 | blocked p50 |")
    print("|---|---:|---:|---:|---:|")
    for name, samples in rows.items():
        wall = np.array([w for w, _ in samples]) * 1e6
        cpu = np.array([c for _, c in samples]) * 1e6
        print(
            f"| {name} | {np.percentile(wall, 50):,.0f} | {np.percentile(wall, 99):,.0f} "
            f"| {np.percentile(cpu, 50):,.0f} | {max(0.0, np.percentile(wall - cpu, 50)):,.0f} |"
        )
    for label, pauses in (("gc.freeze (as served)", frozen_pauses), ("after gc.unfreeze()", unfrozen_pauses)):
        ms = np.array(pauses) * 1000
        detail = f"max {ms.max():.1f} ms, total {ms.sum():.1f} ms" if len(ms) else "none"
        print(f"\nfull (generation 2) collections over {n:,} requests, {label}: {len(ms)}; {detail}")
    mp = _multiprocess_observe_us()
    print(f"\nmetrics in multi-process mode (what 2 workers use): {mp:.0f} us per observe()")


def _multiprocess_observe_us() -> float:
    """Cost of one Metrics.observe() with PROMETHEUS_MULTIPROC_DIR set (a subprocess: the mode is
    chosen when prometheus_client is imported)."""
    code = (
        "import time\n"
        "from engine.metrics import Metrics\n"
        "m = Metrics()\n"
        "d = {'verdict': 'allow', 'reasons': {'rules': [], 'shadow_rules': []}, 'degraded': False}\n"
        "t = {'features_ms': 0.5, 'model_ms': 0.04, 'rules_ms': 0.05, 'total_ms': 0.7, 'log_ms': 0.2}\n"
        "for _ in range(500): m.observe(d, t)\n"
        "w = time.perf_counter()\n"
        "for _ in range(5000): m.observe(d, t)\n"
        "print((time.perf_counter() - w) / 5000 * 1e6)\n"
    )
    with tempfile.TemporaryDirectory(prefix="antifraud-metrics-") as tmp:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tmp}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
    return float(out.stdout.strip())


# Inclusive share of samples whose stack passes through a frame matching each pattern (first match
# wins per category, checked in this order on each stack). Patterns name public methods and
# libraries' modules, so they keep matching while the private helpers they call change.
PROFILE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("decision log: orjson + SET/XADD script", r"put \(engine/decisions"),
    # after the decision log: the Redis calls left are the features' (and rare duplicate lookups)
    ("features: Redis EVALSHA (socket wait incl.)", r"\(redis/"),
    ("features: Python around it (args, derive)", r"score \(features/online"),
    ("model: LightGBM predict_one", r"predict_one \(engine/model"),
    ("rules: decide + env", r"decide \(|_rule_env"),
    ("scorer: the rest (model_dump, decision dict)", r"score \(engine/pipeline"),
    ("metrics: prometheus observe", r"observe \(engine/metrics"),
    ("request: body read + model_validate_json", r"body \(starlette/requests|model_validate_json"),
    ("response: Response + send (orjson itself is in the route's own time)", r"\(starlette/responses"),
    ("auth: API key check", r"authenticate \(engine/auth"),
    ("HTTP protocol (httptools/uvicorn)", r"httptools_impl|h11_impl"),
)


def profile_summary(raw: Path, top: int = 25) -> str:
    """Categories (inclusive) and hottest functions (own time) of a py-spy raw (collapsed) profile."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if stack and samples.isdigit():
            stacks.append((stack.split(";"), int(samples)))
    total = sum(c for _, c in stacks) or 1
    patterns = [(name, re.compile(p)) for name, p in PROFILE_CATEGORIES]
    category: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        for name, pattern in patterns:
            if any(pattern.search(f) for f in frames):
                category[name] += count
                break
        else:
            category["other (event loop, ASGI/Starlette/FastAPI routing, GC...)"] += count
        own[_short(frames[-1])] += count
    lines = [f"{total:,} samples (active Python time only)", "", "| where | share |", "|---|---:|"]
    lines += [f"| {name} | {100 * c / total:.1f} % |" for name, c in category.most_common()]
    lines += ["", "| own time, top functions | share |", "|---|---:|"]
    lines += [f"| `{name}` | {100 * c / total:.1f} % |" for name, c in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    where = re.sub(r".*/site-packages/", "", where)
    where = re.sub(r".*/lib/python3\.\d+/", "", where)
    where = where.replace(str(ROOT) + "/", "")
    where = re.sub(r":\d+$", "", where)
    return f"{name} ({where})"


# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--rates", type=int, nargs="+", default=list(DEFAULT_RATES), help="offered rates /s")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds at the rate first")
    parser.add_argument("--drain", type=float, default=3.0, help="seconds to wait for answers after a cell")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of rest between cells")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the matrix (medians reported)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    parser.add_argument("--replay-days", type=int, default=7, help="last days of the sample to replay")
    parser.add_argument(
        "--tcp-redis", action="store_true", help="Redis over TCP 127.0.0.1, not a unix socket"
    )
    parser.add_argument(
        "--saturation-p99-ms", type=float, default=50.0, help="p99 bound of the saturation rate"
    )
    parser.add_argument("--aim-p99-ms", type=float, default=5.0, help="the latency aim")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.3,
        help="before each cell, wait until other processes use at most this many cores (default 0.3)",
    )
    parser.add_argument("--quiet-wait", type=float, default=5.0, help="... for at most this many seconds")
    parser.add_argument("--no-cache", action="store_true", help="rebuild the Redis snapshot")
    parser.add_argument("--quick", action="store_true", help="one repeat, 4 s cells")
    parser.add_argument("--self-test", action="store_true", help="run the generator against a null server")
    parser.add_argument(
        "--self-test-rates",
        type=int,
        nargs="+",
        default=[1000, 3000, 6000, 9000],
        help="rates for --self-test",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="py-spy profile the first --workers at this rate"
    )
    parser.add_argument(
        "--components", type=int, default=0, help="time each step in-process over this many payments"
    )
    parser.add_argument("--out", type=Path, help="JSON results file (default reports/load_http-<time>.json)")
    parser.add_argument("--null-server", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.warmup = 1, 4.0, 1.0
    return args


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "engine", "features", "rules", "models"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return {
        # the code measured: other people's uncommitted edits count too
        "code": head.strip() + (f" + uncommitted: {', '.join(ln[3:] for ln in dirty)}" if dirty else ""),
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_before": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.null_server:
        null_server(args.null_server)
        return
    info = machine()
    print(
        f"machine: {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, load {info['load_before']}"
    )
    print(f"code: {info['code']}")
    history, replay = load_replay(args.replay_days)
    print(f"replay window: last {args.replay_days} days of the sample, {len(replay.bodies):,} payments")
    started = time.perf_counter()
    if args.self_test:
        results = self_test(args, replay)
        _write(args, info, results, "")
        return
    rdb = snapshot(history, replay, use_cache=not args.no_cache)
    del history
    if args.profile:
        profile(args, replay, rdb)
        return
    if args.components:
        components(args, replay, rdb)
        return
    results = matrix(args, replay, rdb)
    text = report(results, args)
    print()
    print(text)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; command: {' '.join(sys.argv)}")
    _write(args, info, results, text)


def _write(args: argparse.Namespace, info: dict[str, Any], results: list[CellResult], text: str) -> None:
    out = args.out or REPORTS / f"load_http-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.write_text(
        json.dumps(
            _finite(
                {"machine": info, "args": settings, "cells": [asdict(r) for r in results], "report": text}
            ),
            indent=1,
            default=str,
        )
    )
    print(f"results: {out}")


def _finite(value: Any) -> Any:
    """JSON-safe copy: infinite latencies (timeouts) become "inf", NaN becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    main()
