"""Run the scoring service: uvicorn workers in front of Redis (embedded when no URL is given).

Stopping: SIGTERM (systemd, Docker, Kubernetes) and SIGINT (Ctrl+C) both stop the service the same
way: the workers finish the requests in flight and exit, then the embedded redis-server is stopped,
then the process exits with status 0. uvicorn catches both signals while it serves and, once it has
shut down, raises the caught signal again; with SIGTERM's default action that re-raise killed the
process before any `finally` ran, which left the embedded Redis orphaned. The service therefore owns
both signals from its first line to its last: a stop before the server is up aborts the start, a
stop during the clean-up is held until the clean-up is done.

The decision sink and the webhook delivery worker run beside the workers, each in a process of its
own; they are stopped after the workers (the sink first: it may still publish webhook events), before
the embedded Redis.

Exit statuses: 0 stopped by SIGTERM or SIGINT; 1 could not start (no key file, port taken, a worker
whose app failed to start, an embedded Redis that could not start or already runs in the data
directory, a webhook endpoints file refused).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn
from rich.console import Console
from rich.markup import escape

from antifraud.engine.redis_server import EmbeddedRedis, die_with_parent
from antifraud.engine.settings import DEFAULT_DATA_DIR, HOOKS_PID_FILE, SINK_PID_FILE
from antifraud.engine.workers import APP, serve_workers

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_STOPPED = 0
EXIT_CANNOT_START = 1


class Stopped(Exception):  # not an error: the operator asked the service to stop
    """SIGTERM or SIGINT arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def _hold(signum: int, frame: FrameType | None) -> None:
    """During the clean-up a second Ctrl+C must not cut it short and orphan the embedded Redis."""


