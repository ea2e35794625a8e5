"""What the reliability tests share: the service as real processes, payments, the load replayer, figures.

- `Service`: a real redis-server (`engine.redis_server.EmbeddedRedis`, TCP or unix socket, AOF on or
  off) and `antifraud serve --workers N` as a subprocess with its own API keys, model directory and
  rules directory (copies, so a test may swap and edit them), its output captured in a log file.
- `Payments`: realistic payment bodies (entities, amounts, countries of the committed sample) with
  fresh transaction ids and timestamps chosen by the test, so that every window is predictable.
- `replay()`: the open-loop fixed-rate replayer of `benchmarks/load_http.py` (imported, not copied):
  request i is due at t0 + i/rate whatever happened before; latency counts from the due time.
- `FIGURES`: every figure a test measures, printed at once (`-s`) and summarised at the end.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import redis

from engine.auth import new_key
from engine.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MS = 50.0  # ANTIFRAUD_BUDGET_MS given to every service started here (the default)
SAMPLE = ROOT / "data" / "sample" / "history.parquet"


# --------------------------------------------------------------------------------------------------
# Figures


@dataclass
class Figure:
    section: str
    name: str
    value: str
    command: str


@dataclass
class Figures:
    """Every figure measured in this session, in order; printed as it is recorded."""

    items: list[Figure] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, section: str, name: str, value: Any, command: str = "") -> None:
        text = _fmt(value)
        self.items.append(Figure(section, name, text, command))
        print(f"[reliability] {section} | {name}: {text}", flush=True)

    def markdown(self) -> str:
        lines = ["| part | figure | value |", "|---|---|---:|"]
        lines += [f"| {f.section} | {f.name} | {f.value} |" for f in self.items]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


FIGURES = Figures()


# --------------------------------------------------------------------------------------------------
# The load replayer of benchmarks/load_http.py


def load_http() -> ModuleType:
    """benchmarks/load_http.py as a module (the open-loop replayer and its helpers)."""
    path = ROOT / "benchmarks"
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    module = importlib.import_module("load_http")
    needed = ("run_cell", "run_async", "free_port", "load_replay", "descendants", "cmdline")
    needed += ("cpu_seconds", "machine_busy_seconds", "wait_quiet")
    missing = [name for name in needed if not hasattr(module, name)]
    if missing:
        raise RuntimeError(f"benchmarks/load_http.py no longer has {missing}: update tests/reliability")
    return module


def normal_suite(name: str) -> ModuleType:
    """A module of the normal test suite (tests/<name>.py), loaded by path once: its strategies and
    corpora are reused here, not copied (tests/ is not a package)."""
    module_name = f"_reliability_reuse_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    return int(load_http().free_port())


@dataclass
class Run:
    """What happened to each request of a replay (times from time.perf_counter, latencies in ms)."""

    sched: np.ndarray
    done: np.ndarray
    status: np.ndarray
    bodies: list[bytes | None]

    @property
    def latency_ms(self) -> np.ndarray:
        answered = ~np.isnan(self.done)
        return np.where(answered, (self.done - self.sched) * 1000, np.inf)

    def answers(self) -> list[dict[str, Any] | None]:
        return [
            json.loads(b) if b and s in (200, 202) else None
            for b, s in zip(self.bodies, self.status, strict=True)
        ]


def replay(
    port: int, requests: list[bytes], rate: float, connections: int = 64, drain_s: float = 30.0
) -> Run:
    """Send raw HTTP requests at a fixed rate (open loop) on keep-alive connections; wait for answers."""
    lh = load_http()
    cell, _, _ = lh.run_async(lh.run_cell(port, requests, rate, 0, connections, drain_s, {}))
    return Run(cell.sched.copy(), cell.done.copy(), cell.status.copy(), list(cell.bodies))


def http_request(port: int, key: str, path: str, body: dict[str, Any]) -> bytes:
    """One raw HTTP/1.1 POST with a JSON body, as the replayer sends it."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    return head + payload


class MachineLoad:
    """How busy the 2 cores were over a scenario, ours and everybody else's (a shared machine)."""

    def __init__(self, service: Service) -> None:
        lh = load_http()
        self.service = service
        # wait (at most 20 s) until other people's jobs leave the cores mostly free
        self.others_before = float(lh.wait_quiet(self._ours(), 0.5, 20.0))
        self.wall = time.perf_counter()
        self.busy = float(lh.machine_busy_seconds())
        self.mine = float(lh.cpu_seconds(self._ours()))

    def _ours(self) -> list[int]:
        pids = [os.getpid()]
        if self.service.server is not None:
            pids += [self.service.server.pid, *load_http().descendants(self.service.server.pid)]
        if self.service.redis.process is not None:
            pids.append(self.service.redis.process.pid)
        return pids

    def summary(self) -> str:
        lh = load_http()
        wall = time.perf_counter() - self.wall
        busy = (float(lh.machine_busy_seconds()) - self.busy) / wall
        mine = (float(lh.cpu_seconds(self._ours())) - self.mine) / wall
        return (
            f"other jobs before: {self.others_before:.2f} cores; during: all {busy:.2f} of "
            f"{os.cpu_count()} cores, not ours ~{max(0.0, busy - mine):.2f}"
        )


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.percentile(values, q, method="higher")) if len(values) else float("nan")


