"""What the reliability tests share: the service as real processes, payments, the load replayer, figures.

- `Service`: `antifraud.engine.stack.ServiceStack` (a real redis-server, TCP or unix socket, AOF on or off,
  and
  `antifraud serve --workers N` as a subprocess) with its own API keys, model directory and rules
  directory (copies, so a test may swap and edit them), its output captured in a log file.
- `Payments`: realistic payment bodies (entities, amounts, countries of the committed sample) with
  fresh transaction ids and timestamps chosen by the test, so that every window is predictable.
- `replay()`: the open-loop fixed-rate replayer of the load benchmark (`antifraud.engine.loadgen`, shared with
  benchmarks/load_http.py): request i is due at t0 + i/rate whatever happened before; latency counts
  from the due time.
- `FIGURES`: every figure a test measures, printed at once (`-s`) and summarised at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import httpx
import numpy as np
import redis

from antifraud.engine.decision_entry import FeatureLists, decision_of, record_of
from antifraud.engine.loadgen.client import run_async, run_cell
from antifraud.engine.loadgen.cpu import cpu_seconds, machine_busy_seconds, wait_quiet
from antifraud.engine.loadgen.replay import load_replay
from antifraud.engine.stack import ServiceStack, cmdline, descendants

ROOT = Path(__file__).resolve().parents[2]
BUDGET_MS = 50.0  # ANTIFRAUD_BUDGET_MS given to every service started here (the default)


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
# The load replayer (engine.loadgen, shared with benchmarks/load_http.py)


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
    cell, _, _ = run_async(run_cell(port, requests, rate, 0, connections, drain_s, {}))
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
        self.service = service
        # wait (at most 20 s) until other people's jobs leave the cores mostly free
        self.others_before = wait_quiet(self._ours(), 0.5, 20.0)
        self.wall = time.perf_counter()
        self.busy = machine_busy_seconds()
        self.mine = cpu_seconds(self._ours())

    def _ours(self) -> list[int]:
        return [os.getpid(), *self.service.pids()]

    def summary(self) -> str:
        wall = time.perf_counter() - self.wall
        busy = (machine_busy_seconds() - self.busy) / wall
        mine = (cpu_seconds(self._ours()) - self.mine) / wall
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
            _, window = load_replay(7)
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

    from antifraud.features.offline import OfflineFeatures
    from antifraud.training.simulator import simulate

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
    from antifraud.engine.rules import load_ruleset, rule_names
    from antifraud.features.spec import load_spec

    return load_ruleset(directory, rule_names(load_spec().feature_names)).version


# --------------------------------------------------------------------------------------------------
# The service as processes


class Service(ServiceStack):
    """redis-server + `antifraud serve` subprocess, each with its own files under a temporary directory.

    On top of `antifraud.engine.stack.ServiceStack`: a scorer key ("checkout") and an admin key ("ops"),
    copies
    of models/default and rules/ (a test may swap and edit them), the time budget and fail policy
    tests rely on, a fresh PAN secret (`pan_secret=None`: none at all), Redis recording its own
    stalls, and everything the server prints in `server.log`.
    """

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
        redis_url: str | None = None,
    ) -> None:
        # a fresh random secret per run: never a literal, and the PAN scan can look for it too
        self.pan_secret = os.urandom(24).hex() if pan_secret == "" else pan_secret
        # Redis records its own stalls of 10 ms or more (forks for AOF rewrites, slow writes...)
        redis_config: dict[str, str | int] = {"latency-monitor-threshold": 10}
        if fsync_always:
            redis_config["appendfsync"] = "always"
        server_env: dict[str, str | None] = {
            "ANTIFRAUD_BUDGET_MS": str(BUDGET_MS),
            "ANTIFRAUD_FAIL_POLICY": "review",
            **(env or {}),
            "ANTIFRAUD_PAN_SECRET": self.pan_secret,  # None: removed from the server's environment
        }
        super().__init__(
            workers=workers,
            tcp_redis=tcp,
            appendonly=appendonly,
            redis_url=redis_url,  # a Redis (Cluster) of the test's own instead of the embedded one
            redis_config=redis_config,
            keys={"checkout": "scorer", "ops": "admin"},
            env=server_env,
            shared_metrics=True,  # /metrics in multi-process mode even with one worker
            output="log",
            ready_timeout=90.0,
            prefix=f"antifraud-rel-{name}-",
        )
        self.model_dir = self.dir / "models" / "live"
        shutil.copytree(ROOT / "models" / "default", self.model_dir, ignore=shutil.ignore_patterns("report"))
        self.rules_dir = self.dir / "rules"
        shutil.copytree(ROOT / "rules", self.rules_dir)
        self.latency_offset = 0.0

    @property
    def scorer_key(self) -> str:
        return self.keys["checkout"]

    @property
    def admin_key(self) -> str:
        return self.keys["ops"]

    def client(self, **kwargs: Any) -> redis.Redis:
        return self.redis_client(**kwargs)

    def start_redis(self) -> None:
        super().start_redis()
        # Redis stamps its latency events with time.time(): this maps them onto time.perf_counter()
        self.latency_offset = time.time() - time.perf_counter()

    def kill_redis(self) -> None:
        """kill -9 redis-server: no chance to flush anything."""
        assert self.redis is not None and self.redis.process is not None
        process = self.redis.process
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        self.redis.process = None

    def signal_redis(self, sig: int) -> None:
        assert self.redis is not None and self.redis.process is not None
        os.kill(self.redis.process.pid, sig)

    def http(self, key: str | None = None, timeout: float = 10.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers=headers, timeout=timeout)

    @property
    def store_url(self) -> str:
        """The durable store the service's sink writes (ANTIFRAUD_STORE, else the stack's Parquet dir)."""
        return self.env.get("ANTIFRAUD_STORE") or str(self.dir / "data" / "decisions")

    def sink_pids(self) -> list[int]:
        """The decision sink process(es) `serve` started: its spawned children that do not listen on
        the service's port (the workers do; the sink only talks to Redis and the store)."""
        assert self.server is not None, "the service is not running"
        listening = _listening_inodes(self.port)
        children = [p for p in descendants(self.server.pid) if b"spawn_main" in cmdline(p)]
        return [p for p in children if not (_socket_inodes(p) & listening)]

    def __enter__(self) -> Service:
        super().__enter__()
        return self


