"""The open-loop load generator: raw HTTP/1.1 requests at a fixed rate on keep-alive connections.

Request i of a cell is due at t0 + i/rate whatever happened to the earlier ones; a due request waits
for a free connection in a client queue. Latency counted from the due time (`Cell.sched`) includes
queueing anywhere (client, kernel, server), so coordinated omission is not hidden.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TypeVar

import numpy as np

from antifraud.engine.loadgen.cpu import CpuMark, cpu_mark

T = TypeVar("T")
Pids = Mapping[str, Sequence[int]]  # processes whose CPU a cell accounts, by role


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
        """Write request `index` (the connection is idle) and note when it left."""
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
    """One run at one offered rate: schedule, connections, and what happened to each request.

    Times are time.perf_counter() seconds, NaN until they happen; `status` is the HTTP status, -1
    for a lost connection and 0 for no answer (a timeout).
    """

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
        """Send request `index` on an idle connection, or queue it until one is free."""
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed:
                conn.send(index)
                return
        self.pending.append(index)

    def answered(self, conn: Connection, index: int, status: int, body: bytes) -> None:
        """Record an answer; the connection takes the next queued request or becomes idle."""
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
        """A connection closed: its request in flight failed, and a new connection replaces it."""
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

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self.tasks.discard)

    async def connect(self) -> None:
        """Open a replacement connection (retrying while the server refuses)."""
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


async def run_cell(
    port: int,
    requests: list[bytes],
    rate: float,
    measured_from: int,
    connections: int,
    drain_s: float,
    pids: Pids,
) -> tuple[Cell, CpuMark, CpuMark]:
    """Send `requests` at `rate`/s, open loop; returns the cell and CPU marks around the measured part.

    Requests before `measured_from` are the warm-up; answers are awaited `drain_s` seconds after
    the last is due, later ones count as timeouts.
    """
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
    pids: Pids,
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


def run_async(coro: Coroutine[object, object, T]) -> T:
    """Run a coroutine on a fresh uvloop event loop (asyncio's own when uvloop is missing)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
