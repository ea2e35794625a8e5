"""Several uvicorn worker processes, each accepting on its own SO_REUSEPORT socket.

uvicorn's own multi-worker mode shares one listening socket, and whichever worker wakes first takes
the next connection: with keep-alive clients, measured here, one of two workers sometimes held every
connection and the service ran as if it had one. With one socket per worker the kernel spreads
new connections evenly (the busiest of 2 workers took 50-56 % in every measured run).

The supervisor restarts a worker that dies, and stops every worker on SIGINT or SIGTERM. A worker
that cannot start (bad rules, model directory, port) stops the whole service instead of looping.
Each worker is also told to stop when the supervisor dies (Linux's parent-death signal), so a
SIGKILLed supervisor does not leave workers holding the port.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn
from prometheus_client import multiprocess

from antifraud.engine.redis_server import die_with_parent

log = logging.getLogger("antifraud.workers")

APP = "antifraud.engine.api:app_from_env"
STARTUP_FAILURE = 3  # the exit code of a worker whose app did not start


def serve_workers(host: str, port: int, workers: int) -> int:
    """Run `workers` processes serving the app on host:port until stopped; the exit status."""
    check_port_free(host, port)
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no state copied by fork
    running: dict[int, BaseProcess] = {}
    stopping = threading.Event()

    def start(slot: int) -> None:
        process = context.Process(target=_worker, args=(host, port), name=f"antifraud-worker-{slot}")
        process.start()
        running[slot] = process

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    # the caller's handlers come back on return: the caller stops what it started (the embedded Redis)
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    for slot in range(workers):
        start(slot)
    status = 0
    while not stopping.wait(0.5):
        for slot, process in list(running.items()):
            if process.is_alive():
                continue
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker %d could not start; stopping the service", slot)
                stopping.set()
                status = 1
                break
            log.warning("worker %d exited with status %s; starting a new one", slot, process.exitcode)
            _forget_metrics_of(process.pid)
            start(slot)
    for process in running.values():
        process.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
    for process in running.values():
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    return status


def _forget_metrics_of(pid: int | None) -> None:
    # Multi-process metrics: a dead worker's live gauges (the model and rule versions it served)
    # must not be merged into /metrics any more; its counters stay (they were counted).
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def check_port_free(host: str, port: int) -> None:
    """Fail like a plain server would when the port is taken: with SO_REUSEPORT alone, a second
    service started on the same port by mistake would silently share the traffic."""
    with _socket(host) as probe:
        # SO_REUSEADDR as the workers set it: a restart must not wait for the last run's TIME_WAIT
        # connections, while a socket still listening on the port makes the bind fail
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"error: cannot listen on {host}:{port}: {exc}") from None


def _socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def _worker(host: str, port: int) -> None:
    # started by the supervisor's main thread, which lives as long as the supervisor
    die_with_parent(signal.SIGTERM)
    sock = _socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Only processes of the same user may join the port's group (Linux), so no other account can
    # take a share of the payments.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    server = uvicorn.Server(uvicorn.Config(APP, factory=True, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)