# --------------------------------------------------------------------------------------------------
# Payments


class Payments:
    """Payment bodies from the sample's last days, re-identified and re-timed by the caller."""

    _bodies: list[dict[str, Any]] | None = None

    @classmethod
    def sample_bodies(cls) -> list[dict[str, Any]]:
        if cls._bodies is None:
            _, window = load_http().load_replay(7)
            cls._bodies = [{k: v for k, v in b.items() if k != "transaction_id"} for b in window.bodies]
        return cls._bodies

    @classmethod
    def make(cls, n: int, tag: str, t0_ms: int, step_ms: float, start: int = 0) -> list[dict[str, Any]]:
        """n payments in time order: ids `<tag>-<i>`, times t0 + i*step (ms), sample fields."""
        bodies = cls.sample_bodies()
        out = []
        for i in range(n):
            body = dict(bodies[(start + i) % len(bodies)])
            body["transaction_id"] = f"{tag}-{i}"
            body["timestamp"] = iso_ms(t0_ms + int(i * step_ms))
            out.append(body)
        return out


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms_of(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def luhn_pan(prefix: str, length: int, rng: random.Random) -> str:
    """A random card number with a valid Luhn check digit (test numbers, never real cards)."""
    digits = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return digits + str((10 - total % 10) % 10)


# --------------------------------------------------------------------------------------------------
# A second model, for the model swap


def train_small_model(directory: Path, seed: int = 3) -> Path:
    """A small real LightGBM model on the spec's features (a different model from models/default)."""
    import lightgbm as lgb

    from features.offline import OfflineFeatures
    from training.simulator import simulate

    history = simulate(days=10, cards=300, merchants=30, seed=seed)
    history = history.sort_values("timestamp", kind="stable").reset_index(drop=True)
    features = OfflineFeatures()
    x = features.transform(history)[features.feature_names]
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1, "seed": seed},
        lgb.Dataset(x, history["label"].to_numpy()),
        num_boost_round=20,
    )
    directory.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(directory / "model.txt"))
    (directory / "metadata.json").write_text(json.dumps({"note": "reliability swap model", "seed": seed}))
    return directory


def model_version(directory: Path, name: str) -> str:
    """The version the service reports for a model directory named `name` (engine/model.py's rule)."""
    import hashlib

    text = (directory / "model.txt").read_text()
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def rules_version(directory: Path) -> str:
    """The version the service reports for a rule set directory."""
    from engine.rules import load_ruleset, rule_names
    from features.spec import load_spec

    return load_ruleset(directory, rule_names(load_spec().feature_names)).version


# --------------------------------------------------------------------------------------------------
# The service as processes


