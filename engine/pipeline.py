"""The scoring path, in one straight line:

    validate (pydantic, in the API) -> features (one Redis round trip) -> model -> rules -> verdict
    -> decision log (one Redis round trip: the idempotency record and the buffer, engine/decisions.py)

Failure is a verdict: when Redis is down or slow the stateful features are missing, rules that
need them are skipped, and the fail policy answers for payments that could not be fully scored.
"""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeGuard, TypeVar, cast

import numpy as np
import orjson
import redis

from antifraud.engine.decision_record import (
    Answer,
    BandCode,
    ContributionRecord,
    Decision,
    DecisionEntry,
    FiredRuleRecord,
    IdempotencyRecord,
    JSONObject,
    PaymentRecord,
    Reasons,
    Timings,
)
from antifraud.engine.decisions import BUFFER_FULL, NOT_REPLICATED, DecisionLog, PutResult, answered
from antifraud.engine.model import ModelRuntime
from antifraud.engine.rules import FiredRule, RuleSet
from antifraud.engine.schema import Transaction
from antifraud.engine.settings import FailPolicy
from antifraud.engine.verdicts import Verdict
from antifraud.engine.vocabulary import ENTITY_FIELDS
from antifraud.features.online import OnlineFeatures

if TYPE_CHECKING:  # prometheus_client is the service's, not a batch user's, to import
    from antifraud.engine.metrics import Metrics


