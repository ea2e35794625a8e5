"""`antifraud monitor` (training/monitor/) on decisions made by the real service.

A small simulated history; a model trained on its first days by `antifraud train` (which writes the
reference profile); Redis loaded with the history before the monitored day (`backfill`); that day's
payments and feedback replayed through the app on a real redis-server, the sink draining them into a
Parquet store; then the command over the store. A clean day exits 0; the same day with every amount
five times larger exits 3 naming `amount`; the live figures match a hand computation; the shadow
model's column appears once shadow scores are logged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient
from sinks import drain
from typer.testing import CliRunner

from antifraud.engine import cli
from antifraud.engine.api import create_app
from antifraud.engine.demo import _feedback_body, _transaction_body
from antifraud.engine.monitoring import ReferenceProfile, Thresholds, build_profile
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT, Settings
from antifraud.features.online import OnlineFeatures
from antifraud.features.stream import payment_record, stream
from antifraud.training.metrics import recall_at_fpr, threshold_at_fpr
from antifraud.training.model_artifact import ModelArtifact
from antifraud.training.monitor.decisions import read_decisions
from antifraud.training.monitor.performance import Baseline, LiveFigures, measure, validation_baseline, weekly
from antifraud.training.monitor.reference import write_reference
from antifraud.training.monitor.report import MonitorReport, assemble
from antifraud.training.scoring import verdicts
from antifraud.training.simulator import simulate
from antifraud.training.train import train

TRAIN_START, TRAIN_END = date(2026, 1, 1), date(2026, 2, 4)
CLEAN, SHIFTED = date(2026, 2, 4), date(2026, 2, 5)  # the monitored days: as they came, amounts x5
AS_OF = "2026-06-01"  # every label of those days reported by then, and mature under a 30-day delay


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    history = simulate(days=36, cards=400, merchants=300, seed=4)
    return history.sort_values("timestamp", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(history_file: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    """The live model, trained by `antifraud train` (at most 60 trees, for time): its directory holds
    reference.json."""
    config = tmp_path_factory.mktemp("config") / "TRAIN.yaml"
    config.write_text("max_trees: 60\nearly_stopping_rounds: 20\n")
    return train(
        history_file, TRAIN_START, TRAIN_END, tmp_path_factory.mktemp("models") / "live", config=config
    )


@pytest.fixture(scope="module")
def challenger(trained: ModelArtifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model under another name: a challenger whose scores are the champion's."""
    assert trained.path is not None
    return Path(shutil.copytree(trained.path, tmp_path_factory.mktemp("models") / "challenger"))


@pytest.fixture
def thresholds(tmp_path: Path) -> Path:
    """The defaults but two, for a small world: 400 payments a day (min_rows 300), and card_age_days
    ignored besides the clock's features (a simulated history starts with every card new, so the
    cards' age grows with the file: docs/monitoring.md, "Thresholds")."""
    path = tmp_path / "thresholds.yaml"
    path.write_text("min_rows: 300\nignore: [hour_of_day, day_of_week, card_age_days]\n")
    return path


def day_ms(day: date) -> int:
    return int(pd.Timestamp(day, tz="UTC").timestamp() * 1000)


