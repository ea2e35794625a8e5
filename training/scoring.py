"""Score every payment of a period with point-in-time features: `antifraud score-history`.

The output has one row per payment: `transaction_id, score (0-1), risk_score (0-100), verdict`.
The verdict comes from the model's thresholds (metadata.json), or from a rule set when one is given:
the rule engine then sees the same scores, risk scores and features it would see online.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from antifraud.engine.rules import load_rules, rule_environment
from antifraud.engine.verdicts import VERDICTS, RiskScale, band
from antifraud.training.config import TrainingError
from antifraud.training.dataset import ProgressArg, as_progress, check_period
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.replay import replay

# (scores, features of the period, history rows of the period) -> one verdict per payment
Decide = Callable[[np.ndarray, pd.DataFrame, pd.DataFrame], Sequence[str] | np.ndarray]
OUTPUT_FORMATS = (".csv", ".csv.gz", ".parquet")


def verdicts(scores: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """`block` at score >= thresholds['block'], else `review` at >= thresholds['review'], else `allow`
    (a model's own thresholds propose no challenge band: that is the rule set's choice)."""
    codes = band(np.asarray(scores, dtype=float), thresholds["review"], thresholds["block"])
    return np.asarray(VERDICTS, dtype=object)[codes]


def risk_scores(scores: np.ndarray, scale: RiskScale) -> np.ndarray:
    """0-100 integers, the model's risk scale as the serving engine applies it (ModelRuntime.risk_score);
    scores are never NaN here (a replay with a model scores every payment)."""
    return scale.of_array(np.asarray(scores, dtype=float)).astype(np.int64)


def rules_decider(rules_dir: Path, feature_names: Sequence[str], scale: RiskScale | None = None) -> Decide:
    """A `Decide` backed by the rule set in `rules_dir` (engine.rules), for `--rules DIR`.

    Rules see what they see online: every payment field, then every feature not named like a
    payment field (`mcc` and `channel` are the request's strings, not their feature codes). Their
    score bands, not the model's proposed thresholds, turn the score into a verdict.
    Raises engine.rules.RuleSetError (a ValueError listing each problem) for a bad rule set.
    """
    if not Path(rules_dir).is_dir():
        raise TrainingError(f"--rules {rules_dir}: not a directory of rule files")
    # the names and types the serving engine gives rules, so a rule set loads here iff it loads there
    rules = load_rules(rules_dir, feature_names)

    def decide(scores: np.ndarray, features: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
        columns = rule_environment(rows, features)
        risks = scale.of_array(np.asarray(scores, dtype=float)) if scale is not None else None
        verdict, _, _ = rules.decide_frame(scores, columns, rows["merchant_id"].to_numpy(), risk_scores=risks)
        return np.asarray(verdict, dtype=object)

    return decide


def write_table(frame: pd.DataFrame, out: Path) -> Path:
    """Write CSV (.csv, .csv.gz) or Parquet (.parquet), chosen by the file extension."""
    name = out.name.lower()
    if not name.endswith(OUTPUT_FORMATS):
        raise TrainingError(f"{out}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
    return out


def score_history(
    history: Path,
    model_dir: Path,
    start: date | str,
    end: date | str,
    out: Path | None,
    rules_dir: Path | None = None,
    columns: Path | None = None,
    progress: ProgressArg = None,
    decide: Decide | None = None,
    label_delay: timedelta | None = None,
) -> pd.DataFrame:
    """Score the payments in [start, end) of a history and write them to `out` (CSV or Parquet).

    The verdict is `decide(scores, features, rows)` when given, else the rule set in `rules_dir`
    when given, else the model's thresholds. Labels are not needed. The history is read with the
    model's recorded column map and label delay unless `columns` / `label_delay` are given; the
    returned frame's `attrs["notes"]` says what was reused. Returns the written frame.
    """
    s, e = check_period(start, end)
    if out is not None and not out.name.lower().endswith(OUTPUT_FORMATS):
        raise TrainingError(f"{out}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}")
    step = as_progress(progress)
    artifact = ModelArtifact.load(model_dir)
    columns, label_delay, notes = artifact.reading(columns, label_delay)
    for note in notes:
        step(note)
    scale = RiskScale.from_thresholds(artifact.metadata.get("thresholds"))
    if decide is None and rules_dir is not None:
        decide = rules_decider(rules_dir, artifact.features, scale)
    replayed = replay(history, s, e, artifact, columns=columns, label_delay=label_delay, progress=step)
    scores = replayed.scores
    verdict = (
        verdicts(scores, artifact.thresholds)
        if decide is None
        else np.asarray(decide(scores, replayed.features, replayed.rows), dtype=object)
    )
    if len(verdict) != len(scores) or not np.isin(verdict, VERDICTS).all():
        raise TrainingError(
            f"the rule engine returned verdicts that are not one of {'/'.join(VERDICTS)} per payment"
        )
    frame = pd.DataFrame(
        {
            "transaction_id": replayed.rows["transaction_id"].to_numpy(),
            "score": scores,
            "risk_score": risk_scores(scores, scale),
            "verdict": verdict.astype(str),
        }
    )
    if out is not None:
        write_table(frame, out)
        step(f"wrote {out}")
    frame.attrs["notes"] = notes
    return frame
