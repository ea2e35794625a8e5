"""Hot entities: does the cost of a feature call grow with the traffic of one of its entities?

Issue 15's probe, against a real redis-server with the real `OnlineFeatures` (no HTTP): payments
from distinct cards that share one entity value (one IP by default, as behind a carrier's NAT),
`--gap` seconds apart in payment time. At each checkpoint (1k, 2k, 4k, 8k, 10k payments of the hot
entity; 100k with `--long`) it times `--window` more such payments one call at a time, then as many
payments of *typical* entities (cards of their own, each with its own IP, device, email and
customer, paying now and then between the hot payments), and prints for both:

- the features call (`OnlineFeatures.score`: the EVALSHA round trip and derive), p50 / p99 in us;
- Redis's own time per scoring EVALSHA (`INFO commandstats`: cmdstat_evalsha usec / calls, reset
  with CONFIG RESETSTAT before each window): the work inside Redis, which is single-threaded, so
  one hot entity's cost is paid by every payment queued behind it;
- `MEMORY USAGE` of the hot entity's keys (each part: `s`, `ev`, ...) and of a typical one's.

`--entity card_merchant` sends one card at one merchant (so the card is hot too; once card x merchant
is kept within the card, the memory shown is the card's keys); `merchant` is
the control whose windows are all bucketed (its idempotency record still grows). The aim (issue
15): the hot entity's cost per call within 2x of a typical one's, and within 2x between 10k and
100k events, with bounded memory.
Today the cost per call grows with the entity's events, so `--long` takes about an hour (the sum
of a growing cost); `--budget` stops at the first checkpoint past that many seconds.

`--primitives` prints instead what the building blocks of a feature script cost inside Redis's Lua
(per operation: the server's clock read around a loop in one EVAL, less the empty loop): decoding and
encoding MessagePack events, reading a fixed-width record with `struct`, a plain `string.find` over
a packed array, `redis.sha1hex`, `bit` operations: the arithmetic of docs/feature-state.md.

Run: .venv/bin/python benchmarks/bench_hot_entity.py [--entity ip] [--gap 0.4] [--long]
     .venv/bin/python benchmarks/bench_hot_entity.py --primitives
A figure, not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import redis

from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.features.online import OnlineFeatures, entity_prefix

CHECKPOINTS = (1_000, 2_000, 4_000, 8_000, 10_000)
LONG_CHECKPOINT = 100_000
# the fields each entity is keyed by (features/spec.yaml `entities`), for the probe's hot value
HOT_FIELDS = {
    "ip": ("ip",),
    "device": ("device_id",),
    "email": ("email",),
    "merchant": ("merchant_id",),
    "card_merchant": ("card_id", "merchant_id"),
}
MERCHANTS = 50  # merchants the payments are spread over (unless the merchant is the hot entity)
BASE_MS = 1_772_323_200_000  # 2026-03-01T00:00:00Z


@dataclass
class Window:
    """One measured window: the call times (s) and Redis's usec per scoring EVALSHA."""

    seconds: list[float]
    redis_us: float

    def line(self) -> str:
        us = np.array(self.seconds) * 1e6
        return (
            f"p50 {np.percentile(us, 50):8.1f}  p99 {np.percentile(us, 99):8.1f}  "
            f"redis {self.redis_us:8.1f} us/call"
        )