@pytest.fixture(scope="module")
def store(
    sim: pd.DataFrame,
    trained: ModelArtifact,
    challenger: Path,
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A Parquet store holding the decisions of CLEAN and SHIFTED, made by the app on a real Redis
    loaded with the history before them (`backfill`), the shadow model scoring every payment; the
    day's feedback replayed as it came, then every later label of those payments; drained by the
    real sink."""
    assert trained.path is not None
    url = str(tmp_path_factory.mktemp("monitor") / "store")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    start, end = day_ms(CLEAN), day_ms(SHIFTED + timedelta(days=1))
    OnlineFeatures(client).backfill(sim, until_ms=start)
    settings = Settings(
        redis_url=None,
        model_dir=trained.path,
        shadow_model_dir=challenger,
        shadow_share=1.0,
        rules_dir=ROOT / "rules",
        api_keys_file=None,
        store_url=url,
    )
    scored = set()
    with TestClient(create_app(settings, client=client)) as http:
        for event, row, t_ms in stream(sim):
            if event == "payment" and start <= t_ms < end:
                body = _transaction_body(payment_record(sim, row))
                if t_ms >= day_ms(SHIFTED):
                    body["amount"] = round(float(str(body["amount"])) * 5, 2)
                assert http.post("/v1/score", json=body).status_code == 200
                scored.add(row)
            elif event != "payment" and row in scored:
                body = _feedback_body(event, payment_record(sim, row), t_ms)
                assert http.post("/v1/feedback", json=body).status_code == 202
    drain(client, url)
    client.close()
    yield url


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["monitor", *args])
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def day(which: date) -> tuple[str, ...]:
    return ("--from", f"{which}", "--to", f"{which + timedelta(days=1)}")


def test_train_writes_the_reference_profile_that_monitor_reference_rebuilds(
    trained: ModelArtifact, history_file: Path, tmp_path: Path
) -> None:
    assert trained.path is not None
    profile = ReferenceProfile.load(trained.path)
    assert profile is not None and profile.model_version == trained.version
    meta = trained.metadata["data"]
    assert profile.period == (meta["validation_start"][:10], meta["validation_end"][:10])
    assert profile.rows == trained.metadata["counts"]["validation"]["payments"]
    assert list(profile.features) == trained.features
    assert set(profile.verdicts) <= {"allow", "review", "block"}
    assert sum(profile.verdicts.values()) == pytest.approx(1.0)
    copy = Path(shutil.copytree(trained.path, tmp_path / "live"))  # the same name: the same version
    (copy / "reference.json").unlink()
    assert write_reference(copy, history_file) == profile


def test_a_clean_day_exits_0_with_the_challenger_side_by_side(
    sim: pd.DataFrame, trained: ModelArtifact, store: str, tmp_path: Path, thresholds: Path
) -> None:
    assert trained.path is not None
    out, page = tmp_path / "report.json", tmp_path / "html" / "report.html"
    code, output = run(
        "--model", str(trained.path), "--store", store, *day(CLEAN), "--thresholds", str(thresholds),
        "--as-of", AS_OF, "--json", str(out), "--html", str(page),
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(out.read_text())
    assert "nothing crossed a threshold" in output and report["flags"] == [] and not report["quiet"]
    on_day = (sim["timestamp"].dt.date == CLEAN).to_numpy()
    assert report["rows"] == int(on_day.sum())
    assert report["model_versions"] == {trained.version: report["rows"]}
    [challenge] = report["challengers"]
    assert challenge["payments"] == report["rows"]
    assert challenge["challenger"]["model_version"].startswith("challenger-")
    champion, shadow = challenge["champion"], challenge["challenger"]
    assert {k: v for k, v in shadow.items() if k != "model_version"} == {
        k: v for k, v in champion.items() if k != "model_version"
    }  # the same model: the same figures on the same payments
    [week] = report["weeks"]
    assert week["frauds"] == challenge["frauds"] == int(sim.loc[on_day, "label"].sum()) > 0
    assert week["maturity"] == 1.0
    assert report["baseline"]["frauds"] == trained.metadata["counts"]["validation"]["frauds"]
    assert f"{week['frauds']} frauds, fewer than performance_min_frauds 20" in " ".join(report["notes"])
    assert "Champion and challenger" in page.read_text()
    assert (tmp_path / "html" / "report-feature_psi.png").read_bytes()[:4] == b"\x89PNG"


def test_amounts_five_times_larger_exit_3_naming_amount(
    trained: ModelArtifact, store: str, tmp_path: Path, thresholds: Path
) -> None:
    assert trained.path is not None
    out = tmp_path / "report.json"
    code, output = run(
        "--model", str(trained.path), "--store", store, *day(SHIFTED), "--thresholds", str(thresholds),
        "--as-of", AS_OF, "--json", str(out),
    )  # fmt: skip
    assert code == 3, output
    flags = {f["subject"]: f for f in json.loads(out.read_text())["flags"]}
    assert flags["amount"]["level"] == "alert" and flags["amount"]["kind"] == "feature_psi"
    assert "alert: amount: PSI" in output


def test_bad_input_exits_2(trained: ModelArtifact, tmp_path: Path) -> None:
    assert trained.path is not None
    code, output = run("--model", str(trained.path), "--decisions", str(tmp_path / "none.parquet"))
    assert code == 2 and "no such file" in output
    bare = Path(shutil.copytree(trained.path, tmp_path / "bare"))
    (bare / "reference.json").unlink()
    code, output = run("--model", str(bare), "--decisions", str(tmp_path))
    assert code == 2 and "monitor reference" in output


# ------------------------------------------------------------------------- a tiny hand-computed case

T = datetime(2026, 3, 2, 12, tzinfo=UTC)  # a Monday: ISO week 2026-W10


def tiny_export(path: Path) -> Path:
    """Eight decisions over two ISO weeks, with their labels as export-decisions joins them."""
    rows = [  # (days after T, verdict, score, is_fraud, label reported days after T)
        (0, "block", 0.9, True, 20),
        (1, "review", 0.6, False, 20),  # labelled legitimate
        (1, "allow", 0.3, True, 20),
        (2, "allow", 0.1, None, None),
        (7, "review", 0.5, True, 40),
        (7, "allow", 0.2, None, None),
        (8, "block", 0.95, True, 200),  # reported after the as-of time: unknown then
        (8, "allow", 0.05, None, None),
    ]
    stamps = [T + timedelta(days=r[0]) for r in rows]
    table = pa.table(
        {
            "transaction_id": [f"tx-{i}" for i in range(len(rows))],
            "timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "verdict": [r[1] for r in rows],
            "score": [r[2] for r in rows],
            "model_version": ["live-1"] * len(rows),
            "degraded": [None, None, None, None, None, None, "redis", None],
            "shadow_model_version": [None] * len(rows),
            "shadow_score": pa.array([None] * len(rows), pa.float64()),
            "feature_amount": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, None, 80.0],
            "is_fraud": [r[3] for r in rows],
            "label_reported_at": pa.array(
                [None if r[4] is None else T + timedelta(days=r[4]) for r in rows],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, path / "decisions_with_feedback.parquet")
    return path


def test_live_performance_against_a_hand_computation(tmp_path: Path) -> None:
    decisions = read_decisions(tiny_export(tmp_path), ["amount"])
    assert decisions.features["amount"][6] != decisions.features["amount"][6]  # NaN: missing
    as_of = T + timedelta(days=60)
    first, second = weekly(decisions, {"review": 0.5, "block": 0.9}, timedelta(days=30), as_of)
    # week 10: frauds at 0.9 and 0.3; good at 0.6 (labelled) and 0.1 (no label)
    # ranking 0.9 F, 0.6 G, 0.3 F, 0.1 G: AP = (1/1 + 2/3) / 2
    assert (first.week, first.payments, first.frauds, first.maturity) == ("2026-W10", 4, 2, 1.0)
    assert first.figures.average_precision == pytest.approx((1 + 2 / 3) / 2)
    assert first.figures.recall_review == 0.5 and first.figures.recall_block == 0.5
    assert first.figures.realised_fpr == 0.5 and first.figures.blocked_fpr == 0.0  # 0.6 reviewed of 2 good
    # week 11: the 0.95 fraud is reported after as_of, so three good payments and one fraud (0.5)
    # payments of Mar 9-10 are 51-50 days old at as_of, mature under a 30-day delay; AP = 1/2
    assert (second.week, second.payments, second.frauds) == ("2026-W11", 4, 1)
    assert second.figures.average_precision == pytest.approx(0.5)
    assert second.figures.recall_review == 1.0 and second.figures.recall_block == 0.0
    assert second.figures.realised_fpr == pytest.approx(
        1 / 3
    ) and second.figures.blocked_fpr == pytest.approx(1 / 3)
    young = weekly(decisions, {"review": 0.5, "block": 0.9}, timedelta(days=55), as_of)
    assert young[0].maturity == 1.0 and young[1].maturity == 0.0  # 50-51 days old: not yet 55


def test_too_few_rows_flag_nothing_and_say_why(tmp_path: Path) -> None:
    decisions = read_decisions(tiny_export(tmp_path), ["amount"])
    profile = build_profile(
        "live-1", ("2026-02-01", "2026-02-08"), {"amount": np.arange(100.0)}, np.zeros(100)
    )
    loud = Thresholds(min_rows=1)
    quiet = Thresholds()
    args = ({"review": 0.5, "block": 0.9}, timedelta(days=30), T + timedelta(days=60))
    flagged = assemble(profile, decisions, loud, *args)
    assert flagged.exit_code == 3 and {f.kind for f in flagged.flags} >= {"degraded_share", "score_psi"}
    silent = assemble(profile, decisions, quiet, *args)
    assert silent.exit_code == 0 and silent.flags == [] and "fewer than min_rows 500" in silent.notes[0]


def test_degraded_answers_and_other_models_scores_are_left_out_of_the_drift(tmp_path: Path) -> None:
    """The service's rule (engine.monitoring.drift.measured): the tiny export's degraded decision (its
    amount missing by design) is out of the feature and score drift, and so is a decision scored by
    another model out of the score's; the verdict mix and the degraded share count all eight, and the
    notes say what was left out and why."""
    read = read_decisions(tiny_export(tmp_path), ["amount"])
    versions = read.model_versions.copy()
    versions[0] = "old-0"  # the 0.9 block, scored by the model before
    decisions = replace(read, model_versions=versions)
    profile = build_profile(
        "live-1", ("2026-02-01", "2026-02-08"), {"amount": np.arange(100.0)}, np.linspace(0, 1, 100)
    )
    report = assemble(
        profile, decisions, Thresholds(min_rows=1), {"review": 0.5, "block": 0.9}, timedelta(days=30), T
    )
    [amount] = report.features
    assert (report.rows, report.drift_rows, report.score_rows) == (8, 7, 6)
    assert amount.rows == 7 and amount.missing_now == 0.0  # counted, the degraded one would be 1 in 8
    assert report.degraded_share == 1 / 8 and sum(report.verdicts[v]["now"] for v in report.verdicts) == 1
    assert report.score_bins["now"] == pytest.approx(
        np.bincount(np.searchsorted(profile.score.edges, [0.6, 0.3, 0.1, 0.5, 0.2, 0.05]),
                    minlength=len(profile.score.shares)) / 6
    )  # fmt: skip
    notes = " ".join(report.notes)
    assert "1 degraded decisions are left out of the feature and score drift" in notes
    assert "1 decisions not scored by live-1, the reference profile's model (old-0: 1)" in notes
    data = report.to_dict()
    assert (data["drift_rows"], data["score_rows"]) == (7, 6)
    others = replace(read, model_versions=np.full(len(read), "old-0", dtype=object))
    unscored = assemble(
        profile, others, Thresholds(min_rows=1), {"review": 0.5, "block": 0.9}, timedelta(days=30), T
    )
    assert unscored.score_psi is None and "no score drift" in " ".join(unscored.notes)
    assert not [f for f in unscored.flags if f.kind == "score_psi"]


# --------------------------------------------------------------- live performance against validation

BASELINE = Baseline(
    ("2026-02-01", "2026-02-08"),
    payments=1000,
    frauds=50,
    figures=LiveFigures(
        average_precision=1.0, recall_review=0.8, recall_block=0.6, realised_fpr=0.1, blocked_fpr=0.01
    ),
)


def performance_flags(report: MonitorReport) -> dict[tuple[str, str], tuple[str, float]]:
    kinds = ("recall_drop", "ap_drop", "fpr_rise")
    return {(f.kind, f.subject): (f.level, f.value) for f in report.flags if f.kind in kinds}


def test_live_performance_flags_by_hand(tmp_path: Path) -> None:
    """The tiny export's weeks against a made-up validation: week 10 (2 frauds) recall 0.5 against
    0.8 (an absolute drop of 0.3: alert), AP 0.833 against 1.0 (a sixth lower: warning), 1 of 2 good
    payments reviewed against 10 % (+0.4: alert); week 11 has a single fraud: thin, not judged."""
    decisions = read_decisions(tiny_export(tmp_path), ["amount"])
    profile = build_profile(
        "live-1", ("2026-02-01", "2026-02-08"), {"amount": np.arange(100.0)}, np.zeros(100)
    )
    limits = Thresholds(min_rows=1, performance_min_frauds=2)
    model = {"review": 0.5, "block": 0.9}

    def report(delay: int, baseline: Baseline | None = BASELINE) -> MonitorReport:
        as_of = T + timedelta(days=60)
        return assemble(profile, decisions, limits, model, timedelta(days=delay), as_of, baseline=baseline)

    judged = report(30)
    flags = performance_flags(judged)
    assert flags.keys() == {("recall_drop", "2026-W10"), ("ap_drop", "2026-W10"), ("fpr_rise", "2026-W10")}
    assert flags["recall_drop", "2026-W10"] == ("alert", pytest.approx(0.3))
    assert flags["ap_drop", "2026-W10"] == ("warn", pytest.approx(1 / 6))
    assert flags["fpr_rise", "2026-W10"] == ("alert", pytest.approx(0.4))
    assert judged.exit_code == 3
    assert "2026-W11: 1 frauds, fewer than performance_min_frauds 2" in " ".join(judged.notes)
    young = report(55)  # week 11's payments are 50-51 days old: labels not mature under 55 days
    assert "2026-W11: labels 0% mature, below performance_min_maturity 80%" in " ".join(young.notes)
    assert performance_flags(young).keys() == flags.keys()
    unknown = report(30, baseline=None)
    assert performance_flags(unknown) == {} and any("no validation metrics" in n for n in unknown.notes)
    assert report(30).to_dict()["baseline"]["figures"]["recall_review"] == 0.8  # in --json


def test_the_baseline_is_the_models_out_of_sample_validation(trained: ModelArtifact) -> None:
    """metadata.json's validation figures, as a week's are measured: recall at the best threshold within
    1 % (0.1 %) false positives is the recall at the review (block) threshold set there."""
    baseline = validation_baseline(trained.metadata)
    metrics = trained.metadata["validation_metrics"]
    assert baseline is not None and baseline.frauds == trained.metadata["counts"]["validation"]["frauds"]
    assert baseline.figures == LiveFigures(
        average_precision=metrics["average_precision"],
        recall_review=metrics["recall_at_fpr_0.01"],
        recall_block=metrics["recall_at_fpr_0.001"],
        realised_fpr=metrics["realised_fpr"]["review"],
        blocked_fpr=metrics["realised_fpr"]["block"],
    )
    other = {**trained.metadata, "thresholds": {**trained.metadata["thresholds"], "review_fpr": 0.02}}
    assert validation_baseline(other).figures.recall_review is None  # type: ignore[union-attr]
    assert validation_baseline({"thresholds": {}}) is None
    rng = np.random.default_rng(3)
    for _ in range(20):  # continuous scores: no ties
        fraud = rng.random(3000) < 0.03
        scores = rng.beta(1, 8, fraud.size) + fraud * rng.random(fraud.size) * 0.5
        cut = {
            "review": threshold_at_fpr(scores, fraud, 0.01),
            "block": threshold_at_fpr(scores, fraud, 0.001),
        }
        live = measure(scores, fraud, verdicts(scores, cut).astype(str), cut)
        assert live.recall_review == recall_at_fpr(fraud, scores, 0.01)
        assert live.recall_block == recall_at_fpr(fraud, scores, 0.001)
