"""The review queue in Redis: every decision answered `review`, and every challenge the payment flow
reported failed, waits here for a person.

Keys (all under the hash tag `{review}`, so each script touches one slot of a cluster), with
`p = {ns}:{review}:`:

- `p case:<tx>`  hash: the case (merchant, amount, currency, risk score, score, reasons as JSON, card
  token, decided_at, queued_at, source (`decision`: answered review; `challenge`: a challenge the
  payment flow reported failed), status, claimed_by, claimed_at, outcome, note, resolved_by,
  resolved_at); a resolved case expires `keep_days` after its resolution;
- `p open:age`, `p open:risk`  zsets of the open cases, by decision time (ms), and by
  `risk_score * 1e13 + (1e13 - decided_ms)` (riskiest, then oldest); `... :m:<merchant>` the same
  per merchant, for keys scoped to merchants;
- `p claim:<tx>`  string: who works the case, expiring after `claim_s`: two people never work the
  same case, and a claim left behind frees the case by itself;
- `p resolved`  zset: resolved cases by time, trimmed past `keep_days`;
- `p day:<YYYY-MM-DD>`  hash: queued, overflow, claimed, fraud, legitimate, kept 90 days.

Enqueueing is idempotent (a case exists once: a batch the sink writes again queues nothing new) and
bounded: at `max_open` open cases a new one is refused and counted as overflow, never evicting one;
the decision stays in the store like every other. Each change of a case is one Lua script.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, cast

import orjson
import redis

from antifraud.engine.decision_record import Decision
from antifraud.engine.redis_url import following_moves, slot_pipeline
from antifraud.engine.settings import Settings

Order = Literal["oldest", "riskiest"]
ORDERS: tuple[Order, ...] = ("oldest", "riskiest")
#: why a case entered: a `review` decision, or a `challenge` the payment flow reported failed
Source = Literal["decision", "challenge"]
Outcome = Literal["fraud", "legitimate"]
OUTCOMES: tuple[Outcome, ...] = ("fraud", "legitimate")
#: the day counters, in the order pages show them
DAY_FIELDS = ("queued", "overflow", "claimed", "fraud", "legitimate")
DAY_KEEP_S = 90 * 86_400
#: how many of the first open cases `free` looks through for one to claim
NEXT_AMONG = 50
_RISK_BASE = 10**13

# Shared by the scripts: put a case into the open sets (its scores from the case hash), count a day's
# figure, check who may act on a case.
_OPEN = """
local function open_case(p, tx, case)
  local merchant = redis.call('HGET', case, 'merchant')
  local decided = tonumber(redis.call('HGET', case, 'decided_ms'))
  local risk = tonumber(redis.call('HGET', case, 'risk_score')) or 0
  local by_risk = risk * 1e13 + (1e13 - decided)
  redis.call('ZADD', p .. 'open:age', decided, tx)
  redis.call('ZADD', p .. 'open:risk', by_risk, tx)
  redis.call('ZADD', p .. 'open:age:m:' .. merchant, decided, tx)
  redis.call('ZADD', p .. 'open:risk:m:' .. merchant, by_risk, tx)
end
local function count(p, day, field, by)
  redis.call('HINCRBY', p .. 'day:' .. day, field, by)
  redis.call('EXPIRE', p .. 'day:' .. day, tonumber(ARGV[3]))
end
-- Whether who may act on the case: nil and the claim's holder (false: nobody), or the refusal
-- {status, holder, ms left}: missing, `closed` (resolved before, by holder), or taken (by holder).
local function may_act(p, tx, who, closed)
  local case = p .. 'case:' .. tx
  local status = redis.call('HGET', case, 'status')
  if not status then return {'missing', '', 0} end
  if status ~= 'open' then return {closed, redis.call('HGET', case, 'resolved_by'), 0} end
  local claim = p .. 'claim:' .. tx
  local holder = redis.call('GET', claim)
  if holder and holder ~= who then return {'taken', holder, redis.call('PTTL', claim)} end
  return nil, holder
