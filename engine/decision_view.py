"""A decision as people read it: the stored decision, its feedback, and the model's contributions.

`GET /v1/decisions/{id}` and the console's decision page both call `explained`, so they show one
record. Every read goes through `DecisionReader` (the buffer, then the store). The caller's merchant
scope is checked here: another merchant's decision is `NotFound`, like one never stored, so a scoped
caller cannot learn that a transaction id exists elsewhere.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from antifraud.engine.decision_reads import DecisionReader
from antifraud.engine.pipeline import Scorer


class NotFound(LookupError):
    """No decision is stored for the transaction, or it is another merchant's."""


def explained(
    reader: DecisionReader, scorer: Scorer, transaction_id: str, merchants: Collection[str] | None
) -> dict[str, Any]:
    """The decision with its feedback and the model's contributions.

    `merchants`: the caller's merchants (None: every merchant). Raises `NotFound`; the reader's
    `StoreUnavailable` and Redis errors pass through (the caller answers "retry later").
    A flagged decision's contributions are logged after its answer: until the store holds them (and
    for the others) they are computed on read by the model that decided, or a note says why not.
    """
    decided = reader.decision(transaction_id)
    if decided is None or (merchants is not None and str(decided["payment"]["merchant_id"]) not in merchants):
        raise NotFound(f"no decision stored for transaction {transaction_id!r}")
    found: dict[str, Any] = {**decided, "feedback": reader.feedback_for(transaction_id)}
    if not found["reasons"].get("model"):
        try:
            found["reasons"] = {**found["reasons"], "model": scorer.explain(found)}
        except LookupError as exc:
            found["reasons"] = {**found["reasons"], "model_note": f"contributions unavailable: {exc}"}
    return found
