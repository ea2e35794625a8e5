"""The Dask executor (features/offline_dask.py) gives exactly the single-process features.

A simulated history, with some entity keys blanked so that rows without a key travel too, split in
uneven partitions (one empty), on a real Dask LocalCluster of two workers: every feature of every
payment must equal `OfflineFeatures`' value (NaN where it is NaN).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from antifraud.features.offline import OfflineFeatures  # noqa: E402
from antifraud.features.offline_dask import POSITION, dask_features, entity_blocks  # noqa: E402
from antifraud.training.simulator import simulate  # noqa: E402


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    frame = simulate(days=14, cards=400, merchants=40, seed=11)
    rng = np.random.default_rng(5)
    for column, blank in (("device_id", None), ("ip", ""), ("email", None)):
        frame[column] = frame[column].astype(object).where(rng.random(len(frame)) > 0.05, blank)
    return frame


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got["transaction_id"].tolist() == want["transaction_id"].tolist()
    a, b = got.iloc[:, 1:].to_numpy(dtype=float), want.iloc[:, 1:].to_numpy(dtype=float)
    differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
    wrong = sorted({str(want.columns[1 + j]) for j in np.nonzero(differ)[1]})
    assert not wrong, f"{int(differ.sum())} values differ, in {wrong}"


def test_dask_features_equal_single_process(client: object, history: pd.DataFrame) -> None:
    want = OfflineFeatures().transform(history)
    cut = [0, 900, 900, 4000, 5500, len(history)]  # uneven, one partition empty
    pieces = [history.iloc[a:b] for a, b in itertools.pairwise(cut)]
    frame = dd.concat([dd.from_pandas(p, npartitions=1, sort=False) for p in pieces])
    got = dask_features(frame, partitions=3).compute()
    assert got.index.name == POSITION
    assert got.index.tolist() == list(range(len(history)))
    _same(got.reset_index(drop=True), want)


def test_card_merchant_is_computed_with_the_card() -> None:
    blocks = {b.entities[0]: b for b in entity_blocks(OfflineFeatures())}
    assert blocks["card"].entities == ("card", "card_merchant")
    assert blocks["card"].key == ("card_id",)
    assert all(len(b.raw_names) for b in blocks.values())