class Service:
    """redis-server + `antifraud serve` subprocess, each with its own files under a temporary directory."""

    def __init__(
        self,
        name: str,
        *,
        workers: int = 2,
        tcp: bool = True,
        appendonly: bool = True,
        fsync_always: bool = False,
        env: dict[str, str] | None = None,
        pan_secret: str | None = "",
    ) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix=f"antifraud-rel-{name}-")
        self.dir = Path(self.tmp.name)
        self.workers = workers
        self.fsync_always = fsync_always
        self.redis = EmbeddedRedis(self.dir / "redis", appendonly=appendonly, port=free_port() if tcp else 0)
        self.tcp = tcp
        self.port = free_port()
        self.keys_file = self.dir / "keys.yaml"
        self.scorer_key = new_key(self.keys_file, "checkout", "scorer")
        self.admin_key = new_key(self.keys_file, "ops", "admin")
        self.model_dir = self.dir / "models" / "live"
        shutil.copytree(ROOT / "models" / "default", self.model_dir, ignore=shutil.ignore_patterns("report"))
        self.rules_dir = self.dir / "rules"
        shutil.copytree(ROOT / "rules", self.rules_dir)
        self.log = self.dir / "server.log"
        # a fresh random secret per run: never a literal, and the PAN scan can look for it too
        self.pan_secret = os.urandom(24).hex() if pan_secret == "" else pan_secret
        self.extra_env = env or {}
        self.server: subprocess.Popen[bytes] | None = None
        self.latency_offset = 0.0

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}" if self.tcp else self.redis.url

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, **kwargs)

    def start(self) -> Service:
        self.start_redis()
        env = {
            **os.environ,
            "ANTIFRAUD_BUDGET_MS": str(BUDGET_MS),
            "ANTIFRAUD_FAIL_POLICY": "review",
            "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "metrics"),
            **self.extra_env,
        }
        env.pop("ANTIFRAUD_PAN_SECRET", None)
        if self.pan_secret is not None:
            env["ANTIFRAUD_PAN_SECRET"] = self.pan_secret
        (self.dir / "metrics").mkdir(exist_ok=True)
        command = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--redis", self.redis_url, "--workers", str(self.workers)]
        command += ["--model", str(self.model_dir), "--rules", str(self.rules_dir)]
        command += ["--api-keys", str(self.keys_file)]
        with open(self.log, "ab") as log:
            self.server = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def start_redis(self) -> None:
        self.redis.start()
        with contextlib.closing(self.client()) as c:
            # Redis records its own stalls of 10 ms or more (forks for AOF rewrites, slow writes...)
            c.config_set("latency-monitor-threshold", 10)
            if self.fsync_always:
                c.config_set("appendfsync", "always")
            self.latency_offset = time.time() - time.perf_counter()

    def stop_redis(self) -> None:
        """Stop redis-server cleanly (SIGTERM; it flushes its AOF) and wait for it to exit."""
        self.redis.stop()

    def kill_redis(self) -> None:
        """kill -9 redis-server: no chance to flush anything."""
        process = self.redis.process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.redis.process = None

    def signal_redis(self, sig: int) -> None:
        assert self.redis.process is not None
        os.kill(self.redis.process.pid, sig)

    def worker_pids(self) -> list[int]:
        assert self.server is not None
        lh = load_http()
        if self.workers == 1:
            return [self.server.pid]
        return [p for p in lh.descendants(self.server.pid) if b"resource_tracker" not in lh.cmdline(p)]

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.server is not None
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"the service exited at start:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                status = httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code
                if status == 200 and len(self.worker_pids()) >= self.workers:
                    time.sleep(0.5)
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"the service did not become ready within {timeout:.0f} s:\n{self.log_text()[-3000:]}"
        )

    def http(self, key: str | None = None, timeout: float = 10.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=headers, timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)
        self.server = None

    def stop(self) -> None:
        self.stop_server()
        if self.redis.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.redis.process.pid, signal.SIGCONT)  # in case a test left it paused
        self.redis.stop()

    def cleanup(self) -> None:
        self.stop()
        self.tmp.cleanup()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --------------------------------------------------------------------------------------------------
# Reading what Redis holds


def stored_decisions(client: redis.Redis, txids: Sequence[str], namespace: str = "af") -> dict[str, Any]:
    """txid -> stored decision (or None), read in pipelined batches."""
    out: dict[str, Any] = {}
    for chunk in _chunks(list(txids), 2000):
        pipe = client.pipeline(transaction=False)
        for txid in chunk:
            pipe.get(f"{namespace}:{{tx:{txid}}}:d")
        for txid, raw in zip(chunk, pipe.execute(), strict=True):
            out[txid] = json.loads(raw) if raw else None
    return out


def stream_entries(client: redis.Redis, stream: str, field: str) -> list[dict[str, Any]]:
    from engine.decisions import DecisionStore

    store = DecisionStore(client)
    return list(store.iter_stream(stream, field))


def entity_members(client: redis.Redis, entity: str, keys: Sequence[str]) -> dict[str, set[str]]:
    """entity key -> the transaction ids its event log holds (the ZSET that also dedupes retries)."""
    from features.online import entity_prefix

    out: dict[str, set[str]] = {}
    for chunk in _chunks(list(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.zrange(f"{entity_prefix('af', entity, key)}:ev", 0, -1)
        for key, members in zip(chunk, pipe.execute(), strict=True):
            out[key] = {m.decode() for m in members}
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def redis_stalls(client: redis.Redis, offset: float) -> list[tuple[str, float, int]]:
    """Redis's own latency events since its last start: (event, time on time.perf_counter's clock, ms).

    `offset` is time.time() - time.perf_counter() when Redis started; Redis stamps events in whole
    seconds, so a time here is the start of the second it happened in."""
    out = []
    for latest in client.execute_command("LATENCY", "LATEST"):
        name = latest[0].decode() if isinstance(latest[0], bytes) else str(latest[0])
        for stamp, ms in client.execute_command("LATENCY", "HISTORY", name):
            out.append((name, float(stamp) - offset, int(ms)))
    return sorted(out, key=lambda e: e[1])


def metric_value(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
