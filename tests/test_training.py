"""Training, evaluation and batch scoring on a small simulated history (real LightGBM, no mocks)."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import date, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.progress import Progress

from antifraud.engine.verdicts import RiskScale
from antifraud.features.spec import load_spec
from antifraud.training.baselines import BASELINE_RULES, baseline_scores
from antifraud.training.checks import data_warnings
from antifraud.training.config import ConfigError, TrainConfig, TrainingError, load_config
from antifraud.training.dataset import build_dataset, compute_features, read_history, utc_midnight
from antifraud.training.evaluate import evaluate
from antifraud.training.history import HistoryError, write_history
from antifraud.training.metrics import card_precision_at_k, expected_cost, recall_at_fpr, threshold_at_fpr
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.scoring import score_history, verdicts
from antifraud.training.simulator import simulate
from antifraud.training.train import (
    FittedModel,
    check_out_dir,
    fit_model,
    gap_length,
    split_by_time,
    train,
    validation_length,
)

TRAIN_START, TRAIN_END = date(2026, 1, 1), date(2026, 1, 23)
EVAL_START, EVAL_END = date(2026, 1, 23), date(2026, 1, 31)


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulate(days=30, cards=400, merchants=40, seed=1)


@pytest.fixture(scope="module")
def trained(history_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelArtifact, list[str]]:
    messages: list[str] = []
    out = tmp_path_factory.mktemp("models") / "default"
    artifact = train(history_file, TRAIN_START, TRAIN_END, out, progress=messages.append)
    return artifact, messages


@pytest.fixture(scope="module")
def fitted(history_file: Path) -> FittedModel:
    """fit_model on the training period, as `train` calls it."""
    rows = read_history(history_file, require_label=True)
    data = build_dataset(rows, TRAIN_START, TRAIN_END)
    return fit_model(data, TrainConfig(), load_spec().feature_names, rows.attrs["label_delay"])


@pytest.fixture(scope="module")
def evaluated(
    trained: tuple[ModelArtifact, list[str]], history_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    artifact, _ = trained
    assert artifact.path is not None
    out = tmp_path_factory.mktemp("eval")
    return evaluate(history_file, artifact.path, EVAL_START, EVAL_END, out), out


# ------------------------------------------------------------------------------------------ train


def test_train_writes_a_complete_model_directory(trained: tuple[ModelArtifact, list[str]]) -> None:
    artifact, messages = trained
    assert artifact.path is not None
    out = artifact.path
    for name in (
        "model.txt",
        "metadata.json",
        "report/metrics.json",
        "report/report.md",
        "report/report.html",
        "report/pr_curve.png",
        "report/roc_curve.png",
        "report/score_distribution.png",
        "report/cost_curve.png",
        "report/feature_importance.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "report" / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Precision-recall curve](pr_curve.png)" in (out / "report" / "report.md").read_text()
    assert any(m.startswith("features: ") for m in messages) and messages[-1].startswith("wrote ")


def test_metadata_records_how_the_model_was_made(
    trained: tuple[ModelArtifact, list[str]], history_file: Path, sim: pd.DataFrame
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    meta = json.loads((artifact.path / "metadata.json").read_text())
    spec = load_spec()
    assert meta["features"] == spec.feature_names and meta["spec_digest"] == spec.digest
    assert meta["params"]["num_threads"] <= 2 and meta["params"]["num_leaves"] == 31
    assert 1 <= meta["num_trees"] <= 300 and meta["best_iteration"] == meta["num_trees"]
    data = meta["data"]
    assert data["history_sha256"] == hashlib.sha256(history_file.read_bytes()).hexdigest()
    assert (data["train_start"], data["train_end"]) == ("2026-01-01", "2026-01-23")
    assert (
        data["validation_start"] == "2026-01-19T00:00:00Z"
        and data["validation_end"] == "2026-01-23T00:00:00Z"
    )
    in_period = sim[(sim.timestamp >= utc_midnight(TRAIN_START)) & (sim.timestamp < utc_midnight(TRAIN_END))]
    counts = meta["counts"]
    # the final model is refitted on the whole period: training counts are the period's
    assert counts["train"] == {"payments": len(in_period), "frauds": int(in_period.label.sum())}
    assert counts["trees_chosen_on"]["payments"] + counts["validation"]["payments"] < len(in_period)
    assert meta["refitted"] is True
    # the simulator gives every fraud its label_time: the default delay was not needed for them
    assert data["label_delay_seconds"] == 30 * 86400 and data["label_time_defaulted"] == 0
    assert data["columns"] is None and data["gap_seconds"] == 5 * 86400  # 30 days, capped at 25% of 22
    assert data["trees_chosen_on"] == ["2026-01-01T00:00:00Z", "2026-01-14T00:00:00Z"]
    assert any("still filling" in w for w in meta["warnings"])  # the file starts on the first day
    report = json.loads((artifact.path / "report" / "metrics.json").read_text())
    assert set(meta["warnings"]) <= set(report["warnings"])
    assert (artifact.path / "baseline_logistic.json").is_file() and artifact.logistic is not None
    t = meta["thresholds"]
    assert 0 < t["review"] <= t["block"] <= 1 and (t["review_fpr"], t["block_fpr"]) == (0.01, 0.001)
    assert "legitimate validation payments" in t["rule"]
    assert 0.5 < meta["validation_metrics"]["roc_auc"] <= 1
    assert meta["version"] == artifact.version
    assert meta["config"]["review_cost"] == 2.0


def test_thresholds_hold_their_false_positive_rate_on_validation(
    fitted: FittedModel, trained: tuple[ModelArtifact, list[str]]
) -> None:
    """The thresholds hold on the validation slice scored out of sample, and the final model (refitted
    on those days too) keeps them: on the slice it has learned it flags no more legitimate payments."""
    artifact, _ = trained
    valid = fitted.validation
    assert artifact.thresholds == pytest.approx(fitted.thresholds)
    legit = fitted.validation_scores[valid.y == 0]
    assert (legit >= fitted.thresholds["block"]).mean() <= 0.001
    assert (legit >= fitted.thresholds["review"]).mean() <= 0.01
    refit = artifact.predict(valid.X)[valid.y == 0]
    assert (refit >= fitted.thresholds["review"]).mean() <= 0.02


def test_refit_keeps_the_chosen_number_of_trees(fitted: FittedModel) -> None:
    """Trees are chosen out of time on the fit part; the model that set the thresholds and the final
    model, trained on more days, have exactly that many."""
    chosen = fitted.validation_booster.num_trees()
    assert 1 <= chosen <= 300 and fitted.num_trees == chosen == fitted.booster.num_trees()
    assert fitted.fit_part.end + fitted.gap == fitted.validation.start  # the gap separates them
    assert fitted.gap == pd.Timedelta(days=5) and fitted.refitted
    # the final model differs from the validation model: it learned the validation days
    assert fitted.booster.model_to_string() != fitted.validation_booster.model_to_string()


def test_thresholds_hold_on_the_following_days(fitted: FittedModel, history_file: Path) -> None:
    """Realised false-positive rate of the final model on the days after training: near the aim.
    (Few legitimate payments here: 0.1% of them is a handful, so the bound is loose.)"""
    rows = read_history(history_file, require_label=True)
    later = build_dataset(rows, EVAL_START, EVAL_END)
    legit = fitted.booster.predict(later.X)[later.y == 0]
    assert (legit >= fitted.thresholds["review"]).mean() <= 0.03
    assert (legit >= fitted.thresholds["block"]).mean() <= 0.005


def test_gap_and_split_lengths() -> None:
    day = pd.Timedelta(days=1)
    assert gap_length(40 * day, 30 * day, 0.25) == 10 * day  # capped at a quarter of the period
    assert gap_length(40 * day, 7 * day, 0.25) == 7 * day  # the label delay
    assert gap_length(40 * day, pd.Timedelta(hours=36), 0.25) == 2 * day  # whole days, rounded up
    assert gap_length(7 * day, 30 * day, 0.25) == day  # a short period: at most 1.75 days, whole days
    assert gap_length(2 * day, 30 * day, 0.25) == day / 2  # under 5 days: exact
    assert validation_length(22 * day, 0.2) == 4 * day and validation_length(2 * day, 0.2) == 0.4 * day


def test_training_uses_only_the_period(
    history_file: Path, sim: pd.DataFrame, tmp_path: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    """Rewriting every label from the training end on (and when it was reported) changes nothing."""
    artifact, _ = trained
    later = sim.copy()
    after = (later.timestamp >= utc_midnight(TRAIN_END)).to_numpy()
    later.loc[after, "label"] = (1 - later.loc[after, "label"]).astype("int8")
    later.loc[after, "label_time"] = later.loc[after, "timestamp"] + pd.Timedelta(hours=1)
    path = tmp_path / "later.parquet"
    write_history(later, path)
    again = train(path, TRAIN_START, TRAIN_END, tmp_path / "again", report=False)
    assert again.model_text() == artifact.model_text()


def test_time_split_puts_validation_after_training(history_file: Path) -> None:
    rows = read_history(history_file, require_label=True)
    data = build_dataset(rows, TRAIN_START, TRAIN_END)
    assert data.rows.timestamp.min() >= utc_midnight(TRAIN_START)
    assert data.rows.timestamp.max() < utc_midnight(TRAIN_END)
    fit_part, valid = split_by_time(data, 0.2)
    assert fit_part.rows.timestamp.max() < valid.rows.timestamp.min()
    assert valid.start == utc_midnight(TRAIN_END - timedelta(days=4))
    assert len(fit_part) + len(valid) == len(data)
    gapped, same = split_by_time(data, 0.2, gap=pd.Timedelta(days=3))
    assert gapped.end == valid.start - pd.Timedelta(days=3) and same.start == valid.start
    assert gapped.rows.timestamp.max() < valid.start - pd.Timedelta(days=3)


def test_features_never_see_labels_reported_later(sim: pd.DataFrame) -> None:
    """Moving (and flipping) every label reported after T leaves the features of payments <= T alone."""
    cut = pd.Timestamp("2026-01-20T00:00:00Z")
    history = read_history_frame(sim)
    changed = history.copy()
    late = (changed.label_time > cut).to_numpy()
    changed.loc[late, "label_time"] = changed.loc[late, "label_time"] + pd.Timedelta(days=60)
    changed.loc[late, "label"] = (1 - changed.loc[late, "label"]).astype("int8")
    end = pd.Timestamp("2026-01-31T00:00:00Z")
    _, before = compute_features(history, end)
    _, after = compute_features(changed, end)
    early = (history.timestamp <= cut).to_numpy()
    pd.testing.assert_frame_equal(before[early], after[early])
    # the change is visible later on, so the comparison above is not vacuous
    assert not before[~early].equals(after[~early])


def read_history_frame(sim: pd.DataFrame) -> pd.DataFrame:
    """The simulator's frame with the label times load_history would default."""
    frame = sim.copy()
    missing = frame.label_time.isna()
    frame.loc[missing, "label_time"] = frame.loc[missing, "timestamp"] + pd.Timedelta(days=30)
    return frame


