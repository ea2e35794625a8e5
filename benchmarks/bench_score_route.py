"""CPU per request of POST /v1/score in-process: the HTTP layer's share, measured against a bare handler.

Every variant is an ASGI callable answering the same payments with the same kind of scorer call,
against one real redis-server (unix socket, empty at start), called in-process with the body in
memory (no HTTP parsing, no socket):

- `fastapi`: the app of `create_app` with FastAPI serving /v1/score (`raw_score_route=False`):
  middlewares (metrics, auth, body limit), Starlette's and FastAPI's routing, the route;
- `raw-asgi`: the app as served, /v1/score answered by the raw ASGI handler in front of FastAPI
  (engine/api/fast_path.py);
- `bare`: the floor, a minimal ASGI callable doing only parse -> `Scorer.score` -> orjson bytes (and
  the flagged payments' explanation in a thread, like the others): no auth, no limit, no metrics;
- `bare + middlewares`: the floor behind the app's three middleware classes (request counter,
  API-key check, body limit), the same objects as the app's: what those cost by themselves.

Interleaved: each round runs a block of `--calls` fresh payments (the sample's last days, unique
transaction ids, time moving forward) through each variant in turn, the order reversed every other
round, so drift falls on all alike. Figures: the median over rounds of each round's median CPU
(process time: the worker's own CPU, not Redis's) and wall time per call, the spread of the rounds'
medians (the noise), and each variant's CPU less the bare floor's.

    .venv/bin/python benchmarks/bench_score_route.py [--rounds 10] [--calls 400]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import orjson
from fastapi import FastAPI
from loadlib.asgi import score_scope
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from antifraud.engine.api import ANSWER_FIELDS, create_app, start_services
from antifraud.engine.api.http_metrics import HttpMetrics
from antifraud.engine.api.middleware import BodyLimit
from antifraud.engine.auth import ApiKeyAuth, KeyRing, new_key
from antifraud.engine.decision_record import Decision
from antifraud.engine.loadgen.client import run_async
from antifraud.engine.loadgen.replay import RequestSource, load_replay
from antifraud.engine.metrics import Metrics
from antifraud.engine.pipeline import Answer, Scorer
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.schema import Transaction
from antifraud.engine.settings import Settings


class ScorerLike(Protocol):
    """What a handler calls on the scorer (`Scorer`, or `ConstantScorer` to time the HTTP layer alone)."""

    def score(self, txn: Transaction) -> Answer: ...

    def needs_explaining(self, answer: Answer) -> TypeGuard[Decision]: ...

    def explain_stored(self, decision: Decision) -> None: ...


def bare_handler(scorer: ScorerLike) -> ASGIApp:
    """The floor: read the body, validate it, score, answer the answer's fields as JSON bytes."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        answered = scorer.score(Transaction.model_validate_json(body))
        picked: Any = answered
        payload = orjson.dumps({name: picked[name] for name in ANSWER_FIELDS})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        if scorer.needs_explaining(answered):
            await run_in_threadpool(scorer.explain_stored, answered)

    return app


async def run_block(app: ASGIApp, bodies: list[bytes], key: str) -> list[tuple[float, float]]:
    """(CPU s, wall s) of each call of `app` on each body; every answer must be a 200."""
    out: list[tuple[float, float]] = []
    for body in bodies:
        sent: list[Message] = []

        async def receive(body: bytes = body) -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message, sent: list[Message] = sent) -> None:
            sent.append(message)

        scope = score_scope(body, key)
        w, c = time.perf_counter(), time.process_time()
        await app(scope, receive, send)
        out.append((time.process_time() - c, time.perf_counter() - w))
        if sent[0]["status"] != 200:
            raise RuntimeError(f"a variant answered {sent[0]['status']}: {sent[1].get('body', b'')[:300]!r}")
    return out


class ConstantScorer:
    """Stands in for the scorer to time the HTTP layer alone: answers one decision, explains nothing."""

    def __init__(self, decision: Answer) -> None:
        self.decision = decision

    def score(self, txn: Transaction) -> Answer:
        return self.decision

    def needs_explaining(self, answer: Answer) -> TypeGuard[Decision]:
        return False

    def explain_stored(self, decision: Decision) -> None:
        raise AssertionError("a constant answer is never explained")


