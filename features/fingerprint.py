"""Fingerprints: the numbers the feature state keeps instead of transaction ids and field values.

Computed here, once per payment, and passed to Redis as numbers (docs/feature-state.md, section 2):
the script compares numbers and never hashes. The offline executor keys field values by the same
function, so both executors see the same values, collisions included.

SHA-1 because it is the one hash Redis's Lua can also compute (`redis.sha1hex`): score.lua does so
only to take over, once per entity, the ids and values the layout before fingerprints kept as text.
"""

from __future__ import annotations

import hashlib

TX_BITS = 53  # a transaction id: the most a Lua number (a double) holds exactly
VALUE_BITS = 32  # a field value of a distinct count or a novelty flag


def fingerprint(text: str, bits: int) -> int:
    """The first `bits` bits (at most 53) of the SHA-1 of `text` (UTF-8), as an integer."""
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - bits)