# --------------------------------------------------------------------------------------- evaluate


def test_evaluate_reports_sane_metrics(evaluated: tuple[dict, Path], sim: pd.DataFrame) -> None:
    metrics, out = evaluated
    model, base = metrics["model"], metrics["baseline"]
    assert model["roc_auc"] > 0.8
    fraud_rate = metrics["counts"]["fraud_rate"]
    assert model["average_precision"] > 5 * fraud_rate
    for m in (model, base):
        for key in (
            "roc_auc",
            "average_precision",
            "card_precision_at_100",
            "recall_at_fpr_0.001",
            "recall_at_fpr_0.01",
        ):
            assert 0 <= m[key] <= 1, key
        assert m["recall_at_fpr_0.001"] <= m["recall_at_fpr_0.01"]
        mix = m["verdicts"]
        assert sum(v["payments"] for v in mix.values()) == metrics["counts"]["payments"]
        assert sum(v["frauds"] for v in mix.values()) == metrics["counts"]["frauds"]
        cost = m["cost"]
        parts = ("fraud_allowed", "reviews", "challenges", "legit_blocked")
        assert cost["total"] == pytest.approx(sum(cost[part] for part in parts))
        assert cost["reviews"] == pytest.approx(2.0 * mix["review"]["payments"])
    in_period = sim[(sim.timestamp >= utc_midnight(EVAL_START)) & (sim.timestamp < utc_midnight(EVAL_END))]
    assert metrics["counts"]["payments"] == len(in_period)
    assert metrics["warnings"] == []
    assert json.loads((out / "metrics.json").read_text())["model"]["roc_auc"] == model["roc_auc"]
    assert "rules-only" in (out / "report.md").read_text()