class RedisBreaker:
    """Stops calling a Redis that keeps failing, for a short pause, so a dead Redis costs no time.

    It opens after `threshold` failures in a row (one slow call is not an outage) and lets a call
    through again after `pause_s`.
    """

    def __init__(self, pause_s: float = 0.5, threshold: int = 2) -> None:
        self.pause_s = pause_s
        self.threshold = threshold
        self.failures = 0
        self.open_until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self.open_until

    def trip(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.pause_s

    def reset(self) -> None:
        self.failures = 0
        self.open_until = 0.0


@dataclass
class Loaded:
    """What can be swapped live: the model, the shadow model and the rule set."""

    model: ModelRuntime | None
    rules: RuleSet
    shadow: ModelRuntime | None = None


@dataclass(frozen=True)
class PendingRetry:
    """A retry whose first request has not logged its decision yet: what `Scorer.resume` needs."""

    txn: Transaction
    payment: dict[str, Any]
    timings: Timings
    started: float
    loaded: Loaded
    deadline: float  # perf_counter time: wait for the record until then (half the budget)


@dataclass
class Scorer:
    """Scores payments; one per worker process (the model runtime is not thread-safe)."""

    features: OnlineFeatures
    log: DecisionLog
    loaded: Loaded
    fail_policy: FailPolicy = "review"
    shadow_share: float = 0.0
    budget_ms: float = 50.0
    breaker: RedisBreaker = field(default_factory=RedisBreaker)
    metrics: Metrics | None = None  # None in batch use

    def __post_init__(self) -> None:
        # A decision keeps the payment's ENTITY_FIELDS so that feedback about it reaches the same
        # entities later: an entity keyed on any other field would silently never get feedback.
        spec = self.features.spec
        unkept = sorted({f for fields in spec.entities.values() for f in fields} - set(ENTITY_FIELDS))
        if unkept:
            raise ValueError(
                f"the feature spec keys entities on {unkept}, which a decision does not keep: key "
                f"entities only on {list(ENTITY_FIELDS)}, or add the field to engine.vocabulary.ENTITY_FIELDS"
            )
        # a new decision's features are logged as an array in the order of this named list
        self._feature_list = self.log.feature_list(self.features.feature_names)

    def score(self, txn: Transaction) -> Answer | PendingRetry:
        """The answer for a payment: verdict, score, reasons, versions, degradation and timings.

        A new payment's answer is its whole `Decision` (logged); a retry of a decided one is answered
        from its idempotency record, with this request's timings. A retry whose first request has not
        logged its decision yet (still deciding in another worker) gets a `PendingRetry`: the caller
        waits for the record without blocking (`poll`), then calls `resume`. Raises
        `IdempotencyConflict` when the transaction id was decided for another payment.
        """
        return _run_blocking(self._score(txn, blocking=True))

    async def ascore(self, txn: Transaction) -> Answer | PendingRetry:
        """`score` on the event loop: while Redis runs this payment's calls, the worker serves
        other payments (the service's path, engine/api/score.py)."""
        return await self._score(txn, blocking=False)

    async def _score(self, txn: Transaction, blocking: bool) -> Answer | PendingRetry:
        # One flow for both: with `blocking`, its Redis calls block and it never suspends, so
        # `score` runs it to the end in one step (`_run_blocking`); otherwise it awaits them.
        started = time.perf_counter()
        timings: Timings = {}
        payment = txn.model_dump()
        loaded = self.loaded  # one consistent snapshot even if a reload swaps it mid-request

        degraded: list[str] = []
        values, duplicate, missing_reason = await self._features(payment, not txn.test, blocking)
        if missing_reason:
            degraded.append(missing_reason)
        timings["features_ms"] = _ms(started)

        if duplicate and not txn.test:  # a test is scored afresh: it never answers a stored decision
            # A retry: answer the first request's decision, once it is logged.
            pending = PendingRetry(txn, payment, timings, started, loaded, started + self.budget_ms / 2000)
            stored = self.poll(pending)
            return pending if stored is None else _retry_answer(stored, payment, timings, started)
        return await self._decide(
            txn, payment, values, degraded, timings, started, loaded, store=not txn.test, blocking=blocking
        )

    def poll(self, pending: PendingRetry) -> IdempotencyRecord | None:
        """The idempotency record a pending retry waits for, or None (not logged yet, or Redis failing)."""
        try:
            return self.log.record(pending.txn.transaction_id)
        except (redis.RedisError, OSError):
            return None

    def resume(self, pending: PendingRetry, stored: IdempotencyRecord | None) -> Answer:
        """The answer to a pending retry once its wait is over: the first answer when its record came.

        Otherwise the first request's state already counts this payment, so deciding on that state
        would be wrong: the retry is decided without state, degraded, and logged. The first request's
        log call failed (its answer said so), or it is still running: the log keeps one decision per
        transaction, so whichever is stored first answers both, and a payment the features counted
        is never left out of the log (a retry used to log nothing, so a first call that timed out
        left its payment counted and never logged)."""
        if stored is not None:
            return _retry_answer(stored, pending.payment, pending.timings, pending.started)
        values = self.features.without_state(pending.payment)
        degraded = ["retry: the first request's decision is not stored yet"]
        decided = self._decide(
            pending.txn,
            pending.payment,
            values,
            degraded,
            pending.timings,
            pending.started,
            pending.loaded,
            store=True,
            blocking=True,  # rare (a retry that waited in vain): its one log call may block
        )
        return _run_blocking(decided)

    async def _decide(
        self,
        txn: Transaction,
        payment: dict[str, Any],
        values: np.ndarray,
        degraded: list[str],
        timings: Timings,
        started: float,
        loaded: Loaded,
        store: bool,
        blocking: bool,
    ) -> Answer:
        """Model, rules, reasons, the decision record and its log entry, from the payment's features."""
        t = time.perf_counter()
        score: float | None = None
        if loaded.model is None:
            degraded.append("model: not loaded")
        else:
            score = loaded.model.predict_one(values)
        timings["model_ms"] = _ms(t)

        t = time.perf_counter()
        risk_score = loaded.model.risk_score(score) if loaded.model is not None else None
        env = _rule_env(payment, self.features.feature_names, values, loaded.rules)
        # Without every signal the fail policy stands in for the score bands; rules still apply.
        outcome = loaded.rules.decide(
            None if degraded else score,
            env,
            txn.merchant_id,
            no_score_verdict=self.fail_policy,
            risk_score=None if degraded else risk_score,
        )
        verdict = outcome.verdict or self.fail_policy
        timings["rules_ms"] = _ms(t)

        reasons: Reasons = {
            "rules": [_fired(f) for f in outcome.fired],
            "shadow_rules": [_fired(f) for f in outcome.shadow_fired],
            "skipped_rules": list(outcome.skipped),
            "model": [],
        }
        band, threshold = outcome.band_verdict, outcome.band_threshold
        # the band as a reason whenever it flagged a payment that is not allowed (docs/api.md)
        if (
            verdict != "allow"
            and band is not None
            and band != "allow"
            and threshold is not None
            and score is not None
            and risk_score is not None
        ):
            reasons["band"] = {
                "band": band,
                "code": _BAND_CODES[band],
                "scale": loaded.rules.scale,
                "threshold": threshold,
                "score": score,
                "risk_score": risk_score,
            }
        if outcome.authenticated_fallback is not None:
            reasons["authenticated_fallback"] = outcome.authenticated_fallback
        if degraded:
            reasons["fail_policy"] = self.fail_policy
        # The model's top contributions of a flagged payment are not computed here but right after
        # the answer (`explain_stored`): TreeSHAP costs ~1.5 ms, and on the path it raised the p99
        # at 500 payments/s from 2.7-2.8 to 3.7 ms and tipped 1,000/s into queueing (docs/api.md).

        decision: DecisionEntry = {
            "transaction_id": txn.transaction_id,
            "verdict": verdict,
            "score": score,
            "risk_score": risk_score,
            "reasons": reasons,
            "model_version": loaded.model.version if loaded.model else None,
            "rules_version": loaded.rules.version,
            "degraded": degraded,
            "timestamp": txn.timestamp.isoformat(),
            "decided_at": datetime.now(UTC).isoformat(),
            "payment": payment_record(payment),
            "amount": txn.amount,
            "currency": txn.currency,
            # by position in the named list, not by name: the buffer entry is 1.4 KB instead of
            # 3.6 (107 features), and NaN (missing) is logged as null
            "feature_list": self._feature_list,
            "features": values.tolist(),
            "timings": timings,  # total_ms is added below, log_ms once the decision is logged
            "test": txn.test,
        }
        if loaded.shadow is not None and _in_share(txn.transaction_id, self.shadow_share):
            decision["shadow"] = {
                "model_version": loaded.shadow.version,
                "score": loaded.shadow.predict_one(values),
            }
        timings["total_ms"] = _ms(started)

        t = time.perf_counter()
        logged = await self._log(decision, blocking) if store else "logged"
        timings["log_ms"] = _ms(t)
        if isinstance(logged, dict):
            # a concurrent retry logged its decision first: one answer per payment
            return _retry_answer(logged, payment, timings, started)
        if logged == "buffer full":
            # answered, and a retry gets the same answer, but there is no audit record: say so
            decision["degraded"].append(BUFFER_FULL)
            if self.metrics is not None:
                self.metrics.buffer_full.labels("decisions").inc()
        elif logged == "not replicated":
            # logged on the primary, not yet confirmed by its replicas: a failover could lose it
            decision["degraded"].append(NOT_REPLICATED)
        elif logged == "not stored":
            # no audit record and no idempotency record: the answer must not claim to be complete
            decision["degraded"].append("decision log: not stored")
        if txn.test:
            return decision  # the live figures count live payments only
        if self.metrics is not None:
            self.metrics.observe(decision, timings)
        return decision

    def needs_explaining(self, answer: Answer) -> TypeGuard[DecisionEntry]:
        """Whether `explain_stored` should run for a payment just answered: a new decision (not a
        retry's answer, not a test), a challenge, review or block scored with every signal."""
        return (
            answer["verdict"] != "allow"
            and not answer["degraded"]
            and not answer["test"]
            and answer["score"] is not None
            and "features" in answer  # only a new decision carries them
        )

    def explain_stored(self, decision: DecisionEntry) -> None:
        """Compute a flagged decision's top contributions and store them with it.

        Runs after the answer, in a thread (the API's background task): the model releases the GIL
        and has buffers of its own for this, so the worker goes on scoring meanwhile. They are
        logged as a second record of the transaction, which the sink stores beside the decision. A
        model swapped in the meantime, a full buffer or a Redis that cannot log leaves the decision
        without them (`GET /v1/decisions/{id}` then computes them on read when it can).
        """
        started = time.perf_counter()
        try:
            records = self.explain(decision)
            model_version = decision["model_version"]
            if records and model_version is not None:
                self.log.log_contributions(
                    {
                        "transaction_id": decision["transaction_id"],
                        "timestamp": decision["timestamp"],
                        "model_version": model_version,
                        "contributions": records,
                    }
                )
        except LookupError:
            return
        except (redis.RedisError, OSError):
            if self.metrics is not None:
                self.metrics.redis_errors.inc()
            return
        if self.metrics is not None:
            self.metrics.stage.labels("explain").observe(time.perf_counter() - started)

    def explain(self, decision: Decision | DecisionEntry | JSONObject) -> list[ContributionRecord]:
        """The features that pushed a decision's score most (a new one, or one read back with its
        features by name), by the model that decided it.

        Empty when the decision had no score or was degraded; raises LookupError when the model
        that decided is no longer the one loaded (its contributions cannot be recomputed here).
        """
        model = self.loaded.model
        if decision.get("score") is None or decision.get("degraded"):
            return []
        if model is None or model.version != decision.get("model_version"):
            raise LookupError(f"model {decision.get('model_version')} is no longer loaded")
        stored = decision["features"]
        if isinstance(stored, list):  # a new decision: in the order of this scorer's feature list
            stored = dict(zip(self.features.feature_names, stored, strict=True))
        row = np.array(
            [np.nan if stored.get(n) is None else stored[n] for n in model.feature_names], dtype=float
        )
        return _contribution_records(model, row)

    async def _features(
        self, payment: dict[str, Any], record: bool, blocking: bool
    ) -> tuple[np.ndarray, bool, str | None]:
        if not self.breaker.open:
            try:
                if blocking:
                    result = self.features.score(payment, record=record)
                else:
                    result = await self.features.ascore(payment, record=record)
                self.breaker.reset()
                return result.values, result.duplicate, None
            except (redis.RedisError, OSError) as exc:
                self.breaker.trip()
                if self.metrics is not None:
                    self.metrics.redis_errors.inc()
                reason = f"features: redis unavailable ({type(exc).__name__})"
        else:
            reason = "features: redis unavailable (circuit open)"
        return self.features.without_state(payment), False, reason

    async def _log(self, decision: DecisionEntry, blocking: bool) -> IdempotencyRecord | LogOutcome:
        """Log a new decision: the earlier idempotency record when a concurrent request logged the
        transaction first, else whether the decision entered the buffer, found it full, or could not
        be stored at all (Redis failing)."""
        if self.breaker.open:
            return "not stored"
        try:
            record = idempotency_record(decision)
            if blocking:
                return self.log.put(decision, record)
            return await self.log.aput(decision, record)
        except (redis.RedisError, OSError):
            self.breaker.trip()
            if self.metrics is not None:
                self.metrics.redis_errors.inc()
            return "not stored"


T = TypeVar("T")


def _run_blocking(flow: Coroutine[None, None, T]) -> T:
    """Run a scoring flow whose Redis calls all block: it never suspends, so its first step ends it."""
    try:
        flow.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    flow.close()
    raise RuntimeError("a blocking scoring flow suspended: it awaited a call that does not block")


#: what logging a new decision came to (`Scorer._log`): the log's own outcomes, or Redis failing
LogOutcome = PutResult | Literal["not stored"]


class IdempotencyConflict(Exception):
    """A transaction id already decided, sent again with another body: the API answers 409, naming
    the fields that differ once it has read the whole decision (`changed_fields`)."""

    def __init__(self, record: IdempotencyRecord, payment: Mapping[str, Any]) -> None:
        super().__init__(
            f"transaction {record['transaction_id']!r} was already scored with another body: a retry "
            "must resend the same body; a new payment needs a new transaction_id"
        )
        self.record = record
        self.payment = payment


def idempotency_record(decision: DecisionEntry) -> IdempotencyRecord:
    """What Redis keeps of a new decision for the dedupe horizon (its stream id is set by the log)."""
    return {
        "transaction_id": decision["transaction_id"],
        "verdict": decision["verdict"],
        "score": decision["score"],
        "risk_score": decision["risk_score"],
        "reasons": decision["reasons"],
        "model_version": decision["model_version"],
        "rules_version": decision["rules_version"],
        "degraded": decision["degraded"],
        "timestamp": decision["timestamp"],
        "payment_sha": payment_digest(_comparable(decision)),
        "entities": entities_of(decision["payment"]),
        "stream_id": None,
    }


def _retry_answer(
    record: IdempotencyRecord, payment: Mapping[str, Any], timings: Timings, started: float
) -> Answer:
    """The answer to a retry: the first answer, from its idempotency record, with this request's
    timings; `IdempotencyConflict` when the payment is not the one decided."""
    if payment_digest(_comparable_payment(payment)) != record["payment_sha"]:
        raise IdempotencyConflict(record, payment)
    timings["total_ms"] = _ms(started)
    return {
        "transaction_id": record["transaction_id"],
        "verdict": record["verdict"],
        "score": record["score"],
        "risk_score": record["risk_score"],
        "reasons": record["reasons"],
        "model_version": record["model_version"],
        "rules_version": record["rules_version"],
        "degraded": answered(record),
        "timings": timings,
        "test": False,
    }


# Kept at the decision's top level, so not repeated in its `payment`.
_TOP_LEVEL = frozenset({"transaction_id", "timestamp", "amount", "currency", "test"})


def payment_record(payment: Mapping[str, Any]) -> PaymentRecord:
    """The payment as validated (card tokenized, no raw PAN), without the decision's top-level keys."""
    return {k: v for k, v in payment.items() if v is not None and k not in _TOP_LEVEL}


def entities_of(payment: Mapping[str, object]) -> dict[str, str]:
    """The payment's entity fields (`ENTITY_FIELDS`) it was sent with: what feedback about it needs."""
    return {f: v for f in ENTITY_FIELDS if isinstance(v := payment.get(f), str)}


def _comparable(decision: Decision | DecisionEntry) -> dict[str, object]:
    """A decided payment's fields, as `_comparable_payment` gives a validated one's."""
    return {
        **decision["payment"],
        "amount": decision["amount"],
        "currency": decision["currency"],
        "timestamp": decision["timestamp"],
    }


def _comparable_payment(payment: Mapping[str, Any]) -> dict[str, object]:
    """A validated payment's fields as a decision keeps them: what makes two requests the same payment.

    Both sides are validated payments, so formatting that validation normalizes (case of an email,
    blanks around an id, the offset of a timestamp) is not a change.
    """
    return {
        **payment_record(payment),
        "amount": payment["amount"],
        "currency": payment["currency"],
        "timestamp": payment["timestamp"].isoformat(),
    }


def payment_digest(fields: Mapping[str, object]) -> str:
    """A short digest of a payment's comparable fields (keys sorted): equal for the same payment."""
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.blake2b(canonical, digest_size=16).digest()).decode()[:22]


