"""What the HTTP request counter (engine/api/http_metrics.py) costs per request, in-process.

Two apps built by `create_app` on the same real redis-server: as served, and with the `HttpMetrics`
middleware taken out before its middleware stack is built. Each is called as ASGI (no HTTP parsing,
no socket) in interleaved runs: A, B, B, A, ... so drift (CPU frequency, Redis state, other
processes on the machine) falls on both alike; the figure is the median over runs of each run's
mean time per call; the middleware's cost is the median of the differences of paired runs
(each run against its neighbour of the other app), with their quartiles to show the noise.

Three requests: the scoring route (a fresh payment each call: the hot path), /health (a route that
costs almost nothing, so the difference stands out of the noise), and a 401 on
/v1/decisions/{transaction_id} (answered before routing: the middleware matches the path itself).

    .venv/bin/python benchmarks/bench_http_metrics.py [--runs 15] [--calls 400]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI

from antifraud.engine.api import create_app, start_services
from antifraud.engine.api.http_metrics import HttpMetrics
from antifraud.engine.auth import new_key
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import Settings

Request = tuple[str, str, bytes, int]  # method, path, body, expected status


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 9),
        "server": ("127.0.0.1", 80),
    }


async def _call(app: FastAPI, request: Request, auth: list[tuple[bytes, bytes]]) -> None:
    method, path, body, expected = request
    headers = [(b"host", b"x"), (b"content-type", b"application/json"), *auth]
    headers.append((b"content-length", str(len(body)).encode()))
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(_scope(method, path, headers), receive, send)
    assert status == [expected], (path, status)


def _app(settings: Settings, with_metrics: bool) -> FastAPI:
    app = create_app(settings)
    if not with_metrics:
        # the middleware stack is built on the first call, so removing it here removes it entirely
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HttpMetrics]
    start_services(app)  # what the lifespan does, without its file watcher
    return app


def main() -> None:
    """Print the median time per call with and without the middleware, and the difference."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="runs per app and request (interleaved)")
    parser.add_argument("--calls", type=int, default=400, help="calls per run")
    args = parser.parse_args()
    os.environ.setdefault("ANTIFRAUD_PAN_SECRET", secrets.token_hex(16))  # a run's own: no PAN is sent
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # one process: in-memory values

    with (
        tempfile.TemporaryDirectory(prefix="antifraud-bench-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as rds,
    ):
        keys = Path(tmp) / "keys.yaml"
        key = new_key(keys, "bench", "scorer")
        settings = Settings(redis_url=rds.url, api_keys_file=keys)
        apps = {"with": _app(settings, True), "without": _app(settings, False)}
        gc.collect()
        gc.freeze()
        auth = [(b"authorization", f"Bearer {key}".encode())]
        start = datetime.now(UTC) - timedelta(days=20)
        counter = iter(range(10**9))

        def payment() -> Request:
            i = next(counter)
            body = {
                "transaction_id": f"bench-{i}",
                "timestamp": (start + timedelta(seconds=i / 10)).isoformat(),
                "card_id": f"card_{i % 2000}",
                "merchant_id": f"m_{i % 50}",
                "amount": 20.0 + i % 300,
                "currency": "EUR",
                "channel": "ecom",
                "ip_country": "FR",
                "card_country": "FR",
                "device_id": f"dev_{i % 2000}",
            }
            return "POST", "/v1/score", orjson.dumps(body), 200

        requests: dict[str, tuple[Callable[[], Request], bool]] = {
            "POST /v1/score (200)": (payment, True),
            "GET /health (200)": (lambda: ("GET", "/health", b"", 200), True),
            "GET /v1/decisions/{id}, no key (401)": (lambda: ("GET", "/v1/decisions/x1", b"", 401), False),
        }

        async def run(app: FastAPI, make: Callable[[], Request], with_key: bool, calls: int) -> float:
            batch = [make() for _ in range(calls)]  # built before the clock starts
            began = time.perf_counter()
            for request in batch:
                await _call(app, request, auth if with_key else [])
            return (time.perf_counter() - began) / calls

        async def measure() -> None:
            for name, (make, with_key) in requests.items():
                for app in apps.values():  # warm-up: imports, first-call caches, Redis scripts
                    await run(app, make, with_key, 100)
                times: dict[str, list[float]] = {"with": [], "without": []}
                for r in range(args.runs):
                    order = ("with", "without") if r % 2 == 0 else ("without", "with")
                    for variant in order:
                        times[variant].append(await run(apps[variant], make, with_key, args.calls))
                with_us, without_us = (statistics.median(times[v]) * 1e6 for v in ("with", "without"))
                # each run's difference with its neighbour of the other app: drift cancels in pairs
                diffs = [(w - wo) * 1e6 for w, wo in zip(times["with"], times["without"], strict=True)]
                q1, _, q3 = statistics.quantiles(diffs, n=4)
                print(
                    f"{name:40s} with {with_us:7.1f} us  without {without_us:7.1f} us  "
                    f"middleware {statistics.median(diffs):+5.1f} us per request "
                    f"(paired runs: quartiles {q1:+.1f} .. {q3:+.1f})"
                )

        asyncio.run(measure())
        print(f"medians of {args.runs} interleaved runs x {args.calls} calls per app and request")


if __name__ == "__main__":
    main()
