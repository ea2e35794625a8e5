"""Online/offline consistency: the features a decision was served against the same features
recomputed offline from the event history, as Chronon's consistency job compares its logged
features with a backfill.

For a seeded sample of logged decisions, the offline executor (`features/offline.py`, the one the
parity tests hold to the online executor, `tests/test_feature_parity.py`) computes every feature
point-in-time over the history (payments and their feedback events up to the sample's last payment),
and each feature gets the share of sampled decisions whose served value differs and the largest
difference. Both executors agree to 1e-9 on the same stream of events, so a difference means the
service saw another stream or computed otherwise: a Redis state lost or filled from another history,
feedback that did not reach the state, a spec or code change between the service and training, a
client that sends a field in another form.

The history must be the one the service's state was built from: every payment and feedback event
since the oldest any window looks back to (180 days for a card's age). `antifraud monitor --history
FILE` gives it; docs/monitoring.md explains why the decision store alone is usually not enough.
Degraded decisions are left out of the sample: their stateful features were missing by design, and
the degraded share is measured on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from antifraud.engine.monitoring.flags import Flag
from antifraud.features.offline import OfflineFeatures
from antifraud.features.spec import FeatureSpec, load_spec
from antifraud.training.history import load_history
from antifraud.training.monitor.decisions import read_decisions
from antifraud.training.monitor.report import MonitorReport

__all__ = ["EXAMPLES", "SAMPLE", "SEED", "TOLERANCE", "ConsistencyError", "FeatureSkew", "Logged", "check"]

TOLERANCE = 1e-9  # absolute and relative: what the parity tests allow between the two executors
EXAMPLES = 3  # transaction ids kept per skewed feature, to look the decisions up
# `antifraud monitor --history`: decisions recomputed (one offline pass over the history costs the
# same for 1 or 10,000 of them; a share of 1 % is then measured to about +-0.2 %) and the draw's seed
SAMPLE = 10_000
SEED = 17


class ConsistencyError(ValueError):
    """No logged decision can be compared: none is in the history, or none has a feature of the spec."""


class Logged(Protocol):
    """Logged decisions as plain arrays (`antifraud.training.monitor.decisions.Decisions`)."""

    @property
    def transaction_ids(self) -> np.ndarray: ...  # str

    @property
    def degraded(self) -> np.ndarray: ...  # bool: some signal was missing when it was scored

    @property
    def features(self) -> Mapping[str, np.ndarray]: ...  # by feature name, float, NaN missing


@dataclass(frozen=True)
class FeatureSkew:
    """One feature's online/offline mismatches over the sampled decisions."""

    feature: str
    checked: int  # sampled decisions compared on this feature
    mismatches: int  # served and recomputed differ beyond TOLERANCE, or one of them is missing
    share: float  # mismatches / checked (0.0 when nothing was checked)
    max_difference: float | None  # the largest |served - recomputed| with both present; None: no such pair
    served_missing: int  # mismatches where the served value was missing and the recomputed one not
    recomputed_missing: int  # mismatches the other way round
    examples: tuple[str, ...]  # transaction ids of up to EXAMPLES mismatches, the largest difference first

    def alert(self, skew_share: float) -> bool:
        """Whether the mismatch share is above the threshold (`Thresholds.skew_share`)."""
        return self.share > skew_share


def check(
    decisions: Logged, history: pd.DataFrame, sample: int, seed: int, spec: FeatureSpec | None = None
) -> list[FeatureSkew]:
    """Each feature of the spec that the decisions logged, in the spec's order, compared on at most
    `sample` decisions drawn with `seed` among those whose payment is in `history` (time-sorted, as
    `load_history` gives it) and that were not degraded. Raises ConsistencyError when none is."""
    offline = OfflineFeatures(spec)
    names = [n for n in offline.feature_names if n in decisions.features]
    if not names:
        raise ConsistencyError("the decisions logged none of the feature spec's features")
    ids = np.asarray(decisions.transaction_ids, dtype=object)
    position = pd.Index(history["transaction_id"]).get_indexer(ids)  # -1: not in the history
    eligible = np.flatnonzero((position >= 0) & ~np.asarray(decisions.degraded, dtype=bool))
    if eligible.size == 0:
        raise ConsistencyError(
            f"none of the {len(ids):,} decisions is both in the history ({len(history):,} payments) and "
            "scored with every signal: give the history the service's state was built from"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(eligible, size=min(sample, eligible.size), replace=False))
    rows = position[chosen]
    # features only look back: the history after the sample's last payment changes nothing
    recomputed = offline.transform(history.iloc[: int(rows.max()) + 1])
    return [
        _compare(
            name,
            np.asarray(decisions.features[name], dtype=float)[chosen],
            recomputed[name].to_numpy(dtype=float)[rows],
            ids[chosen],
        )
        for name in names
    ]


def _compare(name: str, served: np.ndarray, recomputed: np.ndarray, ids: np.ndarray) -> FeatureSkew:
    served_nan, recomputed_nan = np.isnan(served), np.isnan(recomputed)
    both = ~served_nan & ~recomputed_nan
    difference = np.where(both, np.abs(served - recomputed), 0.0)
    differ = both & (difference > TOLERANCE + TOLERANCE * np.abs(np.where(both, recomputed, 0.0)))
    one_missing = served_nan != recomputed_nan
    bad = differ | one_missing
    # the largest differences first; a value missing on one side counts as the largest of all
    order = np.flatnonzero(bad)[np.argsort(-np.where(one_missing, np.inf, difference)[bad], kind="stable")]
    return FeatureSkew(
        feature=name,
        checked=int(served.size),
        mismatches=int(bad.sum()),
        share=float(bad.mean()) if served.size else 0.0,
        max_difference=float(difference[differ].max()) if differ.any() else None,
        served_missing=int((served_nan & ~recomputed_nan).sum()),
        recomputed_missing=int((recomputed_nan & ~served_nan).sum()),
        examples=tuple(str(i) for i in ids[order[:EXAMPLES]]),
    )


def add_to_report(
    report: MonitorReport,
    decisions: Path,
    history: Path,
    start: datetime | None,
    end: datetime | None,
    sample: int = SAMPLE,
    seed: int = SEED,
) -> list[FeatureSkew]:
    """`antifraud monitor --history`: `check` the decisions of [start, end) in the export `decisions`
    against the history file, then put the result in the report: its `consistency` section, a
    `skew_share` alert per feature above `Thresholds.skew_share`, and a note. Returns the skews."""
    read = read_decisions(decisions, load_spec().feature_names, start, end)
    skews = check(read, load_history(history), sample, seed)
    limit = report.thresholds.skew_share
    checked = max(s.checked for s in skews)
    skewed = [s for s in skews if s.mismatches]
    report.sections["consistency"] = {
        "history": str(history),
        "sampled": checked,
        "features": [asdict(s) for s in skews],
    }
    report.notes.append(
        f"online/offline consistency: {checked:,} decisions recomputed from {history}: "
        + (
            ", ".join(f"{s.feature} {s.share:.2%}" for s in skewed)
            if skewed
            else f"all {len(skews)} features match"
        )
    )
    for s in skews:
        if s.alert(limit):
            largest = "" if s.max_difference is None else f", largest difference {s.max_difference:g}"
            report.add_flag(
                Flag(
                    "alert",
                    "skew_share",
                    s.feature,
                    s.share,
                    limit,
                    f"{s.feature}: served and recomputed differ on {s.share:.2%} of {s.checked:,} decisions "
                    f"> {limit:.0%}{largest} (e.g. {', '.join(s.examples)})",
                )
            )
    return skews
