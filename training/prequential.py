"""Prequential evaluation: rolling folds of train, gap, test over a history (`--protocol prequential`).

The card-fraud literature's standard protocol. Fold k trains on N days, skips a gap of G days,
then tests on the next M days:

    fold k:   train [s_k, s_k + N)   gap [s_k + N, s_k + N + G)   test [s_k + N + G, s_k + N + G + M)

Folds step by M days, so their test periods tile the end of the history; the last test period ends
at the history's last full day (or at `end`). The gap is the label delay: a model put in service on
the test's first day could not have known the labels of the gap's payments, nor of those made just
before it.

Each fold trains exactly as `antifraud train` does (`antifraud.training.train.fit_model`) and is measured on
its test days for the model, the logistic baseline (fitted on the same training payments) and the
rules-only score. On each test day, cards whose fraud was already known (`label_time`) before that
day are left out: they would already be blocked, and counting them would flatter every score.
Features are computed once, point-in-time, over the history up to the last test day: a payment's
features do not depend on the fold.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from antifraud.features.spec import FeatureSpec, load_spec
from antifraud.training.baselines import baseline_scores
from antifraud.training.checks import data_warnings
from antifraud.training.config import TrainConfig, TrainingError
from antifraud.training.dataset import (
    Dataset,
    ProgressArg,
    as_progress,
    compute_features,
    no_progress,
    utc_midnight,
)
from antifraud.training.evaluate import SideScores, as_thresholds
from antifraud.training.history import DEFAULT_LABEL_DELAY
from antifraud.training.metrics import (
    FoldRecord,
    PrequentialMetrics,
    Removed,
    SideSummary,
    counts,
    summarise,
)
from antifraud.training.replay import slice_period
from antifraud.training.report import write_prequential_report
from antifraud.training.train import fit_model

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Fold:
    """One fold's periods, as [start, end) UTC calendar dates."""

    index: int  # 0 for the earliest fold
    train_start: date
    train_end: date
    test_start: date
    test_end: date

    @property
    def gap_days(self) -> int:
        """Days between the training end and the test start (labels not yet known at training)."""
        return (self.test_start - self.train_end).days

    def describe(self) -> str:
        """`fold 2: train [..), test [..)` for messages."""
        return (
            f"fold {self.index + 1}: train [{self.train_start}, {self.train_end}), "
            f"test [{self.test_start}, {self.test_end})"
        )


def make_folds(
    first_day: date, end: date, *, train_days: int, gap_days: int, test_days: int, folds: int
) -> list[Fold]:
    """The folds of a history whose first day is `first_day`, the last test ending at `end` (exclusive).

    Fold k (0 = earliest) tests on [end - (folds - k) x test_days, + test_days), trains on the
    `train_days` ending `gap_days` before its test start. Raises TrainingError when a setting is out
    of range or the history is too short for the folds, saying how many days they need.
    """
    for name, value, least in (
        ("train days", train_days, 1),
        ("test days", test_days, 1),
        ("folds", folds, 1),
    ):
        if value < least:
            raise TrainingError(f"prequential: {name} must be at least {least}, got {value}")
    if gap_days < 0:
        raise TrainingError(f"prequential: gap days must be 0 or more, got {gap_days}")
    out = []
    for k in range(folds):
        test_end = end - (folds - 1 - k) * test_days * DAY
        test_start = test_end - test_days * DAY
        train_end = test_start - gap_days * DAY
        out.append(Fold(k, train_end - train_days * DAY, train_end, test_start, test_end))
    if out[0].train_start < first_day:
        needed = train_days + gap_days + folds * test_days
        have = (end - first_day).days
        raise TrainingError(
            f"prequential: {folds} fold(s) of {train_days} training days, a {gap_days}-day gap and "
            f"{test_days} test days, stepping by {test_days} days, need {needed} days of history "
            f"({train_days} + {gap_days} + {folds} x {test_days}) ending on {end - DAY}; the history has "
            f"{have} full day(s) from {first_day} to {end - DAY}. Use fewer --folds, a shorter --gap-days, "
            "--train-days or --test-days, or a longer history"
        )
    return out