def variants_of(
    served: FastAPI, through_fastapi: FastAPI, scorer: ScorerLike, settings: Settings, keys: Path
) -> dict[str, ASGIApp]:
    """The four variants, the bare ones on `scorer` (the apps use their own `state.scorer`)."""
    return {
        "fastapi": through_fastapi,
        "raw-asgi": served,
        "bare": bare_handler(scorer),
        # the floor behind the same middleware classes as the app's: what they cost by themselves
        "bare + middlewares": HttpMetrics(
            ApiKeyAuth(BodyLimit(bare_handler(scorer), settings.max_body_bytes), KeyRing(keys)),
            Metrics(),
        ),
    }


def interleaved(
    variants: dict[str, ASGIApp], bodies: Callable[[int], list[bytes]], key: str, rounds: int, calls: int
) -> dict[str, list[tuple[float, float]]]:
    """Each round's (median CPU s, median wall s) per call of each variant, the order reversed every
    other round; one warm-up block each first (imports, caches, the middleware stacks built)."""
    for variant in variants.values():
        run_async(run_block(variant, bodies(200), key))
    medians: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples = run_async(run_block(variants[name], bodies(calls), key))
            medians[name].append(
                (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples))
            )
    return medians


def table(title: str, medians: dict[str, list[tuple[float, float]]]) -> str:
    """The figures as a Markdown table, with the fast path's CPU as a share of FastAPI's."""
    floor = statistics.median(c for c, _ in medians["bare"]) * 1e6
    lines = [title, "", "| variant | CPU p50 | rounds' CPU p50 min-max | wall p50 | CPU over bare |"]
    lines.append("|---|---:|---:|---:|---:|")
    for name, rows in medians.items():
        cpu = [c * 1e6 for c, _ in rows]
        wall = statistics.median(w for _, w in rows) * 1e6
        mid = statistics.median(cpu)
        lines.append(
            f"| {name} | {mid:,.1f} | {min(cpu):,.1f}-{max(cpu):,.1f} | {wall:,.1f} | {mid - floor:+,.1f} |"
        )
    fast, slow = (statistics.median(c for c, _ in medians[n]) for n in ("raw-asgi", "fastapi"))
    lines.append(f"\nraw-asgi / fastapi CPU: {fast / slow:.2f} ({(slow - fast) * 1e6:,.1f} us less per call)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--calls", type=int, default=400, help="payments per variant per round (default 400)")
    parser.add_argument("--replay-days", type=int, default=7, help="last days of the sample to replay")
    args = parser.parse_args()

    _, replay = load_replay(args.replay_days)
    with (
        tempfile.TemporaryDirectory(prefix="antifraud-bench-route-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as rds,
    ):
        keys = Path(tmp) / "keys.yaml"
        key = new_key(keys, "bench", "scorer")
        settings = Settings(redis_url=rds.url, api_keys_file=keys, data_dir=Path(tmp) / "data")
        served = create_app(settings)
        through_fastapi = create_app(settings, raw_score_route=False)
        for app in (through_fastapi, served):
            start_services(app)  # what the lifespan does, without its watchers
        gc.collect()
        gc.freeze()  # as served (the lifespan freezes the start-up heap)
        source = RequestSource(replay, "127.0.0.1", 80, key, "route")

        def bodies(n: int) -> list[bytes]:
            return [r.partition(b"\r\n\r\n")[2] for r in source.take(n)]

        scorer: Scorer = served.state.scorer
        variants = variants_of(served, through_fastapi, scorer, settings, keys)
        scored = interleaved(variants, bodies, key, args.rounds, args.calls)
        # The HTTP layer alone: every variant's scorer answers one stored decision at once.
        constant = ConstantScorer(scorer.score(Transaction.model_validate_json(bodies(1)[0])))
        for app in (served, through_fastapi):
            app.state.scorer = constant
        layer = interleaved(
            variants_of(served, through_fastapi, constant, settings, keys),
            bodies,
            key,
            args.rounds,
            args.calls,
        )

    print(f"{args.rounds} interleaved rounds x {args.calls} payments per variant; per call in-process, us\n")
    print(table("With the scorer (features in Redis, model, rules, decision log):", scored))
    print()
    print(table("The HTTP layer alone (body parse included; the scorer answers a constant decision):", layer))


if __name__ == "__main__":
    main()
