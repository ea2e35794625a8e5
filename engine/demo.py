"""`make demo`: the whole engine on one machine, from a fresh clone, in a few minutes.

1. the sample history (simulated with a fixed seed if missing) and a model (trained if missing);
2. an embedded redis-server, loaded with every payment and feedback event before the replay day;
3. `antifraud serve` as a real process, with a fresh API key;
4. one day of sample payments replayed over HTTP `POST /v1/score` in time order, with the day's
   feedback sent to `POST /v1/feedback` as it happens;
5. a summary: verdicts, frauds caught and missed, latency; then, once the decision sink has written
   everything, the reviews waiting in the risk console, its address and an admin key to sign in with;
   on a terminal the stack stays up for the console until Ctrl+C (unless `wait` is off); everything
   started is then stopped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from datetime import timedelta
from typing import cast

import httpx
import numpy as np
import pandas as pd
import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from antifraud.engine.console.explain import age_words, reason_codes
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.review.queue import Case, ReviewQueue
from antifraud.engine.settings import ROOT
from antifraud.engine.stack import ServiceStack
from antifraud.engine.verdicts import VERDICTS
from antifraud.engine.vocabulary import FEEDBACK_OF_HISTORY_EVENT, HistoryEvent
from antifraud.features.online import OnlineFeatures
from antifraud.features.stream import payment_record, stream

SAMPLE = ROOT / "data" / "sample" / "history.parquet"
MODEL = ROOT / "models" / "default"
SAMPLE_ARGS = {"days": 60, "cards": 3000, "merchants": 300, "seed": 7}
TRAIN_DAYS = 42  # the model is trained on the first six weeks; later days are unseen
REVIEWS_SHOWN = 10
#: the review table's reasons column: with the other columns the table fits 100 columns of terminal
REASONS_WIDTH = 26


def ensure_sample(console: Console) -> pd.DataFrame:
    """The committed sample, re-simulated with its fixed seed if it is missing."""
    from antifraud.training.history import load_history, write_history
    from antifraud.training.simulator import simulate

    if not SAMPLE.exists():
        console.print(f"no sample at {SAMPLE}: simulating it ({SAMPLE_ARGS})")
        SAMPLE.parent.mkdir(parents=True, exist_ok=True)
        write_history(simulate(**SAMPLE_ARGS), SAMPLE)  # type: ignore[arg-type]
    return load_history(SAMPLE)


def ensure_model(history: pd.DataFrame, console: Console) -> None:
    """The default model, trained on the sample's first weeks if it is missing."""
    from antifraud.training.train import train

    if (MODEL / "model.txt").exists():
        return
    start = history["timestamp"].min().date()
    console.print(f"no model at {MODEL}: training on {start} + {TRAIN_DAYS} days of the sample")
    train(SAMPLE, start, start + timedelta(days=TRAIN_DAYS), MODEL)


def run_demo(
    day: str | None = None, limit: int | None = None, console: Console | None = None, wait: bool = True
) -> int:
    """Run the demo; returns the process exit code. `wait`: on a terminal, keep the stack up for the
    console until Ctrl+C."""
    console = console or Console()
    history = ensure_sample(console)
    ensure_model(history, console)
    last = history["timestamp"].max().normalize()
    replay_day = pd.Timestamp(day, tz="UTC") if day else last - pd.Timedelta(days=1)
    start_ms = int(replay_day.timestamp() * 1000)
    end_ms = start_ms + 86_400_000
    stack = ServiceStack(
        keys={"demo": "scorer", "console": "admin"},
        env={
            # a fresh secret per demo unless one is given: no key ever lives in the code
            "ANTIFRAUD_PAN_SECRET": os.environ.get("ANTIFRAUD_PAN_SECRET") or secrets.token_hex(16),
        },
        output="inherit",  # the service's own messages on the console
        prefix="antifraud-demo-",
    )
    with contextlib.closing(stack):
        stack.start_redis()
        client = redis.Redis.from_url(stack.redis_url)
        with Progress(console=console) as progress:
            before = int((history["timestamp"] < replay_day).sum())
            task = progress.add_task(
                f"loading Redis with the {before:,} payments before {replay_day.date()}", total=None
            )
            OnlineFeatures(client).backfill(
                history, until_ms=start_ms, progress=lambda n: progress.update(task, completed=n)
            )
            progress.update(task, total=1, completed=1)
        client.close()
        try:
            stack.start_server()
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            return 1
        code = _replay(history, start_ms, end_ms, stack.port, stack.keys["demo"], limit, console)
        _console_summary(stack, console)
        if wait and console.is_terminal:
            console.print("the stack stays up for the console: press Ctrl+C to stop it")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return code


def _replay(
    history: pd.DataFrame,
    start_ms: int,
    end_ms: int,
    port: int,
    key: str,
    limit: int | None,
    console: Console,
) -> int:
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=5.0) as http:
        events = [(e, r, t) for e, r, t in stream(history) if start_ms <= t < end_ms]
        payments = sum(1 for e, _, _ in events if e == "payment")
        if limit is not None:
            payments = min(payments, limit)
        verdicts: dict[str, str] = {}
        latencies: list[float] = []
        errors = 0
        with Progress(console=console) as progress:
            task = progress.add_task(f"replaying {payments:,} payments over HTTP", total=payments)
            for event, row, t_ms in events:
                record = payment_record(history, row)
                if event == "payment":
                    if len(latencies) >= payments:
                        break
                    body = _transaction_body(record)
                    t0 = time.perf_counter()
                    response = http.post("/v1/score", json=body)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if response.status_code != 200:
                        errors += 1
                        continue
                    verdicts[record["transaction_id"]] = response.json()["verdict"]
                    progress.advance(task)
                else:
                    response = http.post("/v1/feedback", json=_feedback_body(event, record, t_ms))
                    errors += response.status_code != 202
    _summary(history, verdicts, latencies, errors, console)
    return 0 if errors == 0 and verdicts else 1


