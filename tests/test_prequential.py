"""Prequential evaluation: fold layout, known-compromised cards, and `antifraud evaluate --protocol
prequential` end to end on a small simulated history (real LightGBM, no mocks)."""

from __future__ import annotations

import itertools
import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from antifraud.engine import cli
from antifraud.training.config import TrainConfig, TrainingError
from antifraud.training.dataset import Dataset, read_history
from antifraud.training.prequential import (
    Fold,
    as_known_at,
    default_gap,
    drop_known_cards,
    history_days,
    known_compromised,
    make_folds,
    merge_warnings,
    prequential,
)
from antifraud.training.simulator import simulate

FIRST, END = date(2026, 1, 1), date(2026, 3, 2)


# ------------------------------------------------------------------------------------ folds


def test_folds_leave_the_gap_never_overlap_and_step_by_the_test_days() -> None:
    folds = make_folds(FIRST, END, train_days=7, gap_days=7, test_days=7, folds=4)
    assert [f.index for f in folds] == [0, 1, 2, 3]
    assert folds[-1].test_end == END  # the last test ends at the end
    for f in folds:
        assert f.train_end - f.train_start == timedelta(days=7)
        assert f.test_start - f.train_end == timedelta(days=7) and f.gap_days == 7
        assert f.test_end - f.test_start == timedelta(days=7)
        assert f.train_end <= f.test_start  # no overlap of training and test
        assert f.train_start >= FIRST
    for earlier, later in itertools.pairwise(folds):
        assert later.train_start - earlier.train_start == timedelta(days=7)
        assert later.test_start == earlier.test_end  # test periods tile the end of the history
    assert folds[0] == Fold(0, date(2026, 1, 19), date(2026, 1, 26), date(2026, 2, 2), date(2026, 2, 9))


def test_a_gap_of_zero_and_the_shortest_history_that_fits() -> None:
    folds = make_folds(FIRST, date(2026, 1, 11), train_days=5, gap_days=0, test_days=1, folds=5)
    assert folds[0].train_start == FIRST and folds[0].train_end == folds[0].test_start


def test_a_history_too_short_for_the_folds_is_refused_with_the_days_needed() -> None:
    with pytest.raises(TrainingError, match=r"need 61 days of history \(7 \+ 26 \+ 4 x 7\).*has 60 full day"):
        make_folds(FIRST, END, train_days=7, gap_days=26, test_days=7, folds=4)
    with pytest.raises(TrainingError, match="folds must be at least 1"):
        make_folds(FIRST, END, train_days=7, gap_days=7, test_days=7, folds=0)
    with pytest.raises(TrainingError, match="gap days must be 0 or more"):
        make_folds(FIRST, END, train_days=7, gap_days=-1, test_days=7, folds=1)


def test_the_last_day_counts_only_when_it_is_full() -> None:
    def history(last: str) -> pd.DataFrame:
        return pd.DataFrame({"timestamp": pd.to_datetime(["2026-01-01T08:00Z", last])})

    assert history_days(history("2026-01-31T23:40Z")) == (FIRST, date(2026, 2, 1))
    assert history_days(history("2026-01-31T12:00Z")) == (FIRST, date(2026, 1, 31))


# ------------------------------------------------------------------------- known-compromised cards


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_training_labels_are_those_known_at_the_test_start() -> None:
    """A fraud whose label came after the fold's test start is trained on as legitimate."""
    rows = pd.DataFrame(
        {
            "timestamp": [_ts("2026-02-01T09:00")] * 3,
            "label": np.array([1, 1, 0], dtype="int8"),
            "label_time": [_ts("2026-02-10T00:00"), _ts("2026-02-20T00:00"), pd.NaT],
        }
    )
    train = Dataset(rows, pd.DataFrame({"f": [1.0, 2.0, 3.0]}), _ts("2026-02-01"), _ts("2026-02-08"))
    known, late = as_known_at(train, _ts("2026-02-15"))
    assert late == 1 and known.y.tolist() == [1, 0, 0]
    assert train.y.tolist() == [1, 1, 0]  # the caller's data is left as it was
    assert as_known_at(train, _ts("2026-03-01")) == (train, 0)


def test_cards_known_compromised_before_a_test_day_are_left_out_of_that_day() -> None:
    rows = pd.DataFrame(
        {
            "timestamp": [
                _ts(t)
                for t in (
                    "2026-02-10T09:00",
                    "2026-02-10T10:00",
                    "2026-02-11T09:00",
                    "2026-02-11T10:00",
                    "2026-02-11T11:00",
                    "2026-02-11T12:00",
                )
            ],
            "card_id": ["known", "later", "known", "later", "late-same-day", "clean"],
            "label": [0, 1, 1, 0, 1, 0],
            "label_time": [
                pd.NaT,
                _ts("2026-02-10T20:00"),
                _ts("2026-02-20"),
                pd.NaT,
                _ts("2026-02-11T11:30"),
                pd.NaT,
            ],
        }
    )
    earlier = pd.DataFrame(  # the card's earlier fraud, reported on 2026-02-05
        {
            "timestamp": [_ts("2026-02-01")],
            "card_id": ["known"],
            "label": [1],
            "label_time": [_ts("2026-02-05")],
        }
    )
    history = pd.concat([earlier, rows], ignore_index=True)
    known = known_compromised(history)
    assert known["known"] == _ts("2026-02-05") and known["later"] == _ts("2026-02-10T20:00")
    assert "clean" not in known
    test = Dataset(
        history.iloc[1:], pd.DataFrame(index=history.index[1:]), _ts("2026-02-10"), _ts("2026-02-12")
    )
    kept, removed = drop_known_cards(test, known)
    # "known" is out on both days; "later" is kept on 2026-02-10 (its fraud was reported that
    # evening) and left out on 2026-02-11; a card whose fraud is reported during the day stays
    assert list(zip(kept.rows["card_id"], kept.rows["timestamp"].dt.day, strict=True)) == [
        ("later", 10),
        ("late-same-day", 11),
        ("clean", 11),
    ]
    assert removed == {"payments": 3, "frauds": 1, "cards": 2}
    assert len(kept.features) == len(kept.rows)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    # labels two days after the payment: with the simulator's 3-60 days, a short history's folds
    # know too few of their frauds by the test start to train on (see as_known_at)
    frame = simulate(days=36, cards=800, merchants=60, seed=4)
    fraud = frame["label"].to_numpy() == 1
    frame["label_time"] = (frame["timestamp"] + pd.Timedelta(days=2)).where(fraud, pd.NaT)
    return frame