def test_evaluate_warns_when_the_period_overlaps_training(
    history_file: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    metrics = evaluate(history_file, artifact.path, date(2026, 1, 15), date(2026, 1, 25))
    assert any("overlaps the training period" in w for w in metrics["warnings"])


def test_baseline_rules_read_features_of_the_spec() -> None:
    names = set(load_spec().feature_names)
    assert [name for name, _, _ in BASELINE_RULES if name not in names] == []


def test_baseline_scores_rank_fraud_above_chance(history_file: Path) -> None:
    rows = read_history(history_file, require_label=True)
    data = build_dataset(rows, TRAIN_START, EVAL_END)
    scores = baseline_scores(data.features)
    assert scores.shape == (len(data),) and scores.min() >= 0 and scores.max() <= 1
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(data.y, scores) > 0.7


# ---------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("name", ["scores.csv", "scores.parquet"])
def test_score_history_writes_one_row_per_payment(
    name: str, history_file: Path, tmp_path: Path, trained: tuple[ModelArtifact, list[str]], sim: pd.DataFrame
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    out = tmp_path / name
    frame = score_history(history_file, artifact.path, EVAL_START, EVAL_END, out)
    written = pd.read_csv(out) if name.endswith(".csv") else pd.read_parquet(out)
    assert list(written.columns) == ["transaction_id", "score", "risk_score", "verdict"]
    in_period = sim[(sim.timestamp >= utc_midnight(EVAL_START)) & (sim.timestamp < utc_midnight(EVAL_END))]
    assert list(written.transaction_id) == list(in_period.transaction_id)
    assert written.score.between(0, 1).all() and written.risk_score.between(0, 100).all()
    scale = RiskScale.from_thresholds(artifact.metadata["thresholds"])
    assert (written.risk_score.to_numpy() == scale.of_array(written.score.to_numpy())).all()
    assert (written.verdict.to_numpy() == verdicts(frame.score.to_numpy(), artifact.thresholds)).all()


def test_score_history_needs_no_labels_and_takes_a_decision_hook(
    sim: pd.DataFrame, tmp_path: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    path = tmp_path / "unlabelled.csv"
    write_history(sim.drop(columns=["label", "label_time", "fraud_pattern"]), path)
    seen: dict[str, object] = {}

    def decide(scores: np.ndarray, features: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
        seen["features"], seen["rows"] = features.shape, len(rows)
        return np.where(scores > 0.5, "block", "allow")

    frame = score_history(path, artifact.path, EVAL_START, EVAL_END, None, decide=decide)
    assert seen["features"] == (len(frame), len(artifact.features)) and seen["rows"] == len(frame)
    assert set(frame.verdict) <= {"allow", "block"}


def test_score_history_with_a_rule_set(
    history_file: Path, tmp_path: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "test.yaml").write_text(
        "score_bands: {review: 0.5, block: 0.9}\n"
        "rules:\n"
        "  - {id: big, when: amount > 300 and not authenticated, action: review, reason: BIG}\n"
        "  - {id: tiny_burst, when: card_count_10m >= 50, action: block, reason: BURST}\n"
    )
    frame = score_history(history_file, artifact.path, EVAL_START, EVAL_END, None, rules_dir=rules)
    rows = read_history(history_file)
    rows = rows[(rows.timestamp >= utc_midnight(EVAL_START)) & (rows.timestamp < utc_midnight(EVAL_END))]
    # a rule reading a missing field is skipped: only payments known to be unauthenticated count
    big = ((rows.amount > 300) & rows.authenticated.eq(False).fillna(False)).to_numpy(dtype=bool)
    banded = verdicts(frame.score.to_numpy(), {"review": 0.5, "block": 0.9})
    expected = np.where(big & (banded == "allow"), "review", banded)
    assert (frame.verdict.to_numpy() == expected).all() and big.any()
    with pytest.raises(ValueError, match="nope"):
        (rules / "bad.yaml").write_text("rules:\n  - {id: bad, when: nope > 1, action: block, reason: X}\n")
        score_history(history_file, artifact.path, EVAL_START, EVAL_END, None, rules_dir=rules)


def test_progress_may_be_a_rich_progress(
    history_file: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    with Progress(console=Console(file=io.StringIO())) as bar:
        score_history(history_file, artifact.path, EVAL_START, EVAL_END, None, progress=bar)
        assert bar.tasks[0].description.startswith("scoring ")


def test_scores_match_between_evaluate_and_score_history(
    history_file: Path, evaluated: tuple[dict, Path], trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    metrics, _ = evaluated
    frame = score_history(history_file, artifact.path, EVAL_START, EVAL_END, None)
    counts = frame.verdict.value_counts()
    for verdict, entry in metrics["model"]["verdicts"].items():
        assert int(counts.get(verdict, 0)) == entry["payments"]


# ------------------------------------------------------------------- label delay, checks, the CLI


@pytest.fixture(scope="module")
def unlabelled_times(sim: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's history without label_time, its label column renamed (read through a column map)."""
    folder = tmp_path_factory.mktemp("no_label_time")
    path = folder / "history.parquet"
    write_history(sim.drop(columns=["label_time"]).rename(columns={"label": "IS_FRAUD"}), path)
    (folder / "columns.yaml").write_text("label: IS_FRAUD\n")
    return path


def test_a_file_without_label_time_is_warned_about(unlabelled_times: Path) -> None:
    columns = unlabelled_times.parent / "columns.yaml"
    rows = read_history(unlabelled_times, columns, require_label=True)
    assert rows.attrs["label_delay"] == pd.Timedelta(days=30) and rows.attrs["label_delay_given"] is False
    assert rows.attrs["label_time_defaulted"] == int(rows.label.sum()) > 0
    assert (rows.label_time == rows.timestamp + pd.Timedelta(days=30)).all()
    data = build_dataset(rows, TRAIN_START, TRAIN_END)
    found = data_warnings(rows, data.features, rows.attrs["label_delay"], data.start, data.end)
    assert any("have no label_time" in w and "--label-delay" in w for w in found)
    # 30 days of delay over a 22-day period: no label is known while training
    assert any("at least as long as the training period" in w for w in found)
    assert any("see no known fraud in the training period" in w for w in found)

    week = read_history(unlabelled_times, columns, require_label=True, label_delay=timedelta(days=7))
    assert (week.label_time == week.timestamp + pd.Timedelta(days=7)).all()
    data = build_dataset(week, TRAIN_START, TRAIN_END)
    found = data_warnings(week, data.features, week.attrs["label_delay"], data.start, data.end)
    assert not any("label_time" in w or "training period" in w for w in found)  # the delay was given
    assert not any("see no known fraud" in w for w in found)


def test_data_warnings_name_missing_features_and_cold_windows(sim: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "minimal.csv"
    write_history(sim[["transaction_id", "timestamp", "card_id", "merchant_id", "amount", "label"]], path)
    rows = read_history(path, require_label=True)
    data = build_dataset(rows, date(2026, 1, 10), TRAIN_END)
    found = data_warnings(rows, data.features, rows.attrs["label_delay"], data.start, data.end)
    missing = next(w for w in found if "missing on every training payment" in w)
    assert "device_distinct_cards_24h" in missing and "empty or absent in the file: " in missing
    cold = next(w for w in found if "still filling" in w)
    assert "starts 9 days after the file's first day (2026-01-01)" in cold and "2026-01-31" in cold
    warm = data_warnings(
        rows,
        data.features,
        rows.attrs["label_delay"],
        pd.Timestamp("2026-02-01", tz="UTC"),
        pd.Timestamp("2026-02-20", tz="UTC"),
    )
    assert not any("still filling" in w for w in warm)


def test_metadata_records_delay_and_columns_and_score_history_reuses_them(
    unlabelled_times: Path, sim: pd.DataFrame, tmp_path: Path
) -> None:
    columns = unlabelled_times.parent / "columns.yaml"
    out = tmp_path / "weekly"
    train(
        unlabelled_times,
        TRAIN_START,
        TRAIN_END,
        out,
        columns=columns,
        label_delay=timedelta(days=7),
        report=False,
    )
    data = json.loads((out / "metadata.json").read_text())["data"]
    assert data["columns"] == str(columns) and data["label_delay_seconds"] == 7 * 86400
    assert data["label_time_defaulted"] == int(sim.label.sum())  # no fraud of the file has one
    reused = score_history(unlabelled_times, out, EVAL_START, EVAL_END, None)
    assert any("column map" in n for n in reused.attrs["notes"])
    assert any("label delay of 7 days" in n for n in reused.attrs["notes"])
    given = score_history(
        unlabelled_times, out, EVAL_START, EVAL_END, None, columns=columns, label_delay=timedelta(days=7)
    )
    assert given.attrs["notes"] == []
    pd.testing.assert_frame_equal(reused, given, check_like=True)


def test_cli_train_refuses_a_model_directory_unless_forced(
    history_file: Path, tmp_path: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    from typer.testing import CliRunner

    from antifraud.engine import cli

    out = tmp_path / "default"
    out.mkdir()
    (out / "model.txt").write_text("an older model\n")
    args = ["train", "--history", str(history_file), "--train-start", str(TRAIN_START)]
    args += ["--train-end", str(TRAIN_END), "--out", str(out), "--label-delay", "30d"]
    refused = CliRunner().invoke(cli.app, args)
    assert refused.exit_code == 1 and "--force" in refused.output and "model.txt" in refused.output
    assert (out / "model.txt").read_text() == "an older model\n"
    forced = CliRunner().invoke(cli.app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    loaded = ModelArtifact.load(out)
    assert loaded.model_text() == trained[0].model_text()  # the same model as train() writes
    assert loaded.version.startswith("default-") and loaded.metadata["data"]["label_delay_given"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]  # no staging or old directory left
    assert "warning:" in forced.output and "still filling" in forced.output
    assert "Average precision" in forced.output or "average precision" in forced.output.lower()
    bad = CliRunner().invoke(cli.app, [*args[:-2], "--label-delay", "a week"])
    assert bad.exit_code == 2 and "bad duration" in bad.output


# ----------------------------------------------------------------------------------------- errors


def test_bad_dates_are_named(history_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="2026-13-01"):
        train(history_file, "2026-13-01", "2026-01-23", tmp_path / "m")
    with pytest.raises(TrainingError, match="must be before end"):
        train(history_file, "2026-01-23", "2026-01-23", tmp_path / "m")


def test_an_empty_period_says_what_the_file_covers(history_file: Path, tmp_path: Path) -> None:
    with pytest.raises(
        TrainingError, match=r"no payments in \[2025-01-01, 2025-02-01\).*2026-01-01 to 2026-01-30"
    ):
        train(history_file, "2025-01-01", "2025-02-01", tmp_path / "m")


def test_evaluating_a_period_without_fraud_is_refused(
    history_file: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    with pytest.raises(TrainingError, match=r"\[2026-01-22, 2026-01-23\) has [0-9,]+ payments and 0 frauds"):
        evaluate(history_file, artifact.path, "2026-01-22", "2026-01-23")


def test_a_period_without_enough_fraud_is_refused(history_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="at least 5 frauds"):
        train(history_file, "2026-01-01", "2026-01-03", tmp_path / "m")


def test_missing_label_column(sim: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "nolabel.csv"
    write_history(sim.drop(columns=["label", "label_time"]), path)
    with pytest.raises(TrainingError, match=r"nolabel\.csv: no 'label' column"):
        train(path, TRAIN_START, TRAIN_END, tmp_path / "m")


def test_a_column_map_is_passed_through(sim: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "renamed.csv"
    write_history(sim.rename(columns={"label": "IS_FRAUD"}), path)
    mapping = tmp_path / "columns.yaml"
    mapping.write_text("label: IS_FRAUD\n")
    with pytest.raises(TrainingError, match="no 'label' column"):
        read_history(path, require_label=True)
    assert read_history(path, mapping, require_label=True).label.sum() == sim.label.sum()
    mapping.write_text("label: NOPE\n")
    with pytest.raises(HistoryError, match="NOPE"):
        read_history(path, mapping)


def test_evaluate_refuses_a_model_for_another_spec(
    history_file: Path, tmp_path: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    meta = dict(artifact.metadata)
    booster = lgb.Booster(model_str=artifact.model_text().replace("card_count_10m", "card_count_5m"))
    meta["features"] = booster.feature_name()
    ModelArtifact(booster, meta).save(tmp_path / "old")
    with pytest.raises(TrainingError, match="card_count_5m"):
        evaluate(history_file, tmp_path / "old", EVAL_START, EVAL_END)


def test_unknown_output_format(
    history_file: Path, tmp_path: Path, trained: tuple[ModelArtifact, list[str]]
) -> None:
    artifact, _ = trained
    assert artifact.path is not None
    with pytest.raises(TrainingError, match=r"scores\.xlsx: unknown output format"):
        score_history(history_file, artifact.path, EVAL_START, EVAL_END, tmp_path / "scores.xlsx")


def test_config_file(tmp_path: Path) -> None:
    assert load_config(None) == TrainConfig()
    path = tmp_path / "TRAIN.yaml"
    path.write_text("review_cost: 5\nlightgbm: {max_bin: 127}\n")
    cfg = load_config(path)
    assert cfg.review_cost == 5.0 and cfg.lgb_params(None)["max_bin"] == 127
    path.write_text("review_costs: 5\n")
    with pytest.raises(ConfigError, match=r"TRAIN\.yaml: unknown settings \['review_costs'\]"):
        load_config(path)
    path.write_text("block_fpr: 0.5\n")
    with pytest.raises(ConfigError, match="block_fpr <= review_fpr"):
        load_config(path)
    path.write_text("num_threads: 8\n")
    with pytest.raises(ConfigError, match="num_threads"):
        load_config(path)
    path.write_text("imbalance: yes\n")
    with pytest.raises(ConfigError, match="imbalance must be a str"):
        load_config(path)


# ---------------------------------------------------------------------------------------- metrics


def test_threshold_at_fpr_counts_legitimate_payments_only() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.95])
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    t = threshold_at_fpr(scores, labels, 0.1)  # 10 legitimate: one may be flagged
    assert 0.9 < t <= 1.0 and (scores[labels == 0] >= t).sum() == 1
    assert threshold_at_fpr(scores, labels, 0.0) > 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=5, max_size=200), st.floats(0.001, 0.5))
def test_threshold_at_fpr_is_the_lowest_that_holds(values: list[float], fpr: float) -> None:
    scores = np.array(values)
    labels = np.zeros(len(scores), dtype=int)
    t = threshold_at_fpr(scores, labels, fpr)
    assert (scores >= t).mean() <= fpr
    lower = scores[scores < t]
    if len(lower):
        assert (scores >= lower.max()).mean() > fpr


def test_recall_at_fpr() -> None:
    labels = np.array([0] * 100 + [1] * 10)
    scores = np.r_[np.linspace(0, 0.5, 100), np.linspace(0.45, 1, 10)]
    assert recall_at_fpr(labels, scores, 0.0) == pytest.approx(0.9)
    assert recall_at_fpr(labels, scores, 0.5) == 1.0


def test_card_precision_at_k_per_day() -> None:
    ts = pd.Series(
        pd.to_datetime(
            [
                "2026-01-01T01:00Z",
                "2026-01-01T02:00Z",
                "2026-01-01T03:00Z",
                "2026-01-02T01:00Z",
                "2026-01-02T02:00Z",
            ],
            utc=True,
        )
    )
    cards = np.array(["a", "a", "b", "a", "c"])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.8])
    labels = np.array([0, 1, 0, 1, 0])
    # day 1: card a (max 0.9, had a fraud) ranks first; day 2: card c (no fraud) ranks first
    mean, daily = card_precision_at_k(labels, scores, cards, ts, k=1)
    assert daily == [1.0, 0.0] and mean == 0.5
    assert card_precision_at_k(labels, scores, cards, ts, k=100)[1] == [0.5, 0.5]


def test_expected_cost() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0])
    amounts = np.array([100.0, 50.0, 20.0, 200.0, 30.0, 10.0])
    verdict = np.array(["allow", "review", "block", "block", "review", "challenge"], dtype=object)
    cost = expected_cost(labels, verdict, amounts, review_cost=2.0, block_cost_factor=0.1, challenge_cost=0.5)
    assert cost == {
        "total": 100 + 4 + 0.5 + 20,
        "fraud_allowed": 100,
        "reviews": 4.0,
        "challenges": 0.5,
        "legit_blocked": 20.0,
        "allow_everything": 170.0,
    }


def test_force_replaces_only_a_model_directory(tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("not a model\n")
    with pytest.raises(TrainingError, match=r"already holds todo\.txt: .*--force"):
        check_out_dir(notes, force=False)
    with pytest.raises(TrainingError, match="--force only replaces a model directory"):
        check_out_dir(notes, force=True)
    (notes / "metadata.json").write_text("{}")
    check_out_dir(notes, force=True)  # a model directory: replaced
    check_out_dir(tmp_path / "new", force=False)  # absent, or empty: written
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", force=False)
    with pytest.raises(TrainingError, match="is a file"):
        check_out_dir(notes / "todo.txt", force=True)
