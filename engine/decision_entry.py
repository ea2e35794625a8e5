"""The decision log's encodings in Redis: a decision's buffer entry and its idempotency record.

- **The buffer entry** (field "d" of `{ns}:decisions`) is a `DecisionEntry`'s JSON: the decision
  with its features as an array, in the order of a named feature list whose id (`feature_list_id`, a
  digest of the names: one id is always one list) it carries. The names are kept once in Redis, in
  the hash `{ns}:decisions:features` (`FeatureLists`), and every reader maps the array back to names
  (`decision_of`), so a decision is stored, read and answered by name as before. With the spec's 87
  features the names were about half the entry.
- **The idempotency record** (`{ns}:{tx:<id>}:d`, kept for the dedupe horizon) is a JSON array
  without key names (`RECORD_FIELDS`, after a format number), without the transaction id its key
  holds, and without the reasons' empty lists.

Both decoders also read the earlier encodings (features by name; a record as a JSON object), which a
buffer or Redis holds across an upgrade.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import orjson
import redis

from antifraud.engine.decision_record import Decision, DecisionEntry, IdempotencyRecord, Reasons
from antifraud.engine.redis_url import same_slot_as


def feature_list_id(names: Sequence[str]) -> str:
    """The id of a list of feature names (in order): a 64-bit digest, 11 characters."""
    digest = hashlib.blake2b("\n".join(names).encode(), digest_size=8).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def entry_json(entry: DecisionEntry) -> bytes:
    """A new decision as the buffer holds it (NaN features as null)."""
    return orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY)


def decision_of(raw: bytes, names_of: Callable[[str], Sequence[str]]) -> Decision:
    """A buffer entry's decision with its features by name; `names_of` gives a feature list's names
    (a `LookupError` when unknown). An entry of the earlier encoding (features by name) as it is."""
    decision = cast(dict[str, Any], orjson.loads(raw))
    ident = decision.pop("feature_list", None)
    if ident is not None:
        names = names_of(ident)
        values = decision["features"]
        if len(names) != len(values):
            raise LookupError(f"feature list {ident} has {len(names)} names, the entry {len(values)} values")
        decision["features"] = dict(zip(names, values, strict=True))
    return cast(Decision, decision)


class FeatureLists:
    """The named feature lists of the buffer's entries, in the Redis hash `{ns}:decisions:features`
    (`{{ns}:decisions}:features` on a cluster)
    (id -> the names as a JSON array), and a copy of those known to this process. A list is never
    changed (its id is its names' digest), so a copy never goes stale."""

    def __init__(self, client: redis.Redis, namespace: str = "af") -> None:
        self.client = client
        # on a cluster, in the decisions stream's slot: the decision log's script reads it
        self.key = f"{same_slot_as(f'{namespace}:decisions', client)}:features"
        self._names: dict[str, list[str]] = {}

    def id_of(self, names: Sequence[str]) -> str:
        """The id of a list of names, known from now on to this process (`save` writes it to Redis)."""
        ident = feature_list_id(names)
        self._names.setdefault(ident, list(names))
        return ident

    def save(self, ident: str) -> None:
        """Write a list this process knows (`id_of`) to Redis."""
        self.client.hset(self.key, ident, orjson.dumps(self.names(ident)).decode())

    def names(self, ident: str) -> list[str]:
        """The names of a list: this process's copy, else Redis's; `LookupError` when neither has it."""
        known = self._names.get(ident)
        if known is None:
            raw = cast(bytes | None, self.client.hget(self.key, ident))
            if raw is None:
                raise LookupError(f"feature list {ident} is not in {self.key}")
            known = self._names[ident] = cast(list[str], orjson.loads(raw))
        return known


# -- the idempotency record --------------------------------------------------------------------------

#: the record's fields in its JSON array, after the format number (`transaction_id` is the key's)
RECORD_FIELDS: Final = (
    "verdict",
    "score",
    "risk_score",
    "reasons",
    "model_version",
    "rules_version",
    "degraded",
    "timestamp",
    "payment_sha",
    "entities",
    "stream_id",
)
_FORMAT: Final = 1


def record_head(record: IdempotencyRecord) -> bytes:
    """A record's JSON array up to its last field, `stream_id`, and the comma before it: the log's
    script ends it with the buffer entry's id (or null)."""
    reasons = {k: v for k, v in record["reasons"].items() if v != []}
    values = [_FORMAT, *(reasons if f == "reasons" else record[f] for f in RECORD_FIELDS[:-1])]  # type: ignore[literal-required]
    return orjson.dumps(values)[:-1] + b","


def record_of(raw: bytes, transaction_id: str) -> IdempotencyRecord:
    """The record of a transaction from its stored JSON (this encoding or the earlier JSON object)."""
    stored = orjson.loads(raw)
    if isinstance(stored, dict):
        return cast(IdempotencyRecord, stored)
    if stored[0] != _FORMAT or len(stored) != len(RECORD_FIELDS) + 1:
        raise ValueError(f"the idempotency record of {transaction_id!r} has an unknown format: {raw[:80]!r}")
    record = dict(zip(RECORD_FIELDS, stored[1:], strict=True))
    reasons: Reasons = {"rules": [], "shadow_rules": [], "skipped_rules": [], "model": []}
    reasons.update(record["reasons"])
    return cast(IdempotencyRecord, {"transaction_id": transaction_id, **record, "reasons": reasons})