def history_days(history: pd.DataFrame) -> tuple[date, date]:
    """(first day, end) of a time-sorted history: `end` is the day after its last full day.

    The last calendar day counts as full when the history has payments in its last hour (an export
    made during a day leaves that day partial, and a partial test day would skew its metrics).
    """
    if len(history) == 0:
        raise TrainingError("prequential: the history has no payments")
    first, last = history["timestamp"].min(), history["timestamp"].max()
    last_day = last.floor("D")
    end = last_day + pd.Timedelta(days=1) if last >= last_day + pd.Timedelta(hours=23) else last_day
    return first.floor("D").date(), end.date()


def default_gap(history: pd.DataFrame) -> tuple[int, str]:
    """The gap when none is given, in whole days, and a sentence saying where it comes from.

    The label delay the history was read with when it was given (`--label-delay`) or when it filled
    missing label times; otherwise (every fraud has its own `label_time`) the median delay from a
    fraud to its label in the file: half the frauds of the last training day are known by the test.
    """
    delay = pd.Timedelta(history.attrs.get("label_delay", DEFAULT_LABEL_DELAY))
    given, defaulted = (
        history.attrs.get("label_delay_given", False),
        history.attrs.get("label_time_defaulted", 0),
    )
    if not given and not defaulted and "label_time" in history:
        frauds = history[(history["label"].to_numpy() == 1) & history["label_time"].notna().to_numpy()]
        if len(frauds):
            median = (frauds["label_time"] - frauds["timestamp"]).median()
            days = max(1, math.ceil(median / pd.Timedelta(days=1)))
            median_days = median / pd.Timedelta(days=1)
            return days, (
                f"the median time from a fraud to its label in this file ({median_days:.1f} days); "
                "pass --gap-days or --label-delay to choose"
            )
    days = max(0, math.ceil(delay / pd.Timedelta(days=1)))
    source = "given" if given else "assumed by default; pass --label-delay or --gap-days"
    return days, f"the label delay ({delay / pd.Timedelta(days=1):g} days, {source})"


def known_compromised(history: pd.DataFrame) -> pd.Series:
    """Per card, the earliest time one of its frauds became known (`label_time`); cards with no
    known fraud are absent."""
    if "label_time" not in history:
        return pd.Series(dtype="datetime64[ns, UTC]")
    frauds = history[(history["label"].to_numpy() == 1) & history["label_time"].notna().to_numpy()]
    return frauds.groupby("card_id", sort=False)["label_time"].min()


def drop_known_cards(test: Dataset, known: pd.Series) -> tuple[Dataset, Removed]:
    """`test` without the payments of cards whose fraud was known before the payment's UTC day
    began (they would already be blocked), and what was left out."""
    day = test.rows["timestamp"].dt.floor("D")
    first_known = test.rows["card_id"].map(known)
    drop = (first_known < day).fillna(False).to_numpy(dtype=bool)
    removed: Removed = {
        "payments": int(drop.sum()),
        "frauds": int((test.y[drop] == 1).sum()),
        "cards": int(test.rows["card_id"][drop].nunique()),
    }
    keep = ~drop
    return Dataset(test.rows[keep], test.features[keep], test.start, test.end), removed


@dataclass(frozen=True)
class PrequentialResult:
    """Per-fold metrics and their summary (mean and std over folds) for the three scores."""

    folds: tuple[Fold, ...]
    metrics: PrequentialMetrics  # exactly what metrics.json holds

    @property
    def fold_metrics(self) -> list[FoldRecord]:
        """One record per fold, earliest first."""
        return self.metrics["folds"]

    @property
    def summary(self) -> dict[str, SideSummary]:
        """Mean and std over folds, by score: `model`, `logistic`, `baseline` (rules-only)."""
        m = self.metrics
        return {"model": m["model"], "logistic": m["logistic"], "baseline": m["baseline"]}

    @property
    def warnings(self) -> list[str]:
        """Plain sentences about the data or the folds that make the figures less trustworthy."""
        return self.metrics["warnings"]

    def write(self, out_dir: Path) -> Path:
        """metrics.json, report.md / report.html and the per-fold plot in `out_dir`; returns report.md."""
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(self.metrics, indent=2) + "\n")
        return write_prequential_report(out_dir, self.metrics)