def _transaction_body(record: dict[str, object]) -> dict[str, object]:
    from antifraud.engine.schema import TRANSACTION_COLUMNS

    body = {k: record.get(k) for k in TRANSACTION_COLUMNS if record.get(k) is not None}
    body["timestamp"] = pd.Timestamp(record["timestamp"]).isoformat()  # type: ignore[arg-type]
    return body


def _feedback_body(event: str, record: dict[str, object], t_ms: int) -> dict[str, object]:
    reported = pd.Timestamp(t_ms, unit="ms", tz="UTC").isoformat()
    body: dict[str, object] = {"transaction_id": record["transaction_id"], "reported_at": reported}
    kind, value = FEEDBACK_OF_HISTORY_EVENT[cast(HistoryEvent, event)]
    body["kind"] = kind
    if value is not None:
        body[kind] = value  # a label's or an outcome's field is named after its kind
    if kind == "outcome":
        body["decline_code"] = record.get("decline_code") or None
    return body


def _summary(
    history: pd.DataFrame, verdicts: dict[str, str], latencies: list[float], errors: int, console: Console
) -> None:
    labels = history.set_index("transaction_id")["label"]
    scored = pd.Series(verdicts)
    fraud = labels.reindex(scored.index).fillna(0).astype(int) == 1
    table = Table(title="antifraud demo: one day of sample payments over HTTP")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("payments scored", f"{len(scored):,}")
    for verdict in VERDICTS:
        table.add_row(verdict, f"{int((scored == verdict).sum()):,}")
    table.add_row("frauds in the day", f"{int(fraud.sum()):,}")
    table.add_row("frauds blocked", f"{int((fraud & (scored == 'block')).sum()):,}")
    table.add_row("frauds challenged (second factor)", f"{int((fraud & (scored == 'challenge')).sum()):,}")
    table.add_row("frauds sent to review", f"{int((fraud & (scored == 'review')).sum()):,}")
    table.add_row("frauds missed (allowed)", f"{int((fraud & (scored == 'allow')).sum()):,}")
    table.add_row("good payments challenged", f"{int((~fraud & (scored == 'challenge')).sum()):,}")
    table.add_row("good payments blocked", f"{int((~fraud & (scored == 'block')).sum()):,}")
    if latencies:
        table.add_row("latency p50 (ms, client side)", f"{np.percentile(latencies, 50):.2f}")
        table.add_row("latency p99 (ms, client side)", f"{np.percentile(latencies, 99):.2f}")
    table.add_row("HTTP errors", str(errors))
    console.print(table)


def _console_summary(stack: ServiceStack, console: Console) -> None:
    """Once the sink has written every decision: the reviews waiting in the console (up to
    REVIEWS_SHOWN, riskiest first), the console's address and the key to sign in with."""
    client = stack.redis_client()
    try:
        _wait_for_sink(client)
        found = ReviewQueue(client).page("riskiest", 0, REVIEWS_SHOWN)
    finally:
        client.close()
    console.print(review_table(found.cases, found.open_count))
    address = f"http://127.0.0.1:{stack.port}/console/"
    console.print(f"console: {address}  sign in with the key {stack.keys['console']}")


def review_table(cases: list[Case], open_count: int) -> Table:
    """The reviews waiting, one line each: the reasons as their codes, cut to REASONS_WIDTH with a
    count of those left out (the console shows each case's reasons in full)."""
    table = Table(
        title=f"reviews waiting in the console: {open_count}",
        caption="reasons by their codes; the console shows them in words",
    )
    for column in ("transaction", "risk", "amount", "merchant", "reasons", "waiting"):
        width = REASONS_WIDTH if column == "reasons" else None
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=width)
    for case in cases:
        table.add_row(
            case.transaction_id,
            "none" if case.risk_score is None else str(case.risk_score),
            f"{case.amount:.2f} {case.currency}",
            case.merchant,
            fit_codes(reason_codes(case.reasons), REASONS_WIDTH),
            age_words(case.age),
        )
    return table


def fit_codes(codes: list[str], width: int) -> str:
    """As many of `codes` as fit in `width` characters, joined by ", ", and "+N" for the rest."""

    def shown(n: int) -> str:
        return ", ".join(codes[:n]) + (f" +{len(codes) - n}" if n < len(codes) else "")

    # the first code always shows (the table cuts it with an ellipsis when it alone is too long)
    return next((shown(n) for n in range(len(codes), 0, -1) if len(shown(n)) <= width), shown(1))


def _wait_for_sink(client: redis.Redis, timeout_s: float = 30.0) -> None:
    """Until the decision and feedback buffers are empty (the sink has written and fed them all)."""
    log = DecisionLog(client)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not client.xlen(log.decisions_stream) and not client.xlen(log.feedback_stream):
            return
        time.sleep(0.2)
