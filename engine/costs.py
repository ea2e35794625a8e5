"""The cost of a set of verdicts, shared by training's reports and the console's rule tester.

    cost = amount of fraud allowed + review_cost x payments reviewed
           + challenge_cost x payments challenged
           + block_cost_factor x amount of legitimate payments blocked

(a reviewed fraud is assumed caught, a challenged fraud stopped by the second factor the fraudster
lacks, a blocked fraud costs nothing). It lives in the shared core because the service may not
import `antifraud.training`; docs/training.md defines each part.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from antifraud.engine.verdicts import VERDICTS

__all__ = ["CostParameters", "expected_cost", "verdict_mix"]


class CostParameters(TypedDict):
    """The cost settings an expected cost used (`TrainConfig.cost_parameters`)."""

    review_cost: float
    block_cost_factor: float
    challenge_cost: float


def expected_cost(
    labels: np.ndarray,
    verdict: np.ndarray,
    amounts: np.ndarray,
    review_cost: float,
    block_cost_factor: float,
    challenge_cost: float,
) -> dict[str, float]:
    """The cost formula of the module docstring, with its four parts.

    Keys: total, fraud_allowed, reviews, challenges, legit_blocked, and allow_everything (the cost
    of no score).
    """
    fraud = np.asarray(labels) == 1
    amounts = np.asarray(amounts, dtype=float)
    missed = float(amounts[fraud & (verdict == "allow")].sum())
    reviews = float(review_cost * (verdict == "review").sum())
    challenges = float(challenge_cost * (verdict == "challenge").sum())
    blocked_good = float(block_cost_factor * amounts[~fraud & (verdict == "block")].sum())
    return {
        "total": missed + reviews + challenges + blocked_good,
        "fraud_allowed": missed,
        "reviews": reviews,
        "challenges": challenges,
        "legit_blocked": blocked_good,
        "allow_everything": float(amounts[fraud].sum()),
    }


def verdict_mix(labels: np.ndarray, verdict: np.ndarray, amounts: np.ndarray) -> dict[str, dict[str, float]]:
    """Per verdict: payments, their share, frauds among them and fraud amount."""
    fraud = np.asarray(labels) == 1
    amounts = np.asarray(amounts, dtype=float)
    mix: dict[str, dict[str, float]] = {}
    for v in VERDICTS:
        sel = verdict == v
        mix[v] = {
            "payments": int(sel.sum()),
            "share": float(sel.mean()) if len(sel) else 0.0,
            "frauds": int((sel & fraud).sum()),
            "fraud_amount": float(amounts[sel & fraud].sum()),
        }
    return mix