def prequential(
    history: pd.DataFrame,
    *,
    train_days: int,
    gap_days: int | None,
    test_days: int,
    folds: int,
    end: date | None = None,
    config: TrainConfig | None = None,
    spec: FeatureSpec | None = None,
    progress: ProgressArg = None,
    title: str | None = None,
) -> PrequentialResult:
    """Prequential evaluation of a labelled, canonical history (`antifraud.training.dataset.read_history`).

    `gap_days` None: the label delay, rounded up to whole days (`default_gap`). `end`: the
    exclusive end of the last test period (default: the day after the history's last full day).
    Raises TrainingError when the history is too short for the folds, or a fold lacks frauds to
    train or test on.
    """
    if "label" not in history:
        raise TrainingError("prequential: the history has no 'label' column (1 fraud, 0 legitimate)")
    step = as_progress(progress)
    cfg = config or TrainConfig()
    spec = spec or load_spec()
    label_delay = pd.Timedelta(history.attrs.get("label_delay", DEFAULT_LABEL_DELAY))
    notes: list[str] = []
    if gap_days is None:
        gap_days, why = default_gap(history)
        notes.append(f"gap of {gap_days} days: {why}")
    first_day, last_end = history_days(history)
    if end is not None and end > last_end:
        raise TrainingError(
            f"prequential: --end {end} is after the history's last full day {last_end - DAY}; "
            f"use --end {last_end} or earlier"
        )
    end = end or last_end
    layout = make_folds(
        first_day, end, train_days=train_days, gap_days=gap_days, test_days=test_days, folds=folds
    )
    step(f"features of every payment before {end} (once, for all {folds} folds)")
    rows, features = compute_features(history, utc_midnight(end), spec, step)
    rows.attrs = dict(history.attrs)
    known = known_compromised(history)
    warnings: dict[int, list[str]] = {}
    records: list[FoldRecord] = []
    for fold in layout:
        records.append(_run_fold(fold, rows, features, known, cfg, spec, label_delay, warnings, step))
    metrics: PrequentialMetrics = {
        "title": title or f"Prequential evaluation, {folds} folds ending {end - DAY}",
        "protocol": "prequential",
        "settings": {
            "train_days": train_days,
            "gap_days": gap_days,
            "test_days": test_days,
            "folds": folds,
            "end": end.isoformat(),
            "label_delay_days": (
                label_delay / pd.Timedelta(days=1)
                if history.attrs.get("label_delay_given") or history.attrs.get("label_time_defaulted")
                else None
            ),
        },
        "aimed_fpr": {"review": cfg.review_fpr, "block": cfg.block_fpr},
        "folds": records,
        "model": summarise([r["model"] for r in records]),
        "logistic": summarise([r["logistic"] for r in records]),
        "baseline": summarise([r["baseline"] for r in records]),
        "cost_parameters": cfg.cost_parameters(),
        "warnings": merge_warnings(warnings, folds) + _late(records),
        "notes": notes,
    }
    return PrequentialResult(tuple(layout), metrics)


def _late(records: list[FoldRecord]) -> list[str]:
    """One sentence when training frauds were labelled only after their fold's test start."""
    late = [
        (r["late_labels"], r["train_counts"]["frauds"] + r["late_labels"], r["gap_days"])
        for r in records
        if r["late_labels"]
    ]
    if not late:
        return []
    share = [n / max(total, 1) for n, total, _ in late]
    fewest, most = min(n for n, _, _ in late), max(n for n, _, _ in late)
    return [
        f"in {len(late)} of {len(records)} folds, {fewest:,} to {most:,} "
        f"training frauds ({min(share):.0%} to {max(share):.0%}) were labelled only after their fold's test "
        "start: they were trained on as legitimate, as a model put in service that day would have been. "
        f"The label delays in this file exceed the gap ({late[0][2]} days); a longer --gap-days trains on "
        "more mature labels, at the cost of older training data"
    ]


