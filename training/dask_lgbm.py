"""LightGBM trees trained on the active Dask cluster with `lightgbm.dask` (`--dask`, docs/scale.md).

The same parameters as the single-process training (`TrainConfig.lgb_params`), data-parallel over
the cluster's workers; the result is a plain `lightgbm.Booster`, saved in LightGBM's own format as
always. Choosing the number of trees: `lightgbm.dask` would evaluate the validation slice on each
worker's share of it, so the trees are grown to `max_trees` and the early-stopping rule of the
single-process training (stop `early_stopping_rounds` after the best validation average precision)
is applied afterwards to the whole slice, scored here one tree at a time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
from sklearn.metrics import average_precision_score

if TYPE_CHECKING:
    from distributed import Client


def dask_trees(
    client: Client,
    X: np.ndarray,
    y: np.ndarray,
    params: dict[str, Any],
    num_trees: int,
    feature_names: list[str],
) -> lgb.Booster:
    """A booster of `num_trees` trees trained by `lightgbm.dask` on the cluster of `client`."""
    import dask.array as da
    from lightgbm.dask import DaskLGBMClassifier

    workers = max(1, len(client.scheduler_info()["workers"]))
    rows = max(1, math.ceil(len(X) / workers))  # one block per worker: each trains on its share
    dx = da.from_array(X, chunks=(rows, X.shape[1]))
    dy = da.from_array(y, chunks=(rows,))
    # each worker trains with its own threads (lightgbm.dask sets them): num_threads would be ignored
    params = {k: v for k, v in params.items() if k != "num_threads"}
    model = DaskLGBMClassifier(client=client, n_estimators=num_trees, **params)
    model.fit(dx, dy, feature_name=feature_names)
    return model.booster_


def best_trees(booster: lgb.Booster, X_valid: np.ndarray, y_valid: np.ndarray, stopping_rounds: int) -> int:
    """The number of trees early stopping on the validation average precision would keep: the first
    best round, unless a round `stopping_rounds` after it came first (then training had stopped)."""
    raw = np.zeros(len(X_valid))
    best, best_round = -math.inf, 0
    for k in range(booster.num_trees()):
        raw += booster.predict(X_valid, raw_score=True, start_iteration=k, num_iteration=1)
        score = float(average_precision_score(y_valid, raw))
        if score > best:
            best, best_round = score, k + 1
        elif k + 1 - best_round >= stopping_rounds:
            break
    return best_round


def dask_select(
    client: Client,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    params: dict[str, Any],
    max_trees: int,
    stopping_rounds: int,
    feature_names: list[str],
) -> lgb.Booster:
    """Trees trained on `train` on the cluster, cut to the number early stopping on `valid` keeps."""
    grown = dask_trees(client, *train, params, max_trees, feature_names)
    keep = best_trees(grown, *valid, stopping_rounds)
    return lgb.Booster(model_str=grown.model_to_string(num_iteration=keep))
