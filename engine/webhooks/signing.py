"""Webhook signatures: HMAC-SHA256 over a timestamp and the body (docs/console.md, "Webhooks").

Each POST carries `Antifraud-Signature: t=<unix seconds>,v1=<hex>`, the hex being
HMAC-SHA256(secret, f"{t}." + body), with one `v1=` per secret while a secret is rotated. A receiver
checks it with `verify`: the timestamp within `tolerance_s` of its clock (an old request replayed is
refused) and one `v1` equal, in constant time, to its own computation with one of its secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Final

#: the headers of every delivery
SIGNATURE_HEADER: Final = "Antifraud-Signature"
EVENT_HEADER: Final = "Antifraud-Event"
DELIVERY_HEADER: Final = "Antifraud-Delivery"
#: how far a signature's time may be from the receiver's clock by default (seconds)
TOLERANCE_S: Final = 300


def _secrets(secrets: str | Sequence[str]) -> list[str]:
    return [secrets] if isinstance(secrets, str) else list(secrets)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `f"{timestamp}." + body` under `secret`."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secrets: str | Sequence[str], body: bytes, timestamp: int | None = None) -> str:
    """The `Antifraud-Signature` header of `body`: the time (now unless given), then one `v1=` per
    secret."""
    t = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={t}", *(f"v1={signature(s, t, body)}" for s in _secrets(secrets))])


def verify(
    secrets: str | Sequence[str],
    header: str,
    body: bytes,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """The receiver's check: whether `header` (the `Antifraud-Signature` value) signs `body` with one of
    `secrets`, at a time within `tolerance_s` of `now` (this host's clock unless given). `body` must be
    the request's bytes as received, not a re-serialization."""
    timestamps: list[int] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamps.append(int(value))
        elif key == "v1":
            signatures.append(value)
    if len(timestamps) != 1 or not signatures:
        return False
    t = timestamps[0]
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = [signature(s, t, body) for s in _secrets(secrets)]
    # every pair compared, in constant time each: which secret matched is not leaked by timing
    return any([hmac.compare_digest(e, s) for e in expected for s in signatures])