@pytest.fixture(scope="module")
def history(history_file: Path) -> pd.DataFrame:
    return read_history(history_file, require_label=True)


def test_default_gap_is_the_given_delay_else_the_files_median(
    history: pd.DataFrame, history_file: Path
) -> None:
    days, why = default_gap(history)
    frauds = history[history["label"] == 1]
    median = (frauds["label_time"] - frauds["timestamp"]).median() / pd.Timedelta(days=1)
    assert days == int(np.ceil(median)) and "median" in why
    given = read_history(history_file, require_label=True, label_delay=timedelta(days=5))
    assert default_gap(given)[0] == 5


def test_prequential_end_to_end_through_the_cli(
    history_file: Path, history: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "preq"
    args = [
        "evaluate",
        "--history",
        str(history_file),
        "--protocol",
        "prequential",
        "--train-days",
        "14",
        "--gap-days",
        "3",
        "--test-days",
        "7",
        "--folds",
        "2",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    for text in ("model", "logistic", "rules-only", "average precision", "±", "over 2 folds", "FPR at block"):
        assert text in result.output
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "report.md", "report.html", "folds.png"}

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "prequential"
    assert metrics["settings"] | {"end": None} == {
        "train_days": 14,
        "gap_days": 3,
        "test_days": 7,
        "folds": 2,
        "end": None,
        "label_delay_days": None,
    }
    folds = metrics["folds"]
    assert [(f["train"], f["test"]) for f in folds] == [
        ({"start": "2026-01-06", "end": "2026-01-20"}, {"start": "2026-01-23", "end": "2026-01-30"}),
        ({"start": "2026-01-13", "end": "2026-01-27"}, {"start": "2026-01-30", "end": "2026-02-06"}),
    ]
    known = known_compromised(history)
    for fold in folds:
        for name in ("model", "logistic", "baseline"):
            side = fold[name]
            assert 0.5 < side["roc_auc"] <= 1 and 0 <= side["average_precision"] <= 1
            assert set(side["realised_fpr"]) == {"review", "block"}
            assert 0 <= side["realised_fpr"]["block"] <= side["realised_fpr"]["review"] <= 1
        # the kept and removed test payments are exactly those of cards not yet / already known
        t0, t1 = pd.Timestamp(fold["test"]["start"], tz="UTC"), pd.Timestamp(fold["test"]["end"], tz="UTC")
        test = history[(history["timestamp"] >= t0) & (history["timestamp"] < t1)]
        out_of_test = (test["card_id"].map(known) < test["timestamp"].dt.floor("D")).fillna(False)
        assert fold["removed"]["payments"] == int(out_of_test.sum()) > 0
        assert fold["counts"]["payments"] == len(test) - int(out_of_test.sum())
    for name in ("model", "logistic", "baseline"):
        ap = [f[name]["average_precision"] for f in folds]
        assert metrics[name]["average_precision"]["mean"] == pytest.approx(np.mean(ap))
        assert metrics[name]["average_precision"]["std"] == pytest.approx(np.std(ap))
    report = (out / "report.md").read_text()
    assert "## Per fold" in report and "Realised FPR at block (aimed 0.10%)" in report


def test_prequential_python_api_refuses_a_short_history(history: pd.DataFrame) -> None:
    with pytest.raises(TrainingError, match="need 50 days of history"):
        prequential(history, train_days=14, gap_days=8, test_days=7, folds=4, config=TrainConfig())
    with pytest.raises(TrainingError, match="after the history's last full day"):
        prequential(history, train_days=7, gap_days=1, test_days=7, folds=1, end=date(2026, 3, 1))


def test_the_single_protocol_still_needs_a_model(history_file: Path) -> None:
    result = CliRunner().invoke(cli.app, ["evaluate", "--history", str(history_file)])
    assert result.exit_code == 1 and "needs --model, --start and --end" in result.output


def test_fold_warnings_are_listed_once_with_their_folds() -> None:
    by_fold = {
        0: ["starts 6 days in", "no label_time"],
        1: ["starts 13 days in", "no label_time"],
        2: ["odd"],
    }
    assert merge_warnings(by_fold, 3) == [
        "folds 1, 2 (figures of fold 1): starts 6 days in",
        "folds 1, 2: no label_time",
        "fold 3: odd",
    ]
    assert merge_warnings({0: ["x"], 1: ["x"]}, 2) == ["all folds: x"]
    assert merge_warnings({0: ["x"]}, 1) == ["x"]