class Payments:
    """The probe's payment stream: hot payments (distinct cards, one shared entity value) with a
    typical payment after every `typical_every` of them, in non-decreasing payment time."""

    def __init__(self, entity: str, gap_s: float, typical_cards: int, typical_every: int) -> None:
        self.hot_fields = HOT_FIELDS[entity]
        self.gap_ms = round(gap_s * 1000)
        self.typical_cards = typical_cards
        self.typical_every = typical_every
        self.clock = BASE_MS
        self.hot_sent = 0
        self.typical_sent = 0
        self.rng = np.random.default_rng(15)

    def _payment(self, kind: str, n: int, card: str, own: str) -> dict[str, Any]:
        return {
            "transaction_id": f"{kind}-{n}",
            "timestamp": self.clock,
            "card_id": card,
            "merchant_id": f"mer_{n % MERCHANTS:03d}",
            "amount": float(self.rng.integers(500, 20_000)) / 100,
            "currency": "EUR",
            "customer_id": f"cust_{own}",
            "email": f"{own}@example.com",
            "ip": own,
            "device_id": f"dev_{own}",
            "card_country": "FR",
            "ip_country": "FR",
            "billing_country": "FR",
            "shipping_country": None,
            "mcc": "5411",
            "channel": "ecom",
            "card_on_file": False,
            "authenticated": True,
            "terminal_id": None,
        }

    def hot(self) -> dict[str, Any]:
        """The next payment of the hot entity (a card never seen before, unless the card is hot)."""
        n = self.hot_sent
        self.hot_sent += 1
        self.clock += self.gap_ms
        p = self._payment("hot", n, f"card_hot_{n}", f"hot{n}")
        for name in self.hot_fields:
            p[name] = {"card_id": "card_hot", "merchant_id": "mer_hot"}.get(name, f"hot-{name}")
        return p

    def typical(self) -> dict[str, Any]:
        """The next payment of a typical card: its own IP, device, email and customer."""
        n = self.typical_sent
        self.typical_sent += 1
        self.clock += 1
        card = n % self.typical_cards
        return self._payment("typical", n, f"card_typ_{card}", f"typ{card}")

    def fill(self, until_hot: int) -> Iterator[dict[str, Any]]:
        """Hot payments (and the typical ones between them) until `until_hot` hot ones were sent."""
        while self.hot_sent < until_hot:
            yield self.hot()
            if self.hot_sent % self.typical_every == 0:
                yield self.typical()

    def hot_key(self) -> str:
        """The hot entity's key, as `FeatureSpec.entity_key` builds it."""
        return "|".join(
            {"card_id": "card_hot", "merchant_id": "mer_hot"}.get(name, f"hot-{name}")
            for name in self.hot_fields
        )


def _frame(payments: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(payments)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="ms", utc=True)
    return frame


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    """One INFO section (the synchronous client's answer: a dict)."""
    return cast(dict[str, Any], client.info(section))


def _evalsha_us(client: redis.Redis) -> float:
    """Redis's time per EVALSHA since the last CONFIG RESETSTAT (INFO commandstats, usec / calls)."""
    stats = _info(client, "commandstats").get("cmdstat_evalsha")
    return float(stats["usec"]) / float(stats["calls"]) if stats else float("nan")


def _measure(client: redis.Redis, online: OnlineFeatures, payments: Iterator[dict[str, Any]]) -> Window:
    client.config_resetstat()
    seconds = []
    for payment in payments:
        t0 = time.perf_counter()
        online.score(payment)
        seconds.append(time.perf_counter() - t0)
    return Window(seconds, _evalsha_us(client))


def _memory(client: redis.Redis, prefix: str) -> dict[str, int]:
    """MEMORY USAGE (exact: SAMPLES 0) of every key of one entity, by part (`s`, `ev`, `p`, ...)."""
    out: dict[str, int] = {}
    for key in client.scan_iter(match=prefix + ":*", count=1000):
        part = key.decode().split("}:", 1)[1]
        out[part] = int(cast(int | None, client.memory_usage(key, samples=0)) or 0)
    return out


def _memory_line(parts: dict[str, int]) -> str:
    detail = ", ".join(f"{part} {size:,}" for part, size in sorted(parts.items()))
    return f"{sum(parts.values()):>10,} B  ({detail or 'no keys'})"