end
"""

# ARGV: prefix, tx, day-keep s, day, max open, then the case's fields and values.
# Returns 1 queued, 0 known already (a replayed batch), -1 refused: the queue is full.
_ENQUEUE = (
    _OPEN
    + """
local p, tx = ARGV[1], ARGV[2]
local case = p .. 'case:' .. tx
if redis.call('EXISTS', case) == 1 then return 0 end
if redis.call('ZCARD', p .. 'open:age') >= tonumber(ARGV[5]) then
  count(p, ARGV[4], 'overflow', 1)
  return -1
end
for i = 6, #ARGV, 2 do redis.call('HSET', case, ARGV[i], ARGV[i + 1]) end
open_case(p, tx, case)
count(p, ARGV[4], 'queued', 1)
return 1
"""
)

# ARGV: prefix, tx, day-keep s, day, who, claim ms, now (ISO).
# Returns {status, holder, ms left}: claimed (or renewed), taken (by holder), resolved, missing.
_CLAIM = (
    _OPEN
    + """
local p, tx, who = ARGV[1], ARGV[2], ARGV[5]
local refused, holder = may_act(p, tx, who, 'resolved')
if refused then return refused end
redis.call('SET', p .. 'claim:' .. tx, who, 'PX', tonumber(ARGV[6]))
redis.call('HSET', p .. 'case:' .. tx, 'claimed_by', who, 'claimed_at', ARGV[7])
if not holder then count(p, ARGV[4], 'claimed', 1) end
return {'claimed', who, tonumber(ARGV[6])}
"""
)

# ARGV: prefix, tx, day-keep s, day, who. Returns 1 when the caller's claim was dropped, else 0.
_RELEASE = """
local claim = ARGV[1] .. 'claim:' .. ARGV[2]
if redis.call('GET', claim) == ARGV[5] then return redis.call('DEL', claim) end
return 0
"""

# ARGV: prefix, tx, day-keep s, day, who, outcome, note, now (ISO), now ms, keep ms.
# Only while the claim is the caller's or nobody's. Returns {status, holder, ms left}: resolved,
# taken, missing, or already (resolved before, by holder).
_RESOLVE = (
    _OPEN
    + """
local p, tx, who = ARGV[1], ARGV[2], ARGV[5]
local refused = may_act(p, tx, who, 'already')
if refused then return refused end
local case = p .. 'case:' .. tx
local merchant = redis.call('HGET', case, 'merchant')
redis.call('HSET', case, 'status', 'resolved', 'outcome', ARGV[6], 'note', ARGV[7],
  'resolved_by', who, 'resolved_at', ARGV[8])
redis.call('PEXPIRE', case, tonumber(ARGV[10]))
for _, order in ipairs({'age', 'risk'}) do
  redis.call('ZREM', p .. 'open:' .. order, tx)
  redis.call('ZREM', p .. 'open:' .. order .. ':m:' .. merchant, tx)
end
redis.call('ZADD', p .. 'resolved', tonumber(ARGV[9]), tx)
redis.call('ZREMRANGEBYSCORE', p .. 'resolved', '-inf', tonumber(ARGV[9]) - tonumber(ARGV[10]))
redis.call('DEL', p .. 'claim:' .. tx)
count(p, ARGV[4], ARGV[6], 1)
return {'resolved', who, 0}
"""
)

# Undo a resolution whose label could not be saved: the case is open again, still the caller's.
# ARGV: prefix, tx, day-keep s, day, who, claim ms. Returns 1 when reopened, 0 when it was not
# resolved by the caller.
_REOPEN = (
    _OPEN
    + """
local p, tx, who = ARGV[1], ARGV[2], ARGV[5]
local case = p .. 'case:' .. tx
if redis.call('HGET', case, 'status') ~= 'resolved' or redis.call('HGET', case, 'resolved_by') ~= who then
  return 0
