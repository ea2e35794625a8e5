"""What every long-running worker command (`antifraud sink`, `antifraud hooks`) needs around its loop:
logging on stderr, and a stop event set by SIGTERM or SIGINT so the work in hand can finish."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("antifraud.daemon")


@contextmanager
def stop_on_signals(finishing: str) -> Iterator[threading.Event]:
    """An event set on SIGTERM or SIGINT, for the worker's loop to poll; the previous handlers are
    restored on exit. `finishing` says what the worker does before it stops, for the log line."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        # a second signal is not escalated: an orchestrator that wants it gone sends SIGKILL
        log.info("signal %d: finishing %s, then stopping", signum, finishing)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