def run_service(
    host: str,
    port: int,
    redis_url: str | None,
    workers: int,
    model: Path | None,
    rules: Path | None,
    api_keys: Path | None,
    console: Console,
    data_dir: Path = Path(DEFAULT_DATA_DIR),
    store_url: str | None = None,
    sink: bool = True,
    hooks: bool | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop the workers and the embedded Redis and return.

    Each of the `workers` uvicorn processes builds its app from ANTIFRAUD_* variables. Without
    `redis_url`, a redis-server is started under `data_dir`/redis (resolved against the working
    directory) and stopped on the way out. The workers read decisions from `store_url` (default
    `data_dir`/decisions); with `sink`, a decision sink (engine/sink.py) runs beside them in its own
    process, draining the decision and feedback streams into that store; it is stopped after the
    workers (finishing its batch) and before the Redis.
    With `hooks` (None: when ANTIFRAUD_WEBHOOKS names an endpoints file), the webhook delivery worker
    (engine/webhooks/worker.py) runs in a process of its own too, stopped after the sink.
    Raises SystemExit(1) when the service cannot start."""
    if api_keys is None and os.environ.get("ANTIFRAUD_ALLOW_NO_AUTH") != "1":
        console.print(
            "[red]error:[/red] no --api-keys file. Create one with "
            "`antifraud keys new --name checkout --role scorer --file keys.yaml`, "
            "or set ANTIFRAUD_ALLOW_NO_AUTH=1 for local development only."
        )
        raise SystemExit(EXIT_CANNOT_START)
    webhooks = _webhooks_file(hooks, console)
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    embedded: EmbeddedRedis | None = None
    sink_process: BaseProcess | None = None
    hooks_process: BaseProcess | None = None
    metrics_dir = None
    status = EXIT_STOPPED
    try:
        if not redis_url:
            embedded = _embedded(data_dir.absolute(), console)
            _start(embedded, console)  # inside the try: a stop during the start still stops it
            redis_url = embedded.url
        os.environ["ANTIFRAUD_REDIS_URL"] = redis_url
        # the workers read the store the sink writes, whichever way it was given
        store_url = store_url or str(data_dir.absolute() / "decisions")
        os.environ["ANTIFRAUD_STORE"] = store_url
        for name, value in (("MODEL_DIR", model), ("RULES_DIR", rules), ("API_KEYS", api_keys)):
            if value is not None:
                os.environ[f"ANTIFRAUD_{name}"] = str(Path(value).resolve())
        if workers > 1:
            given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if given:
                # the operator's directory: empty it, or the last run's counts would add to this one's
                for stale in Path(given).glob("*.db"):
                    stale.unlink()
            else:
                metrics_dir = tempfile.mkdtemp(prefix="antifraud-metrics-")
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        if sink:
            sink_process = _start_sink(redis_url, store_url, console)
            # where operators (and engine.stack's CPU accounting) find it among this one's children
            if sink_process.pid is not None:
                _write_pid(data_dir.absolute() / SINK_PID_FILE, sink_process.pid)
        if webhooks is not None:
            hooks_process = _start_hooks(redis_url, webhooks, console)
            if hooks_process.pid is not None:
                _write_pid(data_dir.absolute() / HOOKS_PID_FILE, hooks_process.pid)
        console.print(f"serving on http://{host}:{port} with {workers} worker(s); OpenAPI at /docs")
        if os.environ.get("ANTIFRAUD_CONSOLE", "on").strip().lower() not in ("off", "false", "0", "no"):
            url = os.environ.get("ANTIFRAUD_CONSOLE_URL") or f"http://{host}:{port}/console/"
            console.print(f"console: {escape(url)} (sign in with an analyst or admin key)")
        if workers > 1:
            status = serve_workers(host, port, workers)
        else:
            server = uvicorn.Server(
                uvicorn.Config(APP, factory=True, host=host, port=port, log_level="warning", access_log=False)
            )
            server.run()  # on a signal, raises Stopped once uvicorn has shut down
            if not server.started:
                status = EXIT_CANNOT_START
    except Stopped as stop:
        console.print(f"{stop.args[0]}: stopping")
        status = EXIT_STOPPED
    except SystemExit as exc:
        # the start failed: the embedded Redis, the port (serve_workers), or uvicorn's own start
        # (it exits with 3 when the app's start-up fails): one status for every failed start
        status = EXIT_CANNOT_START
        if isinstance(exc.code, str):
            console.print(escape(exc.code))
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _hold)
        if sink_process is not None:
            _stop_child(sink_process)
            (data_dir.absolute() / SINK_PID_FILE).unlink(missing_ok=True)
        if hooks_process is not None:
            _stop_child(hooks_process)
            (data_dir.absolute() / HOOKS_PID_FILE).unlink(missing_ok=True)
        if embedded is not None:
            embedded.stop()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status:
        raise SystemExit(status)


def _write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def _start_sink(redis_url: str, store_url: str, console: Console) -> BaseProcess:
    """The decision sink in a process of its own (it writes files or talks to PostgreSQL: kept off
    the workers' CPU time and event loops), dying with this one if this one is killed."""
    process = multiprocessing.get_context("spawn").Process(
        target=_sink_main,
        args=(redis_url, store_url, os.environ.get("ANTIFRAUD_NAMESPACE", "af")),
        name="antifraud-sink",
    )
    process.start()
    console.print(f"decision sink: streams -> {escape(store_url)} (pid {process.pid})")
    return process


def _sink_main(redis_url: str, store_url: str, namespace: str) -> None:
    from antifraud.engine.sink import run_sink

    die_with_parent(signal.SIGTERM)
    run_sink(redis_url, store_url, namespace=namespace)


def _webhooks_file(hooks: bool | None, console: Console) -> Path | None:
    """The endpoints file the delivery worker reads, checked now (a refused file stops the start), or
    None when the worker does not run here. Made absolute in ANTIFRAUD_WEBHOOKS for the workers."""
    from antifraud.engine.webhooks.config import WebhookConfigError, load_endpoints

    given = os.environ.get("ANTIFRAUD_WEBHOOKS", "")
    if hooks is None:
        hooks = bool(given)
    if not given:
        if hooks:
            console.print("[red]error:[/red] --hooks needs an endpoints file: set ANTIFRAUD_WEBHOOKS")
            raise SystemExit(EXIT_CANNOT_START)
        return None
    path = Path(given).resolve()
    os.environ["ANTIFRAUD_WEBHOOKS"] = str(path)
    try:
        endpoints = load_endpoints(path)
    except WebhookConfigError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(EXIT_CANNOT_START) from None
    if not hooks:
        return None
    console.print(f"webhooks: {len(endpoints)} endpoint(s) in {escape(str(path))}")
    return path


def _start_hooks(redis_url: str, webhooks: Path, console: Console) -> BaseProcess:
    """The webhook delivery worker in a process of its own (its POSTs wait on other hosts: never on a
    worker's event loop), dying with this one."""
    process = multiprocessing.get_context("spawn").Process(
        target=_hooks_main, args=(redis_url, str(webhooks)), name="antifraud-hooks"
    )
    process.start()
    console.print(f"webhook worker: outbox -> endpoints (pid {process.pid})")
    return process


def _hooks_main(redis_url: str, webhooks: str) -> None:
    from antifraud.engine.settings import Settings
    from antifraud.engine.webhooks.worker import run_hooks

    die_with_parent(signal.SIGTERM)
    settings = Settings()
    run_hooks(
        redis_url, webhooks, settings.namespace, settings.webhook_max_attempts, settings.webhook_timeout_s
    )


def _stop_child(process: BaseProcess) -> None:
    """SIGTERM: the sink finishes the batch in hand, the webhook worker its POSTs in flight (while Redis
    is still up), then it exits."""
    if process.is_alive():
        process.terminate()
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
        process.join()


def _embedded(data_dir: Path, console: Console) -> EmbeddedRedis:
    """The embedded redis-server of `data_dir` (in its `redis` folder); SystemExit(1) when the
    folder cannot be made or no socket path fits."""
    try:
        embedded = EmbeddedRedis(data_dir / "redis")
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] data directory {escape(str(data_dir))}: {escape(str(exc))}")
        raise SystemExit(EXIT_CANNOT_START) from None
    if embedded.socket_is_fallback:
        console.print(
            f"[yellow]the data directory's path is too long for a unix socket; the embedded Redis "
            f"listens on {escape(str(embedded.socket))}[/yellow]"
        )
    return embedded


def _start(embedded: EmbeddedRedis, console: Console) -> None:
    """Start the embedded Redis, saying what it replaced; SystemExit(1) when it cannot start."""
    try:
        embedded.start()
    except RuntimeError as exc:  # RedisAlreadyRunning included
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(EXIT_CANNOT_START) from None
    if embedded.replaced is not None:
        console.print(
            f"[yellow]stopped redis-server pid {embedded.replaced}, left running in "
            f"{escape(str(embedded.directory))} by an earlier run that did not stop it[/yellow]"
        )
    console.print(
        f"embedded Redis at {embedded.url}, files in {escape(str(embedded.directory))} "
        "(data is not persisted; use --redis in production)"
    )
