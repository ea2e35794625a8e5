"""Online executor: compute a payment's features from Redis and record it, in one round trip.

Each entity of the payment (card, device, merchant, ...) is one block of `score.lua`; its keys share
a hash tag so a block touches a single Redis Cluster slot. On a single Redis every block goes in one
EVALSHA; on a cluster the blocks are grouped by slot and the calls pipelined.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from antifraud.engine.redis_script import DirectScript
from antifraud.engine.redis_url import following_moves
from antifraud.engine.vocabulary import FEATURE_EVENT, FeatureEvent
from antifraud.features.derive import Deriver
from antifraud.features.fingerprint import TX_BITS, VALUE_BITS, fingerprint
from antifraud.features.plan import EntityPlan, Plan, compile_plan, feedback_retention_ms, raw_name
from antifraud.features.spec import FeatureSpec, load_spec

LUA = Path(__file__).with_name("score.lua").read_text()
# by any name: OnlineFeatures.feedback takes the event as text (from the API or a history's stream)
_FEATURE_EVENT: dict[str, FeatureEvent] = {event: kind for event, kind in FEATURE_EVENT.items()}


def to_ms(timestamp: datetime | int) -> int:
    """Event time in integer milliseconds since the epoch."""
    if isinstance(timestamp, int):
        return timestamp
    return round(timestamp.timestamp() * 1000)


def to_milli(amount: float) -> int:
    """Amounts are summed as integers in thousandths of the currency unit, so sums are exact."""
    return round(amount * 1000)


def entity_prefix(namespace: str, entity: str, key: str) -> str:
    """The hash-tagged key prefix of one entity; a digest keeps raw emails and IPs out of key names."""
    digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    return f"{namespace}:{{{entity}:{digest}}}"


@dataclass(frozen=True)
class OnlineResult:
    """Features of one payment as the engine saw it before recording it."""

    values: np.ndarray  # in spec.feature_names order, NaN where missing
    # some entity had already recorded this transaction id (a retry): no entity counted it again
    # (with record=False: it would have been a duplicate)
    duplicate: bool


def _layout(p: EntityPlan, spread: int, *, before_fingerprints: bool = False, flat: bool = False) -> int:
    """A number naming what an entity's exact-window state was written for (windows, tails, cap,
    spread window, the windows of the entities folded into it): score.lua starts a state written for
    another layout anew. With `before_fingerprints`, the number the layout before fingerprints gave
    the same windows (it also named the distinct fields, whose values it kept there), with `flat`
    the number of the same windows without the folded ones: score.lua takes such a state over."""
    windows = ([(w.ms, w.tail_ms) for w in p.exact], spread, p.head)
    if before_fingerprints:
        shape = repr((*windows, list(p.distinct)))
    elif p.folded and not flat:
        shape = repr(("fingerprints", *windows, "within", [[w.ms for w in f.exact] for f in p.folded]))
    else:
        shape = repr(("fingerprints", *windows))
    return _layout_number(shape)


def _layout_number(shape: str) -> int:
    """A negative number naming a state layout (`shape`), as score.lua compares it."""
    return -1 - int.from_bytes(hashlib.blake2b(shape.encode(), digest_size=4).digest(), "big") // 2


class _Block:
    """The static tokens of one entity's block; only field fingerprints vary per payment."""

    def __init__(self, p: EntityPlan, spec: FeatureSpec, raw_index: dict[str, int]) -> None:
        self.plan = p
        self.start = raw_index[raw_name(p.entity, "present")]
        self.value_slots: list[tuple[int, str]] = []
        feedback = [(event, windows) for event, windows in p.feedback.items() if windows]
        # the dedupe ring: the last `limits.dedupe` transactions within the dedupe horizon
        tokens: list[str | None] = ["S", str(spec.dedupe_horizon_ms), str(spec.dedupe_limit)]
        tokens += [str(len(p.buckets)), str(len(feedback))]
        if p.exact:
            # the exact windows: a head of the entity's last `p.head` payments and, once it
            # overflows, each window's tail buckets (score.lua, op E)
            spread = p.exact.index(p.spread_window) + 1 if p.spread_window is not None else 0
            tails = [w.tail_ms or 0 for w in p.exact]
            old = _layout(p, spread, before_fingerprints=True)
            tokens += ["E", str(_layout(p, spread)), str(old), str(len(p.exact))]
            tokens += [str(w.ms) for w in p.exact] + [str(g) for g in tails]
            tokens += [str(spread), str(p.head)]
            # the windows of an entity kept within this one (card x merchant in the card), read from
            # the head, whose payments carry the fingerprint of that entity's extra key field
            folded = [w for f in p.folded for w in f.exact]
            flat = _layout(p, spread, flat=True) if folded else 0
            tokens += [str(flat), str(len(folded))] + [str(w.ms) for w in folded]
            if folded:
                self.value_slots.append((len(tokens), spec.entities[p.folded[0].entity][-1]))
            tokens.append("")
        for g, group in p.buckets.items():
            bucketed = [str(g), str(group.max_buckets), str(len(group.windows))]
            bucketed += [str(w.ms // g) for w in group.windows]
            bucketed.append(str(len(group.fraud_windows)))
            for w in group.fraud_windows:
                bucketed += [str(w.lag_ms // g), str(w.ms // g)]
            # a number naming these windows: the closed sums kept for others are not read (op B)
            tokens += ["B", *bucketed, str(_layout_number(repr(("buckets", bucketed))))]
        # distinct counts and novelty: a capped set of the `limits.distinct` values seen most
        # recently, by fingerprint (op D)
        for d in p.distinct.values():
            tokens += ["D", d.field]
            self.value_slots.append((len(tokens), d.field))
            tokens += [None, str(d.retention_ms), str(d.lookback_ms), str(spec.distinct_limit)]
            tokens += [str(len(d.windows))] + [str(w.ms) for w in d.windows]
        for event, windows in feedback:
            tokens += ["F", event, str(len(windows))] + [str(w.ms) for w in windows]
        if p.profile_ttl_ms is not None:
            # a late payment moves the first payment time earlier within the dedupe horizon only
            tokens += ["P", str(p.profile_ttl_ms), str(spec.dedupe_horizon_ms)]
        self.tokens = tokens
        # where each reply value goes among the raw aggregates: the entity's own (all but `present`),
        # with its folded entities' windows after its exact windows and spread (op E's order)
        own = list(range(self.start + 1, self.start + len(p.raw_names())))
        cut = 3 * len(p.exact) + (p.spread_window is not None)
        inner = [raw_index[name] for f in p.folded for name in f.raw_names()[1:]]
        self.targets = np.array(own[:cut] + inner + own[cut:], dtype=np.intp)
        self.n_values = len(self.targets)
        # each folded entity: its `present` and its values' positions (NaN without its key)
        self.folded = [
            (f.entity, raw_index[raw_name(f.entity, "present")], [raw_index[n] for n in f.raw_names()[1:]])
            for f in p.folded
        ]

    def args(self, payment: Mapping[str, Any]) -> list[str]:
        tokens = list(self.tokens)
        for slot, name in self.value_slots:
            value = payment.get(name)
            text = "" if value is None else str(value)
            tokens[slot] = str(fingerprint(text, VALUE_BITS)) if text else ""
        return [str(len(tokens)), *tokens]  # type: ignore[list-item]


class OnlineFeatures:
    """Reads and records payment features in Redis, following a feature spec."""

    def __init__(
        self, client: redis.Redis | RedisCluster, spec: FeatureSpec | None = None, namespace: str = "af"
    ) -> None:
        self.client = client
        self.plan: Plan = compile_plan(spec or load_spec())
        self.spec = self.plan.spec
        self.deriver = Deriver(self.plan)
        self.namespace = namespace
        self._script = client.register_script(LUA)  # type: ignore[misc]
        self._direct = DirectScript(client, LUA)  # one payment's call: the thin path
        # an entity kept within another has no block: the enclosing entity's block reads it
        index = self.plan.raw_index
        self._blocks = [_Block(p, self.spec, index) for p in self.plan.entities if p.within is None]
        self._starts = [index[raw_name(p.entity, "present")] for p in self.plan.entities]
        self._cluster = isinstance(client, RedisCluster)

    @property
    def feature_names(self) -> list[str]:
        return self.spec.feature_names

    def score(self, payment: Mapping[str, Any], *, record: bool = True) -> OnlineResult:
        """Features of a payment (a mapping of canonical fields), then record it, atomically per entity.

        With ``record=False`` (a test payment) the features are read exactly as a recording call
        would read them, and nothing at all is written to Redis: no state, no idempotency record,
        no TTL refreshed. A payment whose transaction id some entity has already recorded is a
        duplicate: it is recorded by none (on a Redis Cluster: by none of the entities of the same
        slot group; see docs/features.md).
        """
        call = self._score_call(payment, record)
        return self._scored(call, self._call(call.keys, call.header, call.blocks, call.lengths))

    async def ascore(self, payment: Mapping[str, Any], *, record: bool = True) -> OnlineResult:
        """`score` without blocking the event loop while Redis runs the script, so that a worker
        serves other payments meanwhile (a Redis Cluster's calls still block)."""
        call = self._score_call(payment, record)
        if self._cluster or not call.keys:
            return self._scored(call, self._call(call.keys, call.header, call.blocks, call.lengths))
        reply = await self._direct.acall(call.keys, call.header + [a for b in call.blocks for a in b])
        return self._scored(call, _split([list(range(len(call.keys)))], [reply], call.lengths))

    def _score_call(self, payment: Mapping[str, Any], record: bool) -> _ScoreCall:
        t_ms = to_ms(payment["timestamp"])
        header, keys, blocks, present = self._score_blocks(payment, t_ms)
        if not record:
            header[0] = "peek"
        lengths = [1 + block.n_values for block in present]
        return _ScoreCall(payment, t_ms, header, keys, blocks, present, lengths)

    def _scored(self, call: _ScoreCall, replies: list[list[Any]]) -> OnlineResult:
        raw = np.full(len(self.plan.raw_names), np.nan)
        raw[self._starts] = 0.0
        duplicate = False
        for block, reply in zip(call.present, replies, strict=True):
            duplicate = duplicate or reply[0] == 1
            raw[block.start] = 1.0
            raw[block.targets] = [float(v) for v in reply[1:]]
            for entity, present, values in block.folded:
                if self.spec.entity_key(entity, call.payment) is None:  # type: ignore[arg-type]
                    raw[values] = np.nan
                else:
                    raw[present] = 1.0
        return OnlineResult(self._derive(raw, call.payment, call.t_ms), duplicate)

    def _score_blocks(
        self, payment: Mapping[str, Any], t_ms: int
    ) -> tuple[list[str], list[str], list[list[str]], list[_Block]]:
        keys, args, present = [], [], []
        for block in self._blocks:
            key = self.spec.entity_key(block.plan.entity, payment)  # type: ignore[arg-type]
            if key is None:
                continue
            keys.append(entity_prefix(self.namespace, block.plan.entity, key))
            args.append(block.args(payment))
            present.append(block)
        tx = fingerprint(str(payment["transaction_id"]), TX_BITS)
        header = ["score", str(tx), str(t_ms), str(to_milli(float(payment["amount"])))]
        return header, keys, args, present

    def _feedback_blocks(
        self, event: str, txid: str, t_ms: int, payment: Mapping[str, Any]
    ) -> tuple[list[str], list[str], list[list[str]]]:
        kind = _FEATURE_EVENT.get(event)
        if kind is None:
            raise ValueError(f"unknown feedback event {event!r}; use one of {sorted(_FEATURE_EVENT)}")
        keys, args = [], []
        paid_ms = to_ms(payment["timestamp"]) if kind == "fraud" else 0
        for p in self.plan.entities:
            key = self.spec.entity_key(p.entity, payment)  # type: ignore[arg-type]
            if kind not in p.feedback or key is None or p.within is not None:
                continue
            g = p.fraud_bucket_ms if kind == "fraud" and p.fraud_bucket_ms else 0
            keep = p.buckets[g].max_buckets if g else 0
            group = list(p.buckets).index(g) + 1 if g else 0
            lists = [event for event, windows in p.feedback.items() if windows]
            position = lists.index(kind) + 1 if kind in lists else 0
            keys.append(entity_prefix(self.namespace, p.entity, key))
            # its ring keeps `limits.dedupe` ids, its list `limits.feedback` times
            tokens = [str(feedback_retention_ms(p, kind)), str(self.spec.dedupe_limit)]
            tokens += [str(self.spec.feedback_limit), str(g), str(keep), str(group), str(position)]
            # a fraud is counted in the bucket of the payment it is about (known-fraud share)
            tokens += [str(len(p.buckets)), str(len(lists)), str(paid_ms // g if g else 0)]
            args.append([str(len(tokens)), *tokens])
        return ["feedback", str(fingerprint(txid, TX_BITS)), str(t_ms), kind], keys, args

    def _call_cluster(
        self, keys: list[str], header: list[str], blocks: Sequence[list[str]]
    ) -> list[tuple[list[int], Any]]:
        """Redis Cluster: one EVALSHA per slot, pipelined per node (redis-py's cluster pipeline refuses
        EVALSHA); a node that answers MOVED or ASK (resharding) gets its calls again through the
        cluster client, which follows the redirection; a node that cannot be reached has the slot
        map reloaded and the call fail."""
        cluster = cast(RedisCluster, self.client)
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_slot.setdefault(key_slot(key.encode()), []).append(i)
        by_node: dict[str, tuple[Any, list[list[int]]]] = {}
        for group in by_slot.values():
            node = cluster.get_node_from_key(keys[group[0]])
            by_node.setdefault(node.name, (node, []))[1].append(group)
        out: list[tuple[list[int], Any]] = []
        for node, groups in by_node.values():
            calls = [([keys[i] for i in g], header + [a for i in g for a in blocks[i]]) for g in groups]
            try:
                pipe = node.redis_connection.pipeline(transaction=False)
                for call_keys, call_args in calls:
                    self._script(keys=call_keys, args=call_args, client=pipe)
                # a node gone (killed, failed over) reloads the slot map, so the next payment finds
                # the promoted replica; this one fails to its caller (the scoring path's breaker)
                with following_moves(self.client):
                    replies = pipe.execute()
            except redis.ResponseError as exc:
                if not str(exc).startswith(("MOVED", "ASK")):
                    raise
                cluster.nodes_manager.initialize()
                replies = [self._script(keys=k, args=a) for k, a in calls]
            out += list(zip(groups, replies, strict=True))
        return out

    def backfill(
        self, history: Any, until_ms: int | None = None, batch: int = 2000, progress: Any = None
    ) -> int:
        """Record a history's events (payments and feedback, in stream order) without scoring them.

        Loads the feature state of a new Redis from past payments, pipelined: Redis runs the same
        script as for a live payment, in order, but nothing waits for each answer. Returns the
        number of events recorded.
        """
        from antifraud.features.stream import payment_record, stream

        pipe = self.client.pipeline(transaction=False)
        count = 0
        for event, row, t_ms in stream(history):
            if until_ms is not None and t_ms >= until_ms:
                break
            payment = payment_record(history, row)
            if event == "payment":
                header, keys, args, _ = self._score_blocks(payment, t_ms)
            else:
                header, keys, args = self._feedback_blocks(
                    event, str(payment["transaction_id"]), t_ms, payment
                )
            if keys:
                self._script(keys=keys, args=header + [a for block in args for a in block], client=pipe)
            count += 1
            if count % batch == 0:
                pipe.execute()
                if progress:
                    progress(count)
        pipe.execute()
        return count

    def without_state(self, payment: Mapping[str, Any]) -> np.ndarray:
        """Features when Redis cannot be read: the payment's own, every stateful one missing (NaN)."""
        raw = np.full(len(self.plan.raw_names), np.nan)
        raw[self._starts] = 0.0
        return self._derive(raw, payment, to_ms(payment["timestamp"]))

    def _derive(self, raw: np.ndarray, payment: Mapping[str, Any], t_ms: int) -> np.ndarray:
        return self.deriver.transform_one(raw, payment, t_ms)

    def feedback(
        self, event: str, txid: str, reported_at: datetime | int, payment: Mapping[str, Any]
    ) -> bool:
        """Record a feedback event (decline, refund, cancel, fraud) about an earlier payment.

        Returns False when an entity had already recorded this event for this transaction: all or
        nothing, as for payments, none records it again (on a Redis Cluster: none of the same slot
        group).
        """
        header, keys, args = self._feedback_blocks(event, txid, to_ms(reported_at), payment)
        if not keys:
            return False
        replies = self._call(keys, header, args, [1] * len(keys))
        return any(reply[0] == 1 for reply in replies)

    def _call(
        self, keys: list[str], header: list[str], blocks: Sequence[list[str]], lengths: Sequence[int]
    ) -> list[list[Any]]:
        """Run the script over entity blocks; returns each block's reply values, in block order."""
        if not keys:
            return []
        if self._cluster:
            replies_by_group = self._call_cluster(keys, header, blocks)
            groups = [g for g, _ in replies_by_group]
            replies = [r for _, r in replies_by_group]
        else:
            groups = [list(range(len(keys)))]
            replies = [self._direct(keys, header + [a for block in blocks for a in block])]
        return _split(groups, replies, lengths)


@dataclass(frozen=True)
class _ScoreCall:
    """A payment's script call, prepared: what `score` and `ascore` send and read back."""

    payment: Mapping[str, Any]
    t_ms: int
    header: list[str]
    keys: list[str]
    blocks: list[list[str]]
    present: list[_Block]  # the blocks of the entities the payment has
    lengths: list[int]  # how many reply values each block returns


def _split(groups: Sequence[list[int]], replies: Sequence[Any], lengths: Sequence[int]) -> list[list[Any]]:
    """Each block's reply values, in block order, from the replies of the calls of each block group."""
    out: list[list[Any]] = [[] for _ in lengths]
    for group, reply in zip(groups, replies, strict=True):
        pos = 0
        for i in group:
            out[i] = list(reply[pos : pos + lengths[i]])
            pos += lengths[i]
    return out