def _listening_inodes(port: int) -> set[str]:
    with open("/proc/net/tcp") as f:
        next(f)
        return {c[9] for line in f if (c := line.split())[1].endswith(f":{port:04X}") and c[3] == "0A"}


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(target[8:-1])
    return out


# --------------------------------------------------------------------------------------------------
# Reading what was logged: the buffer streams in Redis and the durable store the sink fills


@dataclass
class LogView:
    """Every decision and feedback event logged, wherever it is now: still in its buffer stream, or
    moved by the sink to the durable store (it trims an entry only once the store holds it).

    A record is identified by the stream entry it was logged as: an entry written to the store and not
    yet trimmed is in both places and counts once; a transaction logged twice would show two entries.
    `store_*_rows` count the store's own rows, duplicates included (a batch written twice)."""

    decisions: dict[str, dict[str, dict[str, Any]]]  # txid -> stream id -> decision
    feedback: dict[str, dict[str, Any]]  # stream id -> event
    store_decision_rows: Counter[str]  # txid -> rows in the store
    store_feedback_rows: Counter[str]  # stream id -> rows in the store
    buffered_decisions: int
    buffered_feedback: int

    def decision(self, txid: str) -> dict[str, Any] | None:
        entries = self.decisions.get(txid)
        return next(iter(entries.values())) if entries else None

    def times_logged(self, txid: str) -> int:
        return len(self.decisions.get(txid, {}))


