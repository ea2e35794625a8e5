"""One payment at a time over HTTP: the latency of a lone request, with no queue anywhere.

The open-loop matrix spreads requests evenly in time, so at a low rate each one lands on idle
processes (this VM's wake-ups then cost more than the work). Here one keep-alive connection sends
the next payment as soon as the previous answer is read: the service is never idle and never
queued, which is what "one payment at a time" means for the issue's p50 aim. The client is a plain
blocking socket (a few µs per request), so its own cost is negligible in the figure.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

import numpy as np
import orjson

from antifraud.engine.loadgen.cpu import cpu_seconds
from antifraud.engine.loadgen.replay import Replay, RequestSource

from .runs import KEY_NAME, load_stack


def _read_answer(sock: socket.socket, buffer: bytearray) -> bytes:
    """Read one HTTP/1.1 answer with a Content-Length (the service always sends one); its body."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    buffer[:] = rest[length:]
    return rest[:length]


def sequential(args: argparse.Namespace, replay: Replay, rdb: Path) -> None:
    """Send `args.sequential` payments one after another to each worker count; print client-side
    p50/p99, the scorer's own p50 and the CPU per payment of the workers and Redis."""
    n, warm = args.sequential, min(500, args.sequential // 4)
    for workers in args.workers:
        with load_stack(rdb, workers, args.tcp_redis) as stack:
            source = RequestSource(replay, "127.0.0.1", stack.port, stack.keys[KEY_NAME], f"seq{workers}")
            requests = source.take(warm + n)
            pids = stack.cpu_pids()
            sock = socket.create_connection(("127.0.0.1", stack.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = bytearray()
            wall = np.empty(n)
            scorer = np.empty(n)
            for i, request in enumerate(requests):
                if i == warm:
                    cpu_before = {role: cpu_seconds(p) for role, p in pids.items()}
                    client_before = time.process_time()
                t0 = time.perf_counter()
                sock.sendall(request)
                body = _read_answer(sock, buffer)
                if i >= warm:
                    wall[i - warm] = time.perf_counter() - t0
                    scorer[i - warm] = orjson.loads(body)["timings"]["total_ms"]
            cpu = {role: (cpu_seconds(p) - cpu_before[role]) / n * 1e6 for role, p in pids.items()}
            client_us = (time.process_time() - client_before) / n * 1e6
            sock.close()
        ms = wall * 1000
        print(
            f"{workers} worker(s), {n:,} payments one at a time: client-side p50 {np.median(ms):.3f} ms, "
            f"p99 {np.percentile(ms, 99):.3f} ms; scorer total p50 {np.median(scorer):.3f} ms; "
            f"CPU us per payment: workers {cpu['server']:.0f}, Redis {cpu['redis']:.0f}, "
            f"sink {cpu['sink']:.0f}, client {client_us:.0f}"
        )
