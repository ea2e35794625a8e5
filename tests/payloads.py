"""Request bodies shared by the service tests."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from antifraud.engine.decision_record import DecisionEntry, IdempotencyRecord
from antifraud.engine.decisions import DecisionLog
from antifraud.engine.pipeline import idempotency_record

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def score_request(txid: str = "tx-1", minute: float = 0, **overrides: Any) -> dict[str, Any]:
    """A `POST /v1/score` body at T0 + `minute`; an override of None drops the field."""
    body: dict[str, Any] = {
        "transaction_id": txid,
        "timestamp": (T0 + timedelta(minutes=minute)).isoformat(),
        "card_id": "card_a",
        "merchant_id": "m_1",
        "amount": 42.5,
        "currency": "EUR",
        "channel": "ecom",
        "ip_country": "FR",
        "card_country": "FR",
        "device_id": "dev_1",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def logged_decision(
    txid: str, i: int, features: dict[str, float | None] | None = None, **overrides: Any
) -> dict[str, Any]:
    """A decision as the pipeline logs it, at T0 + `i` seconds, for tests that write the log directly
    (the sink's, the store's and the export's); an override replaces a key."""
    decision: dict[str, Any] = {
        "transaction_id": txid,
        "verdict": ("allow", "review", "block")[i % 3],
        "score": (i % 100) / 100,
        "risk_score": i % 100,
        "reasons": {"rules": [], "shadow_rules": [], "skipped_rules": [], "model": []},
        "model_version": "m-1",
        "rules_version": "r-1",
        "degraded": [],
        "timestamp": (T0 + timedelta(seconds=i)).isoformat(),
        "decided_at": (T0 + timedelta(seconds=i, milliseconds=3)).isoformat(),
        "payment": {"card_id": f"card_{i % 7}", "merchant_id": "m_1"},
        "amount": float(i),
        "currency": "EUR",
        "features": features if features is not None else {"amount": float(i), "card_count_24h": i % 5},
        "timings": {"total_ms": 1.5},
        "test": False,
    }
    decision.update(overrides)
    return decision


def logged_contributions(txid: str, i: int, model_version: str = "m-1", **overrides: Any) -> dict[str, Any]:
    """The model contributions of `logged_decision(txid, i)` (a `ContributionsRecord`), as the pipeline
    logs them after the answer: the payment's time, the model that decided; an override replaces a key."""
    record: dict[str, Any] = {
        "transaction_id": txid,
        "timestamp": (T0 + timedelta(seconds=i)).isoformat(),
        "model_version": model_version,
        "contributions": [
            {"feature": "amount", "value": float(i), "contribution": 0.5 + i / 1000},
            {"feature": "card_count_24h", "value": None, "contribution": -0.25},
        ],
    }
    record.update(overrides)
    return record


def log_decision(log: DecisionLog, decision: Mapping[str, Any]) -> IdempotencyRecord | str:
    """Log a decision (its features by name, as read back) as the scoring path does: its features as
    an array of a named list, its idempotency record and its buffer entry, in one step
    (`DecisionLog.put`); returns what `put` returns."""
    return log.put(*entry_and_record(log, decision))


def entry_and_record(
    log: DecisionLog, decision: Mapping[str, Any]
) -> tuple[DecisionEntry, IdempotencyRecord]:
    """A decision with its features by name as the scoring path hands it to `DecisionLog.put`."""
    features: dict[str, float | None] = decision["features"]
    entry = {
        **decision,
        "feature_list": log.feature_list(list(features)),
        "features": list(features.values()),
    }
    logged = cast(DecisionEntry, entry)
    return logged, idempotency_record(logged)