def read_log(client: redis.Redis, store_url: str, namespace: str = "af") -> LogView:
    """What the buffer streams and the store hold. The buffer is read first: an entry the sink trims
    after that read was in the store before it was trimmed, so the later store read finds it."""
    decisions: dict[str, dict[str, dict[str, Any]]] = {}
    buffered = 0
    names = FeatureLists(client, namespace).names  # a buffered decision's features by name, as read
    entries = _stream(client, f"{namespace}:decisions", b"d", lambda raw: decision_of(raw, names))
    for entry_id, record in entries:
        decisions.setdefault(record["transaction_id"], {})[entry_id] = record
        buffered += 1
    feedback = dict(_stream(client, f"{namespace}:feedback", b"e", json.loads))
    buffered_feedback = len(feedback)
    decision_rows: Counter[str] = Counter()
    feedback_rows: Counter[str] = Counter()
    for entry_id, record in store_rows(store_url, "decisions"):
        decisions.setdefault(record["transaction_id"], {}).setdefault(entry_id, record)
        decision_rows[record["transaction_id"]] += 1
    for entry_id, record in store_rows(store_url, "feedback"):
        feedback.setdefault(entry_id, record)
        feedback_rows[entry_id] += 1
    return LogView(decisions, feedback, decision_rows, feedback_rows, buffered, buffered_feedback)


