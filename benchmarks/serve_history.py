"""Serve the days of a history from a given day on, so that their decisions are stored, as the demo
serves one day: the input of `antifraud monitor` in docs/monitoring.md ("A real run").

1. an embedded redis-server in `--dir` loaded with every payment and feedback event before `--from`;
2. `antifraud serve` (the stack's decision sink writes the store under `--dir`/data/decisions);
3. every payment from `--from` on replayed over HTTP `POST /v1/score` in time order, and every
   feedback event from `--from` on (the labels that arrive after the last payment too) sent to
   `POST /v1/feedback` as it happens (engine/demo.py's replay, over several days);
4. once the sink has stored everything, the stack is stopped; `--dir` is kept.

    .venv/bin/python benchmarks/serve_history.py --history drift.parquet --from 2026-02-12 --dir var/drift-run
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
from pathlib import Path

import pandas as pd
import redis
from rich.console import Console
from rich.progress import Progress

from antifraud.engine.demo import _replay, _wait_for_sink
from antifraud.engine.stack import ServiceStack
from antifraud.features.online import OnlineFeatures
from antifraud.training.history import load_history


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=Path, required=True, help="history file to serve")
    parser.add_argument("--from", dest="start", required=True, help="first day served (UTC, YYYY-MM-DD)")
    parser.add_argument("--dir", type=Path, required=True, help="the stack's directory (kept)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (the service's default)")
    args = parser.parse_args()
    console = Console()
    history = load_history(args.history)
    start = pd.Timestamp(args.start, tz="UTC")
    start_ms = int(start.timestamp() * 1000)
    stack = ServiceStack(
        keys={"replay": "scorer"},
        model_dir=args.model,
        env={"ANTIFRAUD_PAN_SECRET": secrets.token_hex(16)},
        directory=args.dir,
    )
    with contextlib.closing(stack):
        stack.start_redis()
        with (
            contextlib.closing(redis.Redis.from_url(stack.redis_url)) as client,
            Progress(console=console) as bar,
        ):
            task = bar.add_task(f"loading Redis with the payments before {start.date()}", total=None)
            OnlineFeatures(client).backfill(
                history, until_ms=start_ms, progress=lambda n: bar.update(task, completed=n)
            )
        stack.start_server()
        code = _replay(history, start_ms, sys.maxsize, stack.port, stack.keys["replay"], None, console)
        with contextlib.closing(stack.redis_client()) as client:
            _wait_for_sink(client, timeout_s=600.0)
    console.print(f"decisions stored in {args.dir / 'data' / 'decisions'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