def changed_fields(decided: Decision, payment: Mapping[str, Any]) -> list[str]:
    """The fields in which a retried payment differs from the decided one (names only, never values)."""
    before, sent = _comparable(decided), _comparable_payment(payment)
    return sorted(k for k in sent.keys() | before.keys() if sent.get(k) != before.get(k))


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _fired(f: FiredRule) -> FiredRuleRecord:
    rule_id, action, reason = f
    return {"rule": rule_id, "action": action, "reason": reason}


def _rule_env(
    payment: dict[str, Any], names: list[str], values: np.ndarray, rules: RuleSet
) -> dict[str, Any]:
    # request fields win over same-named payment features: rules read channel == 'ecom', not a code
    env = dict(payment)
    for name, value in zip(names, values.tolist(), strict=True):
        if name not in env:
            env[name] = None if value != value else value
    # the metadata keys the rule set declares, as metadata.KEY (absent or mistyped: missing)
    if metadata := payment.get("metadata"):
        env.update(rules.metadata_env(metadata))
    return env


#: the code of each score band's reason (engine.decision_record.BandReason)
_BAND_CODES: Final[Mapping[Verdict, BandCode]] = {
    "challenge": "SCORE_BAND_CHALLENGE",
    "review": "SCORE_BAND_REVIEW",
    "block": "SCORE_BAND_BLOCK",
}


def _contribution_records(model: ModelRuntime, row: np.ndarray) -> list[ContributionRecord]:
    """The model's top contributions for a row, as the decision carries them (NaN value: null)."""
    return [
        {
            "feature": c.feature,
            "value": None if c.value != c.value else c.value,
            "contribution": c.contribution,
        }
        for c in model.contributions(row)
    ]


def _in_share(txid: str, share: float) -> bool:
    """Deterministic traffic split by transaction id (the same payment always lands the same way)."""
    return zlib.crc32(txid.encode()) % 10_000 < share * 10_000
