"""Run the scoring service: uvicorn workers in front of Redis (embedded when no URL is given)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from rich.console import Console

from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT
from antifraud.engine.workers import APP, serve_workers


def run_service(
    host: str,
    port: int,
    redis_url: str | None,
    workers: int,
    model: Path | None,
    rules: Path | None,
    api_keys: Path | None,
    console: Console,
) -> None:
    """Start `workers` uvicorn processes; each builds its app from ANTIFRAUD_* variables."""
    embedded = None
    if not redis_url:
        embedded = EmbeddedRedis(ROOT / "var" / "redis").start()
        redis_url = embedded.url
        if workers != 1:
            console.print("[yellow]embedded Redis: running one worker (pass --redis for more)[/yellow]")
            workers = 1
        console.print(f"embedded Redis at {redis_url} (data is not persisted; use --redis in production)")
    if api_keys is None and os.environ.get("ANTIFRAUD_ALLOW_NO_AUTH") != "1":
        console.print(
            "[red]error:[/red] no --api-keys file. Create one with "
            "`antifraud keys new --name checkout --role scorer --file keys.yaml`, "
            "or set ANTIFRAUD_ALLOW_NO_AUTH=1 for local development only."
        )
        if embedded:
            embedded.stop()
        raise SystemExit(1)
    os.environ["ANTIFRAUD_REDIS_URL"] = redis_url
    for name, value in (("MODEL_DIR", model), ("RULES_DIR", rules), ("API_KEYS", api_keys)):
        if value is not None:
            os.environ[f"ANTIFRAUD_{name}"] = str(Path(value).resolve())
    metrics_dir = None
    if workers > 1:
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if given:
            # the operator's directory: empty it, or the last run's counts would add to this one's
            for stale in Path(given).glob("*.db"):
                stale.unlink()
        else:
            metrics_dir = tempfile.mkdtemp(prefix="antifraud-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    console.print(f"serving on http://{host}:{port} with {workers} worker(s); OpenAPI at /docs")
    try:
        if workers > 1:
            status = serve_workers(host, port, workers)
            if status:
                raise SystemExit(status)
        else:
            uvicorn.run(APP, factory=True, host=host, port=port, log_level="warning", access_log=False)
    finally:
        if embedded:
            embedded.stop()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