def _stream(
    client: redis.Redis, stream: str, field: bytes, read: Callable[[bytes], Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(entry id, record) of the entries of a stream holding `field`, read 10,000 at a time (XRANGE)."""
    start = "-"
    while True:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream, min=start, count=10_000))
        for entry_id, fields in entries:
            if field in fields:
                yield entry_id.decode(), read(fields[field])
        if len(entries) < 10_000:
            return
        start = "(" + entries[-1][0].decode()


def store_rows(store_url: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """Every row of a kind ("decisions", "feedback") in the store, duplicates included: (stream id,
    record as logged). Read with SQL of its own rather than the store's reads, which hide copies."""
    if store_url.startswith(("postgresql://", "postgres://")):
        import psycopg
        from psycopg import sql

        from antifraud.engine.store.postgres import split_url

        conninfo, schema = split_url(store_url)
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            exists = conn.execute("select to_regclass(%s)", [f"{schema}.{kind}"]).fetchone()
            if exists is None or exists[0] is None:
                return []
            query = sql.SQL("select stream_id, record::text from {}.{}").format(
                sql.Identifier(schema), sql.Identifier(kind)
            )
            return [(str(i), json.loads(str(r))) for i, r in conn.execute(query).fetchall()]
    import duckdb

    # no compaction runs in these tests: every file holds rows of its own
    files = sorted(str(p) for p in Path(store_url.removeprefix("parquet://")).glob(f"{kind}/day=*/*.parquet"))
    if not files:
        return []
    with duckdb.connect(":memory:") as db:
        rows = db.execute(
            "select stream_id, record from read_parquet(?, union_by_name=true)", [files]
        ).fetchall()
    return [(str(i), json.loads(str(r))) for i, r in rows]


def stored_decisions(
    client: redis.Redis, txids: Sequence[str], store_url: str, namespace: str = "af"
) -> dict[str, Any]:
    """txid -> its whole decision as logged (buffer, else store), or None when it was never logged."""
    view = read_log(client, store_url, namespace)
    return {txid: view.decision(txid) for txid in txids}


def idempotency_records(client: redis.Redis, txids: Sequence[str], namespace: str = "af") -> dict[str, Any]:
    """txid -> its idempotency record (what a retry is answered from), or None; pipelined."""
    out: dict[str, Any] = {}
    for chunk in _chunks(list(txids), 2000):
        pipe = client.pipeline(transaction=False)
        for txid in chunk:
            pipe.get(f"{namespace}:{{tx:{txid}}}:d")
        for txid, raw in zip(chunk, pipe.execute(), strict=True):
            out[txid] = record_of(raw, txid) if raw else None
    return out


def buffer_lag(client: redis.Redis, namespace: str = "af") -> dict[str, int]:
    """Entries of each buffer stream the sink has not written yet (never delivered, or pending);
    every entry when the sink's group does not exist (no sink ever ran)."""
    out = {}
    for stream in (f"{namespace}:decisions", f"{namespace}:feedback"):
        if not client.exists(stream):
            out[stream] = 0
            continue
        info = cast(list[dict[str, Any]], client.xinfo_groups(stream))
        groups = [g for g in info if g["name"] in (b"sink", "sink")]
        if not groups:
            out[stream] = int(cast(int, client.xlen(stream)))
            continue
        lag = groups[0].get("lag")
        if lag is None:  # Redis cannot tell: count the undelivered entries
            start = "(" + _text(groups[0]["last-delivered-id"])
            lag = len(cast(list[Any], client.xrange(stream, min=start)))
        out[stream] = int(lag) + int(groups[0]["pending"])
    return out


def wait_drained(client: redis.Redis, timeout_s: float, namespace: str = "af") -> float:
    """Wait until the sink has written both buffers; returns the seconds it took. Raises when it
    has not within `timeout_s` (the sink is down, or the store)."""
    started = time.perf_counter()
    while any(buffer_lag(client, namespace).values()):
        if time.perf_counter() - started > timeout_s:
            lag = buffer_lag(client, namespace)
            raise AssertionError(f"the sink did not drain the buffers within {timeout_s:.0f} s: {lag}")
        time.sleep(0.1)
    return time.perf_counter() - started


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_RING = "local s = redis.call('GET', KEYS[1]); if not s then return {} end; return cmsgpack.unpack(s)[1]"


def entity_members(
    client: redis.Redis, entity: str, keys: Sequence[str], txids: Iterable[str]
) -> dict[str, set[str]]:
    """entity key -> which of `txids` its dedupe ring holds (the fingerprints of its last 64
    payments within the dedupe horizon: docs/feature-state.md, section 2.4). Raises when a ring
    holds a transaction twice (a retry recorded again)."""
    from antifraud.features.fingerprint import TX_BITS, fingerprint
    from antifraud.features.online import entity_prefix

    by_fp = {fingerprint(t, TX_BITS): t for t in txids}
    out: dict[str, set[str]] = {}
    for chunk in _chunks(list(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.eval(_RING, 1, f"{entity_prefix('af', entity, key)}:s")
        for key, ring in zip(chunk, pipe.execute(), strict=True):
            fps = [int(x) for x in ring[::2]]
            assert len(fps) == len(set(fps)), f"{entity} {key}: a transaction recorded twice"
            out[key] = {by_fp[fp] for fp in fps if fp in by_fp}
    return out


def ring_agrees(held: set[str], sent: Sequence[str], cap: int = 64) -> bool:
    """Whether a dedupe ring holding `held` (`entity_members`) agrees with the entity's payments sent
    once, `sent` in time order: it holds them all, or, past its cap, at least `cap` of them and at
    most a quarter more (score.lua trims a ring once it holds cap + cap / 4, not at every payment;
    which ones are the last depends on the order in which concurrent ones were recorded)."""
    if len(sent) <= cap:
        return held == set(sent)
    return held <= set(sent) and cap <= len(held) <= cap + max(1, cap // 4)


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


def slow_commands(client: redis.Redis, count: int = 5) -> list[tuple[str, int]]:
    """Redis's slowest commands still in its SLOWLOG (10 ms and over by default), slowest first:
    (the command and its first argument, µs)."""
    entries = client.slowlog_get(128)
    slowest = sorted(entries, key=lambda e: -int(e["duration"]))[:count]
    return [(" ".join(_text(a) for a in e["command"].split()[:2]), int(e["duration"])) for e in slowest]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def metric_value(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
