"""`--dask` on the offline commands (features, train, evaluate, score-history, backtest), on a small
simulated history stored as a Parquet dataset (a folder of files), on real Dask clusters: `local`
(started by the command) and an address (a LocalCluster of two worker processes started here).

Features on Dask equal the single-process ones exactly; the trees come from `lightgbm.dask` and are
saved in LightGBM's own format, so the model directory is the same as without `--dask`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

distributed = pytest.importorskip("distributed")

from antifraud.engine import cli  # noqa: E402
from antifraud.training.history import load_history, write_history  # noqa: E402
from antifraud.training.model_artifact import ModelArtifact  # noqa: E402
from antifraud.training.simulator import simulate  # noqa: E402

RULES = Path(__file__).resolve().parent.parent / "rules"


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    # worker processes: LightGBM's network is one per process, so each worker needs its own
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield str(cluster.scheduler_address)


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulate(days=24, cards=300, merchants=30, seed=4)


@pytest.fixture(scope="module")
def dataset(sim: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The history as a folder of three Parquet files, in stream order by name."""
    folder = tmp_path_factory.mktemp("dataset") / "history"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(sim)), 3)):
        write_history(sim.iloc[part].reset_index(drop=True), folder / f"part-{i:05d}.parquet")
    return folder


def _ok(command: str, *args: str) -> None:
    result = CliRunner().invoke(cli.app, [command, *args])
    assert result.exit_code == 0, result.output


def _period(history: Path, model: Path, start: str, end: str) -> list[str]:
    return ["--history", str(history), "--model", str(model), "--start", start, "--end", end]


def test_a_parquet_dataset_reads_as_the_single_file(sim: pd.DataFrame, dataset: Path, tmp_path: Path) -> None:
    single = tmp_path / "history.parquet"
    write_history(sim, single)
    pd.testing.assert_frame_equal(load_history(dataset), load_history(single))


def test_features_on_local_dask_equal_single_process(dataset: Path, tmp_path: Path) -> None:
    _ok("features", "--history", str(dataset), "--out", str(tmp_path / "plain.parquet"))
    _ok("features", "--history", str(dataset), "--out", str(tmp_path / "dask.parquet"), "--dask", "local")
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "dask.parquet"), pd.read_parquet(tmp_path / "plain.parquet")
    )


def test_train_evaluate_score_backtest_on_a_cluster_address(
    address: str, dataset: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    period = ["--train-start", "2026-01-01", "--train-end", "2026-01-18"]
    _ok("train", "--history", str(dataset), *period, "--out", str(model), "--dask", address)
    artifact = ModelArtifact.load(model)
    assert artifact.metadata["num_trees"] >= 1
    assert artifact.metadata["thresholds"]["block"] >= artifact.metadata["thresholds"]["review"]
    assert (model / "model.txt").read_text().startswith("tree")  # LightGBM's own format

    report = tmp_path / "eval"
    later = _period(dataset, model, "2026-01-18", "2026-01-25")
    _ok("evaluate", *later, "--out", str(report), "--dask", address)
    metrics = json.loads(next(report.glob("*.json")).read_text())
    assert metrics

    scored = tmp_path / "scores.parquet"
    _ok("score-history", *later, "--out", str(scored), "--dask", address)
    plain = tmp_path / "scores-plain.parquet"
    _ok("score-history", *later, "--out", str(plain))
    pd.testing.assert_frame_equal(pd.read_parquet(scored), pd.read_parquet(plain))  # same features

    _ok("backtest", *later, "--rules", str(RULES), "--dask", address)