def merge_warnings(by_fold: dict[int, list[str]], total: int) -> list[str]:
    """Each fold's warnings, listed once: a warning that only differs between folds in its figures
    and dates is given once with the folds it concerns (in the words of the first of them)."""
    merged: dict[str, tuple[str, list[int]]] = {}
    for fold in sorted(by_fold):
        for text in by_fold[fold]:
            kind = re.sub(r"\d[\d,.:%-]*", "#", text)  # the same sentence with other figures
            merged.setdefault(kind, (text, []))[1].append(fold)
    out = []
    for text, folds in merged.values():
        if total == 1:
            out.append(text)
            continue
        if len(folds) == total:
            which = "all folds"
        else:
            which = ("folds " if len(folds) > 1 else "fold ") + ", ".join(str(k + 1) for k in folds)
        if not all(text in by_fold[k] for k in folds):
            which += f" (figures of fold {folds[0] + 1})"
        out.append(f"{which}: {text}")
    return out


def as_known_at(train: Dataset, when: pd.Timestamp) -> tuple[Dataset, int]:
    """The training payments labelled as they were known at `when`, and how many frauds were not yet.

    A model put in service at `when` is trained on the labels that had arrived by then: a fraud
    whose label came later looked legitimate. Training on it as fraud would let the fold learn
    from the future (and flatter every score the more the labels lag behind the gap).
    """
    late = ((train.y == 1) & (train.rows["label_time"] >= when).to_numpy()).astype(bool)
    if not late.any():
        return train, 0
    rows = train.rows.copy()
    rows["label"] = rows["label"].where(~late, 0)
    return replace(train, rows=rows), int(late.sum())


def _run_fold(
    fold: Fold,
    rows: pd.DataFrame,
    features: pd.DataFrame,
    known: pd.Series,
    config: TrainConfig,
    spec: FeatureSpec,
    label_delay: pd.Timedelta,
    warnings: dict[int, list[str]],
    step: Callable[[str], None] = no_progress,
) -> FoldRecord:
    """Train, score and measure one fold; its warnings go to `warnings[fold.index]`."""
    test = slice_period(rows, features, fold.test_start, fold.test_end)
    train, late = as_known_at(slice_period(rows, features, fold.train_start, fold.train_end), test.start)
    found = data_warnings(rows, train.features, label_delay, train.start, train.end)
    warnings[fold.index] = found
    step(f"{fold.describe()}: training on {len(train):,} payments ({train.frauds:,} frauds)")
    try:
        fitted = fit_model(train, config, spec.feature_names, label_delay, step)
        kept, removed = drop_known_cards(test, known)
        if kept.frauds in (0, len(kept)):
            raise TrainingError(
                f"the test period has {len(kept):,} payments and {kept.frauds:,} frauds once the cards "
                f"already known compromised are left out ({removed['payments']:,} payments); the metrics "
                "need both frauds and legitimate payments: use more --test-days"
            )
        step(f"{fold.describe()}: scoring {len(kept):,} test payments")
        # every score is held to thresholds set as `antifraud train` sets them: out of sample, on
        # the fold's validation slice, at the same false-positive rates
        sides = SideScores(
            model=np.asarray(fitted.booster.predict(kept.X, num_threads=config.num_threads), dtype=float),
            logistic=fitted.logistic.predict(kept.features),
            baseline=baseline_scores(kept.features),
            model_thresholds=as_thresholds(fitted.thresholds),
            logistic_thresholds=as_thresholds(fitted.logistic_thresholds),
            baseline_thresholds=as_thresholds(fitted.baseline_thresholds),
        )
        model_m, logistic_m, baseline_m = sides.metrics(kept, config)
    except TrainingError as exc:
        raise TrainingError(f"prequential {fold.describe()}: {exc}") from exc
    return {
        "index": fold.index,
        "train": {"start": fold.train_start.isoformat(), "end": fold.train_end.isoformat()},
        "test": {"start": fold.test_start.isoformat(), "end": fold.test_end.isoformat()},
        "gap_days": fold.gap_days,
        "train_counts": counts(train.rows),
        "counts": counts(kept.rows),
        "removed": removed,
        "num_trees": fitted.num_trees,
        "late_labels": late,
        "model": model_m,
        "logistic": logistic_m,
        "baseline": baseline_m,
    }