end
local outcome = redis.call('HGET', case, 'outcome')
redis.call('HSET', case, 'status', 'open')
redis.call('HDEL', case, 'outcome', 'note', 'resolved_by', 'resolved_at')
redis.call('PERSIST', case)
redis.call('ZREM', p .. 'resolved', tx)
open_case(p, tx, case)
redis.call('SET', p .. 'claim:' .. tx, who, 'PX', tonumber(ARGV[6]))
count(p, ARGV[4], outcome, -1)
return 1
"""
)


@dataclass(frozen=True)
class Case:
    """A case as a page shows it."""

    transaction_id: str
    merchant: str
    amount: float
    currency: str
    risk_score: int | None
    score: float | None
    reasons: dict[str, Any]  # rules (rule, action, reason), band, fail_policy, authenticated_fallback
    card: str | None
    timestamp: str  # the payment's time
    decided_at: str
    queued_at: str
    source: Source
    status: Literal["open", "resolved"]
    claimed_by: str | None = None  # the live claim's holder (None: free)
    claim_ms_left: int = 0
    outcome: str | None = None
    note: str | None = None
    resolved_by: str | None = None
    resolved_at: str | None = None

    @property
    def age(self) -> timedelta:
        """How long since the payment was decided."""
        return datetime.now(UTC) - datetime.fromisoformat(self.decided_at)


@dataclass(frozen=True)
class ClaimResult:
    """What a claim or a resolution found: its status and who holds (or resolved) the case."""

    status: str  # claimed, taken, resolved, missing (claim); resolved, taken, already, missing (resolve)
    holder: str
    ms_left: int = 0


def _claim_result(reply: object) -> ClaimResult:
    """The claim or resolve script's {status, holder, ms left}."""
    status, holder, left = cast(list[Any], reply)
    return ClaimResult(cast(str, _text(status)), cast(str, _text(holder)) or "", int(left))


@dataclass(frozen=True)
class Page:
    """One page of open cases, and the queue's size."""

    cases: list[Case]
    open_count: int
    page: int
    per_page: int

    @property
    def has_next(self) -> bool:
        """Whether another page follows."""
        return (self.page + 1) * self.per_page < self.open_count


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def case_fields(decision: Decision, source: Source = "decision") -> dict[str, str]:
    """The hash fields of a decision's case; a case of a failed challenge says so in its reasons."""
    reasons = decision["reasons"]
    kept: dict[str, object] = {
        k: reasons[k]  # type: ignore[literal-required]
        for k in ("rules", "band", "fail_policy", "authenticated_fallback")
        if k in reasons
    }
    if source == "challenge":
        kept["challenge"] = "failed"
    payment = decision["payment"]
    decided = datetime.fromisoformat(decision["decided_at"])
    fields = {
        "merchant": str(payment.get("merchant_id", "")),
        "amount": repr(float(decision["amount"])),
        "currency": decision["currency"],
        "risk_score": "" if decision["risk_score"] is None else str(decision["risk_score"]),
        "score": "" if decision["score"] is None else repr(decision["score"]),
        "reasons": orjson.dumps(kept).decode(),
        "card": str(payment.get("card_id", "")),
        "timestamp": decision["timestamp"],
        "decided_at": decision["decided_at"],
        "decided_ms": str(int(decided.timestamp() * 1000)),
        "queued_at": datetime.now(UTC).isoformat(),
        "source": source,
        "status": "open",
    }
    return fields


