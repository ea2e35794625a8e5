"""Each step of a `/v1/score` request timed in-process: wall and CPU time, and full GC pauses."""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from antifraud.engine.auth import new_key
from antifraud.engine.loadgen.client import run_async
from antifraud.engine.loadgen.replay import Replay, RequestSource
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT

from .asgi import score_scope


def components(args: argparse.Namespace, replay: Replay, rdb: Path) -> None:
    """In-process cost of the whole `/v1/score` call and of each step of it.

    No HTTP and no other worker: the app built by `create_app` is called as ASGI with the request
    body in memory, against a real redis-server restored from the snapshot (unix socket). Each
    step is then timed alone on fresh payments, with wall time and CPU time (their difference is
    time the worker spends blocked, mostly waiting for Redis on a synchronous call). The steps are
    called through the objects' public methods as `Scorer.score` calls them (the rules' input with
    the scorer's own `_rule_env`), never through their private helpers, so this keeps working while
    those change.
    """
    import gc

    import orjson

    from antifraud.engine.api import ANSWER_FIELDS, create_app, start_services
    from antifraud.engine.decision_record import Decision
    from antifraud.engine.pipeline import _rule_env, idempotency_record
    from antifraud.engine.schema import Transaction
    from antifraud.engine.settings import Settings
    from antifraud.features.online import to_ms

    n = args.components
    with tempfile.TemporaryDirectory(prefix="antifraud-load-") as tmp:
        (Path(tmp) / "redis").mkdir()
        shutil.copyfile(rdb, Path(tmp) / "redis" / "dump.rdb")
        with EmbeddedRedis(Path(tmp) / "redis") as rds:
            keys = Path(tmp) / "keys.yaml"
            key = new_key(keys, "components", "scorer")
            app = create_app(Settings(redis_url=rds.url, api_keys_file=keys))
            scorer = start_services(app).scorer  # what the app's lifespan does, without its watcher
            gc.collect()
            gc.freeze()
            source = RequestSource(replay, "127.0.0.1", 80, key, "components")
            rows: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)

            def timed(name: str, fn: Any, *a: Any, **kw: Any) -> Any:
                w, c = time.perf_counter(), time.process_time()
                out = fn(*a, **kw)
                rows[name].append((time.perf_counter() - w, time.process_time() - c))
                return out

            async def asgi(bodies: list[bytes]) -> None:
                for body in bodies:
                    scope = score_scope(body, key)
                    sent: list[Any] = []

                    async def receive(body: bytes = body) -> dict[str, Any]:
                        return {"type": "http.request", "body": body, "more_body": False}

                    async def send(message: Any, sent: list[Any] = sent) -> None:
                        sent.append(message)

                    w, c = time.perf_counter(), time.process_time()
                    await app(scope, receive, send)
                    rows["ASGI app call, whole request (no HTTP parsing, no socket)"].append(
                        (time.perf_counter() - w, time.process_time() - c)
                    )
                    assert sent[0]["status"] == 200, sent

            def bodies(k: int) -> list[bytes]:
                return [r.partition(b"\r\n\r\n")[2] for r in source.take(k)]

            gc_pauses: list[float] = []
            gc_started = [0.0]

            def on_gc(phase: str, info: dict[str, Any]) -> None:
                if info["generation"] == 2:
                    if phase == "start":
                        gc_started[0] = time.perf_counter()
                    else:
                        gc_pauses.append(time.perf_counter() - gc_started[0])

            gc.callbacks.append(on_gc)
            run_async(asgi(bodies(min(500, n))))  # warm-up
            rows.clear()
            gc_pauses.clear()
            whole = "ASGI app call, whole request (no HTTP parsing, no socket)"
            run_async(asgi(bodies(n)))
            frozen_pauses, frozen_rows = list(gc_pauses), rows.pop(whole)
            gc.unfreeze()
            gc_pauses.clear()
            run_async(asgi(bodies(n)))
            unfrozen_pauses, unfrozen_rows = list(gc_pauses), rows.pop(whole)
            rows[whole], rows[f"{whole}, after gc.unfreeze()"] = frozen_rows, unfrozen_rows
            gc.callbacks.remove(on_gc)
            gc.collect()
            gc.freeze()

            online, log, model, rules = (
                scorer.features,
                scorer.log,
                scorer.loaded.model,
                scorer.loaded.rules,
            )
            assert model is not None, "no model loaded"
            # A raw row for derive alone: every entity present with an empty history, so derive does
            # its work for each entity without a Redis call.
            raw = np.zeros(len(online.plan.raw_names))
            raw[[online.plan.raw_index[f"{p.entity}:present"] for p in online.plan.entities]] = 1.0
            flagged_rows = []
            for body in bodies(n):
                txn = timed(
                    "parse: Transaction.model_validate_json (raw body)", Transaction.model_validate_json, body
                )
                payment = timed("scorer: txn.model_dump()", txn.model_dump)
                features = timed(
                    "features: OnlineFeatures.score (EVALSHA round trip + derive)", online.score, payment
                )
                timed(
                    "features: derive alone (Deriver.transform_one, CPU only)",
                    online.deriver.transform_one,
                    raw,
                    payment,
                    to_ms(payment["timestamp"]),
                )
                score = timed("model: predict_one", model.predict_one, features.values)
                env = timed(
                    "rules: _rule_env", _rule_env, payment, online.feature_names, features.values, rules
                )
                outcome = timed(
                    "rules: decide",
                    rules.decide,
                    score,
                    env,
                    txn.merchant_id,
                    no_score_verdict=scorer.fail_policy,
                    risk_score=model.risk_score(score),
                )
                if (outcome.verdict or scorer.fail_policy) != "allow":
                    flagged_rows.append(features.values)
            for values in flagged_rows[: max(50, n // 10)]:
                timed(
                    "model: TreeSHAP contributions (challenge, review and block answers only)",
                    model.contributions,
                    values,
                )
            metrics = scorer.metrics
            assert metrics is not None, "the app's scorer counts its decisions"
            for body in bodies(n):
                txn = Transaction.model_validate_json(body)
                decision = timed(
                    "scorer.score(), whole (features .. decision log, metrics)", scorer.score, txn
                )
                picked: Mapping[str, object] = decision
                answer = {name: picked[name] for name in ANSWER_FIELDS}  # what /v1/score answers
                timed("response: orjson.dumps of the answer's fields", orjson.dumps, answer)
                assert "features" in decision, "a new payment: its whole decision"
                copy = cast(Decision, {**decision, "transaction_id": decision["transaction_id"] + "-copy"})
                timed(
                    "decision log: DecisionLog.put (record + orjson + EVALSHA SET/XADD)",
                    lambda d: log.put(d, idempotency_record(d)),
                    copy,
                )
                timed(
                    "metrics: Metrics.observe (one process)",
                    metrics.observe,
                    decision,
                    decision["timings"],
                )

    print(f"in-process, {n:,} payments per step, medians (us); blocked = wall - CPU:\n")
    print("| step | wall p50 | wall p99 | CPU p50 | blocked p50 |")
    print("|---|---:|---:|---:|---:|")
    for name, samples in rows.items():
        wall = np.array([w for w, _ in samples]) * 1e6
        cpu = np.array([c for _, c in samples]) * 1e6
        print(
            f"| {name} | {np.percentile(wall, 50):,.0f} | {np.percentile(wall, 99):,.0f} "
            f"| {np.percentile(cpu, 50):,.0f} | {max(0.0, np.percentile(wall - cpu, 50)):,.0f} |"
        )
    for label, pauses in (("gc.freeze (as served)", frozen_pauses), ("after gc.unfreeze()", unfrozen_pauses)):
        ms = np.array(pauses) * 1000
        detail = f"max {ms.max():.1f} ms, total {ms.sum():.1f} ms" if len(ms) else "none"
        print(f"\nfull (generation 2) collections over {n:,} requests, {label}: {len(ms)}; {detail}")
    mp = _multiprocess_observe_us()
    print(f"\nmetrics in multi-process mode (what 2 workers use): {mp:.0f} us per observe()")


def _multiprocess_observe_us() -> float:
    """Cost of one Metrics.observe() with PROMETHEUS_MULTIPROC_DIR set (a subprocess: the mode is
    chosen when prometheus_client is imported)."""
    code = (
        "import time\n"
        "from antifraud.engine.metrics import Metrics\n"
        "m = Metrics()\n"
        "d = {'verdict': 'allow', 'score': 0.01, 'risk_score': 10,"
        " 'reasons': {'rules': [], 'shadow_rules': []}, 'degraded': []}\n"
        "t = {'features_ms': 0.5, 'model_ms': 0.04, 'rules_ms': 0.05, 'total_ms': 0.7, 'log_ms': 0.2}\n"
        "for _ in range(500): m.observe(d, t)\n"
        "w = time.perf_counter()\n"
        "for _ in range(5000): m.observe(d, t)\n"
        "print((time.perf_counter() - w) / 5000 * 1e6)\n"
    )
    with tempfile.TemporaryDirectory(prefix="antifraud-metrics-") as tmp:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tmp}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
    return float(out.stdout.strip())