# Lua building blocks: (name, what one operation is, setup, the operation; `i` is the loop counter).
# `events` is 100 card-like events (time, amount, merchant, country, device: the stride-5 layout of
# score.lua's exact windows), `pairs` 100 (time, amount) events, `packed` 100 fixed-width 10-byte
# records (uint32 time offset, uint48 amount), `ring` 128 8-byte fingerprints.
_SETUP = """
local events, pairs2 = {5}, {2}
for k = 1, 100 do
  local n = #events
  events[n + 1], events[n + 2] = 1772323200000 + k * 60000, 12345 + k
  events[n + 3], events[n + 4], events[n + 5] = 'mer_81f5cf8a85', 'FR', 'dev_c987a451315d1658'
  pairs2[#pairs2 + 1], pairs2[#pairs2 + 1] = 1772323200000 + k * 60000, 12345 + k
end
local blob, blob2 = cmsgpack.pack(events), cmsgpack.pack(pairs2)
local parts = {}
for k = 1, 100 do parts[k] = struct.pack('>I4I6', k * 60000, 12345 + k) end
local packed = table.concat(parts)
local fps = {}
for k = 1, 128 do fps[k] = string.sub(redis.sha1hex('tx' .. k), 1, 8) end
local ring = table.concat(fps)
local sink = 0
"""
PRIMITIVES = (
    ("empty loop", "iteration", "sink = sink + i"),
    ("cmsgpack.unpack, card events", "event", "local v = cmsgpack.unpack(blob); sink = sink + #v"),
    ("cmsgpack.pack, card events", "event", "sink = sink + #cmsgpack.pack(events)"),
    ("cmsgpack.unpack, (time, amount)", "event", "local v = cmsgpack.unpack(blob2); sink = sink + #v"),
    ("cmsgpack.pack, (time, amount)", "event", "sink = sink + #cmsgpack.pack(pairs2)"),
    (
        "loop over decoded events (E op's count/sum/max)",
        "event",
        "local c, m = 0, -1; for j = 2, #events, 5 do local x = events[j + 1];"
        " if events[j] >= 0 then c = c + x; if x > m then m = x end end end; sink = sink + c",
    ),
    (
        "struct.unpack of packed records, in a loop",
        "event",
        "local c = 0; for j = 1, 991, 10 do local tj, x = struct.unpack('>I4I6', packed, j);"
        " c = c + x end; sink = sink + c",
    ),
    (
        "string.find, 8-byte needle, 1 KB miss",
        "call",
        "sink = sink + (string.find(ring, 'zzzzzzzz', 1, true) or 0)",
    ),
    ("ring update: sub + concat of 1 KB", "call", "ring = string.sub(ring, 9) .. string.sub(ring, 1, 8)"),
    ("redis.sha1hex of a 12-byte id", "call", "sink = sink + #redis.sha1hex('tx_00000' .. i)"),
    ("bit.band(bit.rshift(x, 6), 63)", "call", "sink = sink + bit.band(bit.rshift(i * 2654435761, 6), 63)"),
    ("redis.call GET of a 600-byte string", "call", "sink = sink + #redis.call('GET', KEYS[1])"),
    ("redis.call SET .. PX of a 600-byte string", "call", "redis.call('SET', KEYS[1], blob, 'PX', 86400000)"),
    (
        "ZADD NX + ZREMRANGEBYRANK (ZSET of 30 ids)",
        "call",
        "redis.call('ZADD', KEYS[2], 'NX', i, 'tx' .. i); redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -31)",
    ),
    ("PFCOUNT merging 7 dense HyperLogLogs", "call", "sink = sink + redis.call('PFCOUNT', unpack(KEYS))"),
    ("PFCOUNT merging 24 dense HyperLogLogs", "call", "sink = sink + redis.call('PFCOUNT', unpack(KEYS))"),
)
HLL_KEYS = {"PFCOUNT merging 7 dense HyperLogLogs": 7, "PFCOUNT merging 24 dense HyperLogLogs": 24}
# primitives that touch keys of their own (not HyperLogLogs): the state string and an id ZSET
PLAIN_KEYS = {
    "redis.call GET of a 600-byte string": ["s:{bench}", "ev:{bench}"],
    "redis.call SET .. PX of a 600-byte string": ["s:{bench}", "ev:{bench}"],
    "ZADD NX + ZREMRANGEBYRANK (ZSET of 30 ids)": ["s:{bench}", "ev:{bench}"],
}
_PER = {"iteration": 1, "event": 100, "call": 1}


