"""The service's monitoring job (engine/monitor_job.py): what one run costs the decision sink's process.

    .venv/bin/python benchmarks/bench_monitor_job.py [--decisions 50000] [--window-s 3600] [--rounds 3]
        [--dir DIR]

Writes a Parquet store of `--decisions` decisions spread over the last `--window-s` seconds, shaped as
the service logs them (the spec's features by name, 5 % of values missing), in batches of 1,000 as the
sink writes them (kept in `--dir` when given, and reused by the next call), and a reference profile;
then runs `MonitorJob.run_once` as the sink's thread does, against a real redis-server. Prints per
run the decisions read, wall and CPU time (process time: DuckDB's threads included), the resident
memory before the run and its peak during it (Linux: the peak is reset before each run), and the
summary's size. A figure, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import redis

from antifraud.engine.monitor_job import MonitorJob
from antifraud.engine.monitoring import build_profile
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import Settings
from antifraud.engine.store import DecisionQuery, Logged, open_store
from antifraud.features.spec import load_spec

BATCH = 1000


def write_store(root: Path, count: int, window_s: float, names: list[str]) -> None:
    """`count` decisions over the `window_s` seconds before now, written as the sink writes them."""
    rng = np.random.default_rng(1)
    now = datetime.now(UTC)
    store = open_store(str(root))
    try:
        for first in range(0, count, BATCH):
            batch = []
            for i in range(first, min(count, first + BATCH)):
                stamp = now - timedelta(seconds=window_s * (1 - i / count))
                features = {n: None if rng.random() < 0.05 else float(rng.lognormal(1, 1)) for n in names}
                decision: dict[str, Any] = {
                    "transaction_id": f"tx-{i}",
                    "verdict": "allow",
                    "score": float(rng.beta(1, 50)),
                    "risk_score": 3,
                    "reasons": {"rules": [], "shadow_rules": [], "skipped_rules": [], "model": []},
                    "model_version": "m-1",
                    "rules_version": "r-1",
                    "degraded": [],
                    "timestamp": stamp.isoformat(),
                    "decided_at": stamp.isoformat(),
                    "payment": {"card_id": f"card_{i % 5000}", "merchant_id": "m_1", "channel": "ecom"},
                    "amount": 10.0,
                    "currency": "EUR",
                    "features": features,
                    "timings": {"total_ms": 1.5},
                    "test": False,
                }
                batch.append(Logged(f"{int(stamp.timestamp() * 1000)}-{i}", decision))  # type: ignore[arg-type]
            store.write(batch, [])
    finally:
        store.close()


def memory_mb(field: str) -> int:
    """VmRSS or VmHWM (the peak) of this process, in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith(field + ":"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--window-s", type=float, default=3600.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="keep the store here (reused when present)")
    args = parser.parse_args()
    names = load_spec().feature_names
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        root = args.dir or Path(tmp)
        if not (root / "decisions").exists():
            started = time.perf_counter()
            write_store(root, args.decisions, args.window_s, names)
            print(f"wrote {args.decisions} decisions in {time.perf_counter() - started:.0f} s")
        model = root / "model"
        model.mkdir(exist_ok=True)
        rng = np.random.default_rng(2)
        features = {n: rng.lognormal(1, 1, 5000) for n in names}
        build_profile("m-1", ("2026-01-01", "2026-02-01"), features, rng.beta(1, 50, 5000)).save(model)
        with EmbeddedRedis() as server:
            client = redis.Redis.from_url(server.url)
            settings = dataclasses.replace(
                Settings(), model_dir=model, store_url=str(root), redis_url=server.url
            )
            store = open_store(settings.store_url)
            # the window ends just after the newest decision, however long ago the store was written
            newest = datetime.fromisoformat(store.search(DecisionQuery(limit=1))[0]["timestamp"])
            store.close()
            job = MonitorJob(client, settings)
            print(
                f"{len(names)} features; window {args.window_s:.0f} s; "
                f"at most {settings.monitor_max_rows} rows"
            )
            for _ in range(args.rounds):
                before = memory_mb("VmRSS")
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")  # reset the peak (VmHWM)
                cpu, wall = time.process_time(), time.perf_counter()
                summary = job.run_once(now=newest + timedelta(seconds=1))
                print(
                    f"read {summary['rows']}: wall {time.perf_counter() - wall:.2f} s, "
                    f"cpu {time.process_time() - cpu:.2f} s, "
                    f"rss {before} MB -> peak {memory_mb('VmHWM')} MB, "
                    f"summary {client.strlen('af:monitor:latest')} B"
                )
            client.close()


if __name__ == "__main__":
    main()
