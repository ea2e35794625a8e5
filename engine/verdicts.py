"""The verdict vocabulary: what the engine answers for a payment, and how a score falls into a band.

One home for it, imported by the service (engine/api/, engine/settings.py), the rule engine
(engine/rules) and the training tools (training/scoring.py, training/backtest.py). It sits at the
bottom of the import graph and imports nothing heavy at load time (engine.settings and the CLI
import it), so numpy is only imported when :func:`band` runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, get_args

if TYPE_CHECKING:
    import numpy as np

Verdict: TypeAlias = Literal["allow", "review", "block"]
#: every verdict, from the mildest to the most severe
VERDICTS: Final[tuple[Verdict, ...]] = get_args(Verdict)
#: a verdict's rank in VERDICTS: the larger, the more severe (the codes :func:`band` returns)
SEVERITY: Final[Mapping[Verdict, int]] = {v: i for i, v in enumerate(VERDICTS)}


def band(
    scores: np.ndarray[Any, Any],
    review: float | np.ndarray[Any, Any],
    block: float | np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    """The score band of each score, as its SEVERITY code (an index into VERDICTS).

    2 (block) at score >= block, else 1 (review) at score >= review, else 0 (allow). The
    thresholds are one number each or one per score (per-merchant bands). A NaN score is in no
    band and gets 0: callers that treat a missing score otherwise overwrite those rows.
    ``antifraud.engine.rules.ScoreBands.verdict`` is the same rule for one payment, on the service's hot path.
    """
    import numpy as np  # on use: see the module docstring

    return np.where(scores >= block, 2, np.where(scores >= review, 1, 0))
