"""The verdict vocabulary: what the engine answers for a payment, how a score falls into a band, and
the 0-100 risk score that risk staff read.

One home for it, imported by the service (engine/api/, engine/settings.py), the rule engine
(engine/rules) and the training tools (training/scoring.py, training/backtest.py). It sits at the
bottom of the import graph and imports nothing heavy at load time (engine.settings and the CLI
import it), so numpy is only imported when an array function runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, get_args

if TYPE_CHECKING:
    import numpy as np

#: allow: authorize. challenge: ask the payer for a second factor (3-D Secure or the provider's
#: own), then authorize. review: hold the payment for a person. block: decline.
Verdict: TypeAlias = Literal["allow", "challenge", "review", "block"]
#: every verdict, from the mildest to the most severe (docs/rules.md, "Verdict precedence")
VERDICTS: Final[tuple[Verdict, ...]] = get_args(Verdict)
#: a verdict's rank in VERDICTS: the larger, the more severe (the codes :func:`band` returns)
SEVERITY: Final[Mapping[Verdict, int]] = {v: i for i, v in enumerate(VERDICTS)}

#: the risk score of the model's own review and block thresholds (docs/rules.md, "Risk score")
REVIEW_RISK: Final = 50
BLOCK_RISK: Final = 80


def band(
    scores: np.ndarray[Any, Any],
    review: float | np.ndarray[Any, Any],
    block: float | np.ndarray[Any, Any],
    challenge: float | np.ndarray[Any, Any] | None = None,
) -> np.ndarray[Any, Any]:
    """The score band of each score, as its SEVERITY code (an index into VERDICTS).

    3 (block) at score >= block, else 2 (review) at score >= review, else 1 (challenge) at score
    >= challenge when a challenge threshold is given (NaN: no challenge band for that row), else
    0 (allow). The thresholds are one number each or one per score (per-merchant bands). A NaN
    score is in no band and gets 0: callers that treat a missing score otherwise overwrite those
    rows. ``antifraud.engine.rules.ScoreBands.verdict`` is the same rule for one payment, on the
    service's hot path.
    """
    import numpy as np  # on use: see the module docstring

    low = 0 if challenge is None else np.where(scores >= challenge, SEVERITY["challenge"], 0)
    return np.where(scores >= block, SEVERITY["block"], np.where(scores >= review, SEVERITY["review"], low))


@dataclass(frozen=True)
class RiskScale:
    """The map from a model's score (0-1) to the risk score (an integer 0-100).

    Monotone and piecewise linear through four anchors: score 0 -> 0, the model's review threshold
    -> REVIEW_RISK (50), its block threshold -> BLOCK_RISK (80), score 1 -> 100, floored to an
    integer. The thresholds are the ones training set at fixed false-positive rates and recorded
    in the model's metadata.json, so a risk score means the same share of legitimate traffic in
    every model version, and rule-set bands written on this scale need no edit after a retrain.
    Floored, so that ``risk_score >= 50`` holds exactly when ``score >= review``.
    """

    review: float
    block: float

    def __post_init__(self) -> None:
        if not 0.0 < self.review < self.block < 1.0:
            raise ValueError(
                f"risk scale anchors need 0 < review < block < 1, got {self.review}, {self.block}"
            )

    @classmethod
    def from_thresholds(cls, thresholds: Mapping[str, Any] | None) -> RiskScale:
        """The scale anchored on a model's recorded thresholds ({review, block}); IDENTITY (score x 100,
        floored) when they are absent or unusable (not 0 < review < block < 1)."""
        try:
            review = float((thresholds or {})["review"])
            block = float((thresholds or {})["block"])
        except (KeyError, TypeError, ValueError):
            return IDENTITY
        if not (math.isfinite(review) and math.isfinite(block) and 0.0 < review < block < 1.0):
            return IDENTITY
        return cls(review, block)

    def of(self, score: float | None) -> int | None:
        """The risk score of one model score; None when the score is (None or NaN)."""
        if score is None or score != score:
            return None
        r, b = self.review, self.block
        # each segment is capped below the next anchor: a score one ulp under a threshold must not
        # round up onto it (risk >= 80 exactly when score >= block)
        if score >= b:
            return min(100, math.floor(BLOCK_RISK + (100 - BLOCK_RISK) * (score - b) / (1.0 - b)))
        if score >= r:
            return min(
                BLOCK_RISK - 1, math.floor(REVIEW_RISK + (BLOCK_RISK - REVIEW_RISK) * (score - r) / (b - r))
            )
        return min(REVIEW_RISK - 1, max(0, math.floor(REVIEW_RISK * score / r)))

    def of_array(self, scores: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """:meth:`of` over an array, as float64 (NaN where the score is NaN, else whole numbers)."""
        import numpy as np

        s = np.asarray(scores, dtype=np.float64)
        r, b = self.review, self.block
        # the same three formulas and caps as :meth:`of`, term for term: both give the same integers
        with np.errstate(invalid="ignore"):
            top = np.minimum(100, np.floor(BLOCK_RISK + (100 - BLOCK_RISK) * (s - b) / (1.0 - b)))
            mid = np.minimum(
                BLOCK_RISK - 1, np.floor(REVIEW_RISK + (BLOCK_RISK - REVIEW_RISK) * (s - r) / (b - r))
            )
            low = np.clip(np.floor(REVIEW_RISK * s / r), 0, REVIEW_RISK - 1)
            out = np.where(s >= b, top, np.where(s >= r, mid, low)).astype(np.float64)
        out[np.isnan(s)] = np.nan
        return out

    def score_at(self, risk: float) -> float:
        """The lowest score whose (unfloored) risk is ``risk``: the inverse map, for reports."""
        r, b = self.review, self.block
        if risk >= BLOCK_RISK:
            return b + (risk - BLOCK_RISK) * (1.0 - b) / (100 - BLOCK_RISK)
        if risk >= REVIEW_RISK:
            return r + (risk - REVIEW_RISK) * (b - r) / (BLOCK_RISK - REVIEW_RISK)
        return risk * r / REVIEW_RISK


#: the scale of a model without recorded thresholds: score x 100, floored
IDENTITY: Final = RiskScale(REVIEW_RISK / 100, BLOCK_RISK / 100)
