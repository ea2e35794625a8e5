"""Plain-sentence warnings about a training period and its history file, before anyone trusts a model.

Each check catches a way a history silently spoils a model that nothing else reports:

- the file has no `label_time` for its frauds, so the loader assumed a label delay (30 days unless
  told); label-based features (a merchant's known frauds, a card's reported frauds) then see labels
  at the wrong time, and a wrong delay changes what the model learns from them;
- the label delay is as long as the training period: the training payments' label-based features
  see few or no labels, while at scoring time they see the whole training period's;
- the label-based features see no known fraud at all in the training period;
- many features are entirely missing (the file lacks the columns they read);
- training starts before the longest feature window has filled: a card's 30-day count is low on
  the file's first days because its history is not in the file, not because it is quiet.

`data_warnings` returns the sentences; `antifraud train` prints them in yellow and stores them in
the model's metadata and its validation report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The longest look-back of the default spec's features (30-day counts, amounts and fraud rates).
LONGEST_WINDOW = pd.Timedelta(days=30)
# Names of features computed from fraud labels (each sees a label only from its label_time on).
LABEL_FEATURE_MARKS = ("fraud_rate", "known_frauds", "frauds_")
# From this many features missing on every payment, the file most likely lacks columns.
MANY_MISSING = 5


def label_features(names: list[str] | pd.Index) -> list[str]:
    """The feature names computed from fraud labels."""
    return [str(n) for n in names if any(mark in str(n) for mark in LABEL_FEATURE_MARKS)]


def _days(delta: pd.Timedelta) -> str:
    days = delta / pd.Timedelta(days=1)
    return f"{days:.0f} days" if days == round(days) else f"{days:.1f} days"


def data_warnings(
    rows: pd.DataFrame,
    features: pd.DataFrame,
    label_delay: pd.Timedelta,
    train_start: pd.Timestamp,
    train_end: pd.Timestamp,
    warmup: pd.Timedelta = LONGEST_WINDOW,
) -> list[str]:
    """Warnings about training on [train_start, train_end) of a history, as plain sentences.

    `rows` is the history as read (at least every payment before `train_end`; its `attrs` say
    whether `label_time` was defaulted, see `antifraud.training.dataset.read_history`), `features` the
    features of the training payments. An empty list means nothing looks wrong.
    """
    label_delay = pd.Timedelta(label_delay)
    period = train_end - train_start
    out: list[str] = []
    defaulted = int(rows.attrs.get("label_time_defaulted", 0))
    if defaulted and not rows.attrs.get("label_delay_given", False):
        out.append(
            f"{defaulted:,} frauds have no label_time: each is taken as known {_days(label_delay)} after "
            "its payment, the default. Label-based features depend on it: pass --label-delay (e.g. 7d) "
            "with your usual chargeback delay, or add a label_time column"
        )
    if "label" in rows and len(rows):
        frauds = rows[(rows["label"].to_numpy() == 1)]
        if label_delay >= period and defaulted:
            out.append(
                f"the label delay ({_days(label_delay)}) is at least as long as the training period "
                f"({_days(period)}): the training payments' label-based features see few labels, "
                "while at scoring time they see the whole period's; train on a longer period or check "
                "the delay"
            )
        names = label_features(features.columns)
        if names:
            # A training payment at t sees a fraud made within the window before t, once labelled.
            seen = (frauds["timestamp"] >= train_start - warmup) & (frauds["label_time"] < train_end)
            counts = [n for n in names if "fraud_rate" not in n]
            blind_counts = bool(counts) and bool(
                np.all(np.nan_to_num(features[counts].to_numpy(dtype=float), nan=0.0) == 0)
            )
            if not seen.any() or blind_counts:
                out.append(
                    f"the label-based features ({', '.join(names)}) see no known fraud in the training "
                    f"period: no fraud's label is known before {train_end:%Y-%m-%d} (label delay "
                    f"{_days(label_delay)}). The model cannot learn from them, yet they will be non-zero "
                    "when scoring later payments; give the true label_time or --label-delay, or train on "
                    "a later period"
                )
    missing = [str(c) for c in features.columns if len(features) and features[c].isna().all()]
    if len(missing) >= min(MANY_MISSING, features.shape[1]) and missing:
        empty_columns = [
            str(c)
            for c in rows.columns
            if c not in ("label", "label_time") and len(rows) and rows[c].isna().all()
        ]
        because = f" (empty or absent in the file: {', '.join(empty_columns)})" if empty_columns else ""
        out.append(
            f"{len(missing)} of {features.shape[1]} features are missing on every training payment, so "
            f"the model cannot use them: {', '.join(missing)}{because}"
        )
    if len(rows):
        first = rows["timestamp"].min().floor("D")
        warm = first + warmup
        if train_start < warm:
            since = max(train_start - first, pd.Timedelta(0))
            out.append(
                f"training starts {_days(since)} after the file's first day ({first:%Y-%m-%d}): features "
                f"with windows up to {_days(warmup)} are still filling on the first training days (the "
                "history before the file is unknown, so counts and fraud rates start low). Start training "
                f"on or after {warm:%Y-%m-%d}, or give the file more history before the period"
            )
    return out