class ReviewQueue:
    """The open and resolved review cases of one namespace, and their claims."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "af",
        max_open: int = 10_000,
        claim_s: int = 900,
        keep_days: int = 30,
    ) -> None:
        self.client = client
        self.prefix = f"{namespace}:{{review}}:"
        self.max_open = max_open
        self.claim_ms = claim_s * 1000
        self.keep_ms = keep_days * 86_400_000
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._resolve = client.register_script(_RESOLVE)
        self._reopen = client.register_script(_REOPEN)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> ReviewQueue:
        """The queue of `settings`' namespace, with its bounds (ANTIFRAUD_REVIEW_*)."""
        return cls(
            client,
            settings.namespace,
            settings.review_queue_max,
            settings.review_claim_s,
            settings.review_keep_days,
        )

    @property
    def _route(self) -> list[str]:
        """The one key every script call names: the scripts build their keys from the prefix (ARGV),
        but a Redis Cluster sends a call to the node of its named keys, here `{review}`'s."""
        return [f"{self.prefix}open:age"]

    def _args(self, tx: str, *more: object) -> list[Any]:
        return [self.prefix, tx, DAY_KEEP_S, _today(), *more]

    # -- intake ---------------------------------------------------------------------------------------

    def enqueue(self, decisions: Iterable[Decision], source: Source = "decision") -> tuple[int, int]:
        """Queue each decision as a case, once (one pipeline); returns (queued, refused as overflow)."""
        pipe = slot_pipeline(self.client, self.prefix)  # a script per case: all under `{review}`
        calls = 0
        for decision in decisions:
            fields = case_fields(decision, source)
            flat = [x for pair in fields.items() for x in pair]
            self._enqueue(
                keys=self._route,
                args=self._args(decision["transaction_id"], self.max_open, *flat),
                client=pipe,
            )
            calls += 1
        if not calls:
            return 0, 0
        with following_moves(self.client):
            done = [int(cast(int, r)) for r in pipe.execute()]
        return done.count(1), done.count(-1)

    # -- reading --------------------------------------------------------------------------------------

    def case(self, transaction_id: str) -> Case | None:
        """One case (open or resolved), with its live claim; None when there is none."""
        return next(iter(self._cases([transaction_id])), None)

    def _cases(self, ids: Sequence[str]) -> list[Case]:
        pipe = self.client.pipeline(transaction=False)
        for tx in ids:
            pipe.hgetall(f"{self.prefix}case:{tx}")
            pipe.get(f"{self.prefix}claim:{tx}")
            pipe.pttl(f"{self.prefix}claim:{tx}")
        replies = pipe.execute()
        cases = []
        for i, tx in enumerate(ids):
            found, holder, left = replies[3 * i : 3 * i + 3]
            if found:
                cases.append(_case_of(tx, cast(dict[bytes, bytes], found), _text(holder), int(left)))
        return cases

    def page(
        self,
        order: Order = "oldest",
        page: int = 0,
        per_page: int = 50,
        merchants: Collection[str] | None = None,
    ) -> Page:
        """A page of open cases, oldest or riskiest first; `merchants` limits them to those merchants
        (a scoped key's page merges its merchants' first pages)."""
        start = page * per_page
        if merchants is None:
            ids = self._ids(f"{self.prefix}open:{_ORDER_KEY[order]}", order, start, start + per_page - 1)
            total = int(cast(int, self.client.zcard(f"{self.prefix}open:age")))
        else:
            ids, total = self._merged(order, start + per_page, sorted(merchants))
            ids = ids[start:]
        return Page(self._cases(ids), total, page, per_page)

    def _ids(self, key: str, order: Order, start: int, stop: int) -> list[str]:
        found = self.client.zrange(key, start, stop, desc=order == "riskiest")
        return [cast(str, _text(x)) for x in cast(list[bytes], found)]

    def _merged(self, order: Order, first: int, merchants: Sequence[str]) -> tuple[list[str], int]:
        pipe = self.client.pipeline(transaction=False)
        key = _ORDER_KEY[order]
        for merchant in merchants:
            pipe.zrange(
                f"{self.prefix}open:{key}:m:{merchant}",
                0,
                first - 1,
                desc=order == "riskiest",
                withscores=True,
            )
            pipe.zcard(f"{self.prefix}open:age:m:{merchant}")
        replies = pipe.execute()
        lists = [cast(list[tuple[bytes, float]], replies[2 * i]) for i in range(len(merchants))]
        total = sum(int(replies[2 * i + 1]) for i in range(len(merchants)))
        sign = -1 if order == "riskiest" else 1
        merged = heapq.merge(*lists, key=lambda pair: sign * pair[1])
        return [cast(str, _text(tx)) for tx, _ in list(merged)[:first]], total

    def open_count(self) -> int:
        """How many cases are open."""
        return int(cast(int, self.client.zcard(f"{self.prefix}open:age")))

    def oldest_decided(self) -> datetime | None:
        """When the oldest open case was decided; None when the queue is empty."""
        found = cast(
            list[tuple[bytes, float]], self.client.zrange(f"{self.prefix}open:age", 0, 0, withscores=True)
        )
        return datetime.fromtimestamp(found[0][1] / 1000, UTC) if found else None

    def days(self, last: int = 7, today: date | None = None) -> list[tuple[str, dict[str, int]]]:
        """The day counters of the last `last` days, newest first (every field, 0 when absent)."""
        today = today or datetime.now(UTC).date()
        days = [(today - timedelta(days=i)).isoformat() for i in range(last)]
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{self.prefix}day:{day}")
        counts = []
        for day, found in zip(days, pipe.execute(), strict=True):
            got = {cast(str, _text(k)): int(v) for k, v in cast(dict[bytes, bytes], found).items()}
            counts.append((day, {name: got.get(name, 0) for name in DAY_FIELDS}))
        return counts

    # -- working a case -------------------------------------------------------------------------------

    def claim(self, transaction_id: str, who: str) -> ClaimResult:
        """Claim a case for `claim_s` (or renew one's own claim)."""
        now = datetime.now(UTC).isoformat()
        return _claim_result(
            self._claim(keys=self._route, args=self._args(transaction_id, who, self.claim_ms, now))
        )

    def free(self, who: str, order: Order = "oldest", merchants: Collection[str] | None = None) -> list[str]:
        """The cases among the first NEXT_AMONG that `who` may claim now: nobody's, or `who`'s own."""
        return [
            c.transaction_id
            for c in self.page(order, 0, NEXT_AMONG, merchants).cases
            if c.claimed_by in (None, who)
        ]

    def release(self, transaction_id: str, who: str) -> bool:
        """Drop the caller's own claim; False when the claim was not the caller's."""
        return bool(self._release(keys=self._route, args=self._args(transaction_id, who)))

    def resolve(self, transaction_id: str, who: str, outcome: Outcome, note: str) -> ClaimResult:
        """Mark a case resolved, while the claim is the caller's or nobody's."""
        now = datetime.now(UTC)
        at_ms = int(now.timestamp() * 1000)
        args = self._args(transaction_id, who, outcome, note, now.isoformat(), at_ms, self.keep_ms)
        return _claim_result(self._resolve(keys=self._route, args=args))

    def reopen(self, transaction_id: str, who: str) -> bool:
        """Reopen a case the caller just resolved (its label could not be saved), still claimed."""
        return bool(self._reopen(keys=self._route, args=self._args(transaction_id, who, self.claim_ms)))


_ORDER_KEY: Mapping[Order, str] = {"oldest": "age", "riskiest": "risk"}


def _case_of(tx: str, found: dict[bytes, bytes], holder: str | None, left_ms: int) -> Case:
    f = {k.decode(): v.decode() for k, v in found.items()}
    return Case(
        transaction_id=tx,
        merchant=f.get("merchant", ""),
        amount=float(f.get("amount", "nan")),
        currency=f.get("currency", ""),
        risk_score=int(f["risk_score"]) if f.get("risk_score") else None,
        score=float(f["score"]) if f.get("score") else None,
        reasons=orjson.loads(f.get("reasons", "{}")),
        card=f.get("card") or None,
        timestamp=f.get("timestamp", ""),
        decided_at=f.get("decided_at", ""),
        queued_at=f.get("queued_at", ""),
        source="challenge" if f.get("source") == "challenge" else "decision",
        status="open" if f.get("status") == "open" else "resolved",
        claimed_by=holder,
        claim_ms_left=max(left_ms, 0) if holder else 0,
        outcome=f.get("outcome"),
        note=f.get("note"),
        resolved_by=f.get("resolved_by"),
        resolved_at=f.get("resolved_at"),
    )
