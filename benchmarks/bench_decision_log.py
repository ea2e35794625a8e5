"""The decision log's cost on the scoring path, and the sink's per decision, on real decisions.

    .venv/bin/python benchmarks/bench_decision_log.py [--decisions 20000] [--rounds 3] [--profile]

Scores `--decisions` payments of the sample's last days through the real scorer (features in a real
redis-server, the model, the rules) with its decision log set aside, keeping each decision as the
scoring path hands it to `Scorer._log`. Then, each round, on an emptied Redis:

- `Scorer._log` of every decision (the idempotency record and the buffer entry, one script): the
  client's CPU per call (process time), and Redis's: `INFO commandstats` EVALSHA usec per call (only
  the log's script runs then, not the features') and redis-server's own CPU (user + sys) per call;
- bytes: `MEMORY USAGE` of the stream per entry (SAMPLES 0), and of 1,000 idempotency records; the
  JSON of an entry and of a record (`STRLEN`, the entry's field);
- the sink: the whole backlog written by `Sink.run_once` (batches of 1,000) into a new Parquet store:
  the sink's CPU per decision (process time; Redis's own is not in it), wall time.

Prints each round and the medians. `--profile`: cProfile of the last round's sink, top functions.
Version-neutral (it calls `Scorer._log`, `Sink` and `ParquetStore` only): run it on another commit's
code with `PYTHONPATH` pointing at a directory whose `antifraud/` holds that checkout's `engine`,
`features` and `training`, to compare the two, alternately. A figure, not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import inspect
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis

import antifraud.engine.pipeline as pipeline
from antifraud.engine.loadgen.replay import RequestSource, load_replay
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.schema import Transaction
from antifraud.engine.services import build_services
from antifraud.engine.settings import Settings
from antifraud.engine.sink import Sink
from antifraud.engine.store.parquet import ParquetStore

# `Scorer._log` is a coroutine since c904b62 (the service awaits the log's call): its blocking form
# never suspends, so one `send` runs it; earlier commits' `_log` is a plain function
_ASYNC_LOG = inspect.iscoroutinefunction(pipeline.Scorer._log)


def log_one(scorer: pipeline.Scorer, decision: Any) -> Any:
    """`Scorer._log` of one decision, its Redis call blocking (as `Scorer.score` makes it)."""
    if not _ASYNC_LOG:
        return scorer._log(decision)  # type: ignore[call-arg]
    flow = scorer._log(decision, True)
    try:
        flow.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the blocking log call suspended")


def capture(scorer: pipeline.Scorer, bodies: list[bytes]) -> list[Any]:
    """Score the payments with the log set aside; the decisions as `Scorer._log` would get them."""
    kept: list[Any] = []

    def keep(decision: Any) -> str:
        # a copy of its timings: the scorer adds log_ms to them after the call, not in the log
        kept.append({**decision, "timings": dict(decision["timings"])})
        return "logged"

    async def keep_async(decision: Any, blocking: bool) -> str:
        return keep(decision)

    real = scorer._log
    scorer._log = keep_async if _ASYNC_LOG else keep  # type: ignore[method-assign,assignment]
    try:
        for body in bodies:
            scorer.score(Transaction.model_validate_json(body))
    finally:
        scorer._log = real  # type: ignore[method-assign]
    return kept


def commandstats(client: redis.Redis) -> dict[str, dict[str, float]]:
    return cast(dict[str, dict[str, float]], client.info("commandstats"))


def redis_cpu(client: redis.Redis) -> float:
    info = cast(dict[str, float], client.info("cpu"))
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def sampled_bytes(client: redis.Redis, pattern: str, n: int) -> tuple[float, float]:
    """Mean MEMORY USAGE and STRLEN of up to n keys matching `pattern`."""
    keys: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        keys.append(cast(bytes, key))
        if len(keys) >= n:
            break
    usage = [cast(int, client.memory_usage(k, samples=0)) for k in keys]
    lengths = [cast(int, client.strlen(k)) for k in keys]
    return statistics.mean(usage), statistics.mean(lengths)


def one_round(
    scorer: pipeline.Scorer, client: redis.Redis, decisions: list[Any], store_dir: Path, profile: bool
) -> dict[str, float]:
    client.flushdb()
    client.config_resetstat()
    gc.collect()
    cpu0 = redis_cpu(client)
    spent = 0.0
    for decision in decisions:
        started = time.process_time()
        done = log_one(scorer, decision)
        spent += time.process_time() - started
        if done != "logged":
            raise RuntimeError(f"a decision was not logged: {done!r}")
    redis_spent = redis_cpu(client) - cpu0
    n = len(decisions)
    stats = commandstats(client)
    evalsha = stats.get("cmdstat_evalsha") or stats.get("cmdstat_fcall") or {}
    figures = {
        "client_us": spent / n * 1e6,
        "evalsha_us": float(evalsha.get("usec_per_call", 0.0)),
        "evalsha_calls": float(evalsha.get("calls", 0)),
        "redis_cpu_us": redis_spent / n * 1e6,
    }
    stream = cast(int, client.memory_usage("af:decisions", samples=0))
    figures["entry_bytes"] = stream / cast(int, client.xlen("af:decisions"))
    first = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange("af:decisions", count=1000))
    figures["entry_json"] = statistics.mean(sum(len(v) for v in fields.values()) for _, fields in first)
    figures["record_bytes"], figures["record_json"] = sampled_bytes(client, "af:{tx:*}:d", 1000)

    store = ParquetStore(store_dir)
    sink = Sink(client, store, batch=1000, block_ms=0, linger_ms=0)
    profiler = cProfile.Profile() if profile else None
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    written = 0
    while handled := sink.run_once():
        written += handled
    if profiler:
        profiler.disable()
    figures["sink_us"] = (time.process_time() - cpu) / n * 1e6
    figures["sink_wall_us"] = (time.perf_counter() - wall) / n * 1e6
    store.close()
    if written != n:
        raise RuntimeError(f"the sink wrote {written} entries of {n}")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return figures


COLUMNS = (
    ("client_us", "_log client CPU us", "{:.1f}"),
    ("evalsha_us", "Redis EVALSHA us/call", "{:.2f}"),
    ("redis_cpu_us", "redis-server CPU us/call", "{:.1f}"),
    ("entry_bytes", "stream bytes/entry", "{:,.0f}"),
    ("entry_json", "entry value bytes", "{:,.0f}"),
    ("record_bytes", "record MEMORY USAGE", "{:,.0f}"),
    ("record_json", "record value bytes", "{:,.0f}"),
    ("sink_us", "sink CPU us/decision", "{:.1f}"),
    ("sink_wall_us", "sink wall us/decision", "{:.1f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions per round (default 20,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--replay-days", type=int, default=7, help="last days of the sample to replay")
    parser.add_argument("--profile", action="store_true", help="cProfile the last round's sink")
    args = parser.parse_args()

    print(f"code: {pipeline.__file__}", file=sys.stderr)
    _, replay = load_replay(args.replay_days)
    with (
        tempfile.TemporaryDirectory(prefix="antifraud-bench-log-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as rds,
    ):
        # a budget of seconds: on a busy machine a call past the service's 30 ms would be answered
        # unlogged ("not stored"), and a decision missing from the log would spoil the figures
        settings = Settings(redis_url=rds.url, data_dir=Path(tmp) / "data", budget_ms=5000)
        services = build_services(settings)
        source = RequestSource(replay, "127.0.0.1", 80, "unused", "log")
        bodies = [r.partition(b"\r\n\r\n")[2] for r in source.take(args.decisions)]
        decisions = capture(services.scorer, bodies)
        gc.freeze()  # the decisions kept here are not the sink's heap: no collection walks them
        rows = []
        for r in range(args.rounds):
            figures = one_round(
                services.scorer,
                services.client,
                decisions,
                Path(tmp) / f"store-{r}",
                args.profile and r == args.rounds - 1,
            )
            rows.append(figures)
            print(
                "round",
                r,
                " ".join(f"{k}={COLUMNS_FMT[k].format(v)}" for k, v in figures.items() if k in COLUMNS_FMT),
                flush=True,
            )
        services.client.close()
    print(f"\n{args.decisions:,} decisions x {args.rounds} rounds; medians")
    print("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|" + "---:|" * len(COLUMNS))
    print(
        "| " + " | ".join(fmt.format(statistics.median(r[k] for r in rows)) for k, _, fmt in COLUMNS) + " |"
    )


COLUMNS_FMT = {k: fmt for k, _, fmt in COLUMNS}

if __name__ == "__main__":
    main()
