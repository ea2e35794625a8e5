"""Request bodies shared by the service tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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
