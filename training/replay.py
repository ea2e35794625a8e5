"""Replay a period of a history as production saw it: rows, point-in-time features, model scores.

The one way the offline tools score a period: `antifraud evaluate` (training.evaluate),
`antifraud score-history` (training.scoring) and `antifraud backtest` (training.backtest) all
call :func:`replay`, which

1. reads the history (`antifraud.training.dataset.read_history`: column map, label delay);
2. computes every payment's point-in-time features over the history before the period's end (a
   payment on the first day sees its card's previous 30 days; nothing after it);
3. keeps the payments of [start, end) and scores them with the model, when there is one.

What each tool then does with the payments (metrics, verdicts, rules) is its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from antifraud.engine.rules import rule_environment
from antifraud.engine.verdicts import RiskScale
from antifraud.features.spec import FeatureSpec, load_spec
from antifraud.training.config import CostParameters, TrainConfig, TrainingError
from antifraud.training.dataset import (
    Dataset,
    ProgressArg,
    as_progress,
    check_period,
    compute_features,
    read_history,
    utc_midnight,
)
from antifraud.training.model_artifact import ModelArtifact


@dataclass
class Replay:
    """A period of history as production saw it: rows, point-in-time features and model scores.

    Independent of any rule set: a backtest builds it once, then tries as many rule sets on it as
    needed (`antifraud.training.backtest.backtest_rules`).
    """

    history: str
    start: date
    end: date  # exclusive
    rows: pd.DataFrame  # the period's canonical history rows, time-sorted
    features: pd.DataFrame  # the spec's features, same order as rows
    scores: np.ndarray  # model scores in [0, 1]; NaN everywhere without a model
    model_version: str | None
    cost_parameters: CostParameters  # the model's (or the default) review, challenge and block costs
    first: pd.Timestamp  # the first and last payment of the whole history file
    last: pd.Timestamp
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # read_s, features_s, model_s
    #: every payment before the features' end with its features, kept only when replay() was given
    #: a `context_end`: other periods (a model's training period) are cut from it by `period`
    context: Dataset | None = field(default=None, repr=False)
    #: the model's score -> risk score map, as the service's (None without a model)
    risk_scale: RiskScale | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labelled(self) -> bool:
        """Whether the history says which payments were fraud."""
        return "label" in self.rows

    @property
    def feature_names(self) -> list[str]:
        """The features rules may read, in spec order."""
        return [str(c) for c in self.features.columns]

    @property
    def dataset(self) -> Dataset:
        """The period's payments as a training Dataset (rows, features, [start, end) as timestamps)."""
        return Dataset(self.rows, self.features, utc_midnight(self.start), utc_midnight(self.end))

    def columns(self) -> dict[str, pd.Series[Any]]:
        """What each rule name reads, as the service's rule environment: payment fields first."""
        return rule_environment(self.rows, self.features)

    def period(self, start: date, end: date) -> Dataset:
        """Another period's payments with their features, cut from the same computation.

        Raises TrainingError when the replay kept no context (no `context_end`) or the period
        holds no payment of it.
        """
        if self.context is None:
            raise TrainingError(
                f"the replay of {self.history} kept only [{self.start}, {self.end}): "
                "pass context_end to replay() to cut other periods from it"
            )
        return period_data(self.context.rows, self.context.features, start, end, self.history)


def slice_period(rows: pd.DataFrame, features: pd.DataFrame, start: date, end: date) -> Dataset:
    """The payments of [start, end) among rows whose features are computed (maybe none)."""
    t0, t1 = utc_midnight(start), utc_midnight(end)
    keep = ((rows["timestamp"] >= t0) & (rows["timestamp"] < t1)).to_numpy()
    return Dataset(rows[keep], features[keep], t0, t1)


def _no_payments(rows: pd.DataFrame, start: date, end: date, source: str) -> TrainingError:
    span = (
        f"{rows['timestamp'].min():%Y-%m-%d} to {rows['timestamp'].max():%Y-%m-%d}"
        if len(rows)
        else "nothing"
    )
    return TrainingError(f"{source}: no payments in [{start}, {end}); the file covers {span}")


def period_data(rows: pd.DataFrame, features: pd.DataFrame, start: date, end: date, source: str) -> Dataset:
    """The payments of [start, end) among rows whose features are computed; TrainingError if none."""
    data = slice_period(rows, features, start, end)
    if len(data) == 0:
        raise _no_payments(rows, start, end, source)
    return data


def replay(
    history: Path | str,
    start: date | str,
    end: date | str,
    model: ModelArtifact | None,
    spec: FeatureSpec | None = None,
    *,
    columns: Path | None = None,
    label_delay: timedelta | None = None,
    require_label: bool = False,
    context_end: date | None = None,
    progress: ProgressArg = None,
) -> Replay:
    """Rows, point-in-time features and model scores of the payments in [start, end) of a history.

    Features are computed over the history before `end`, or before `context_end` when it is
    later: the period's features are the same (a feature never reads the future), and the
    replay keeps every payment before it (`Replay.context`), so that another period such as the
    model's training period is cut from one computation (`Replay.period`). Without a model the
    scores are NaN. `columns` and `label_delay` read the history as `antifraud.training.dataset.read_history`
    does; `require_label` refuses a history without labels.

    Raises TrainingError for a bad date, an unusable file (HistoryError, a ValueError) or a
    period without payments (the message says what the file covers).
    """
    s, e = check_period(start, end)
    step = as_progress(progress)
    spec = spec or load_spec()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    step(f"reading {history}")
    read = read_history(Path(history), columns, require_label=require_label, label_delay=label_delay)
    t1 = time.perf_counter()
    timings["read_s"] = t1 - t0
    stamps = read["timestamp"]
    if not ((stamps >= utc_midnight(s)) & (stamps < utc_midnight(e))).any():
        raise _no_payments(read, s, e, str(history))  # before the features: a wrong date fails at once
    feature_end = max(e, context_end) if context_end is not None else e
    before, features = compute_features(read, utc_midnight(feature_end), spec, step)
    data = slice_period(before, features, s, e)
    t2 = time.perf_counter()
    timings["features_s"] = t2 - t1
    if model is None:
        scores = np.full(len(data), np.nan)
        config = TrainConfig()
    else:
        step(f"scoring {len(data):,} payments with {model.version}")
        scores = model.predict(data.features[model.features].to_numpy(dtype=float))
        config = model.train_config()
    timings["model_s"] = time.perf_counter() - t2
    return Replay(
        history=str(history),
        start=s,
        end=e,
        rows=data.rows,
        features=data.features,
        scores=scores,
        model_version=model.version if model is not None else None,
        cost_parameters=config.cost_parameters(),
        first=stamps.iloc[0],
        last=stamps.iloc[-1],
        timings=timings,
        risk_scale=model_risk_scale(model) if model is not None else None,
        context=(
            Dataset(before, features, stamps.iloc[0], utc_midnight(feature_end))
            if context_end is not None
            else None
        ),
    )


def model_risk_scale(artifact: ModelArtifact) -> RiskScale:
    """The risk scale of a model, as the service builds it (`ModelRuntime.risk_scale`)."""
    return RiskScale.from_thresholds(artifact.metadata.get("thresholds"))