def primitives(client: redis.Redis, reps: int) -> None:
    """Print the cost inside Redis of each Lua building block (see PRIMITIVES): each script reads
    the server's clock (TIME) after its setup and after `reps` operations; the least of five runs
    (other processes only ever add time), less the empty loop."""
    costs: dict[str, float] = {}
    # per-bucket sketches as Redis's own HyperLogLogs: 5,000 values each (dense encoding, 12 KB)
    hlls = [f"hll:{{bench}}:{k}" for k in range(24)]
    for k, key in enumerate(hlls):
        client.pfadd(key, *(f"card_{k}_{j}" for j in range(5000)))
    client.set("s:{bench}", b"x" * 600)
    clock = "local c = redis.call('TIME'); return tonumber(c[1]) * 1e6 + tonumber(c[2])"
    for name, unit, op in PRIMITIVES:
        keys = hlls[: HLL_KEYS.get(name, 0)]
        n = max(reps // 100, 10) if keys else reps  # a PFCOUNT of dense HLLs takes ~1 ms
        keys = keys or PLAIN_KEYS.get(name, [])
        script = (
            f"local function now() {clock} end\n{_SETUP}\nlocal t0 = now()\n"
            f"for i = 1, {n} do {op} end\nreturn {{tostring(now() - t0), sink}}"
        )
        best = min(float(cast(list[Any], client.eval(script, len(keys), *keys))[0]) for _ in range(5))
        costs[name] = best / n
        base = costs["empty loop"] if name != "empty loop" else 0.0
        print(f"{name:50s} {(costs[name] - base) * 1000 / _PER[unit]:9.1f} ns per {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", choices=sorted(HOT_FIELDS), default="ip")
    parser.add_argument("--gap", type=float, default=0.4, help="seconds of payment time between hot payments")
    parser.add_argument("--window", type=int, default=200, help="calls timed at each checkpoint, per kind")
    parser.add_argument("--long", action="store_true", help="go on to 100,000 payments of the hot entity")
    parser.add_argument("--max-events", type=int, default=0, help="stop at this many hot payments instead")
    parser.add_argument("--budget", type=float, default=1800.0, help="stop at a checkpoint past this (s)")
    parser.add_argument("--typical-every", type=int, default=10, help="a typical payment per N hot ones")
    parser.add_argument("--primitives", action="store_true", help="the cost of Lua building blocks")
    parser.add_argument("--typical-cards", type=int, default=100, help="typical cards (own IP, device, ...)")
    args = parser.parse_args()
    if args.primitives:
        with EmbeddedRedis() as server:
            primitives(redis.Redis.from_url(server.url), reps=5000)
        return
    checkpoints = [*CHECKPOINTS, LONG_CHECKPOINT] if args.long else list(CHECKPOINTS)
    if args.max_events:
        checkpoints = sorted({*(c for c in checkpoints if c < args.max_events), args.max_events})
    stream = Payments(args.entity, args.gap, args.typical_cards, args.typical_every)
    started = time.monotonic()
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        online = OnlineFeatures(client)
        # an entity kept within another (card x merchant in the card: docs/feature-state.md, 2.5)
        # lives in that entity's keys, keyed by its leading fields
        outer = online.spec.within.get(args.entity, args.entity)
        hot_key = "|".join(stream.hot_key().split("|")[: len(online.spec.entities[outer])])
        hot_prefix = entity_prefix(online.namespace, outer, hot_key)
        typical_entity = "card" if args.entity == "card_merchant" else args.entity
        typical_key = {"ip": "typ0", "device": "dev_typ0", "email": "typ0@example.com"}.get(
            typical_entity, "card_typ_0" if typical_entity == "card" else "mer_000"
        )
        typical_prefix = entity_prefix(online.namespace, typical_entity, typical_key)
        print(
            f"hot entity: {args.entity} ({hot_prefix}); payments {args.gap} s apart in payment time, "
            f"a typical payment every {args.typical_every}; {args.window} calls timed per window"
        )
        print(
            f"{'hot events':>10} {'kind':8} {'features call us (p50 / p99) and Redis us per EVALSHA':56} "
            "memory of the entity's keys"
        )
        for checkpoint in checkpoints:
            online.backfill(_frame(list(stream.fill(checkpoint))), batch=500)
            hot = _measure(client, online, (stream.hot() for _ in range(args.window)))
            typical = _measure(client, online, (stream.typical() for _ in range(args.window)))
            print(f"{checkpoint:>10,} {'hot':8} {hot.line():56} {_memory_line(_memory(client, hot_prefix))}")
            print(
                f"{'':>10} {'typical':8} {typical.line():56} "
                f"{_memory_line(_memory(client, typical_prefix))} ({typical_entity} {typical_key})"
            )
            ratio = np.median(hot.seconds) / np.median(typical.seconds)
            redis_ratio = hot.redis_us / typical.redis_us
            print(
                f"{'':>10} {'':8} hot / typical: p50 {ratio:.2f}x, Redis {redis_ratio:.2f}x;"
                f" {time.monotonic() - started:.0f} s so far",
                flush=True,
            )
            if time.monotonic() - started > args.budget and checkpoint != checkpoints[-1]:
                print(f"stopped: past --budget {args.budget:.0f} s (the cost per call grows with the events)")
                break
        memory = _info(client, "memory")
        used = int(memory["used_memory"]) - int(memory["used_memory_startup"])
        cards = stream.hot_sent + min(stream.typical_sent, stream.typical_cards)
        print(f"Redis used_memory {used / 1e6:.1f} MB over {cards:,} cards ({used / cards:,.0f} B per card)")


if __name__ == "__main__":
    main()
