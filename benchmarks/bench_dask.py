"""The offline path on Dask at scale: features, training and evaluation of a large simulated history,
with time and peak memory (RSS of the client and of every worker), spilling to disk configured.

    nice -n 10 .venv/bin/python benchmarks/bench_dask.py --payments 1000000
    nice -n 10 .venv/bin/python benchmarks/bench_dask.py --payments 1000000 --compare

The history is written as a Parquet dataset (one file per day) by a fast generator: one simulated
world (training.simulator) replicated with fresh card, customer, device and email ids (merchants,
terminals and IPs shared, so those entities grow hot as in a real provider), each day's rows of all
replicas time-sorted into that day's file. Features run out of core (`dask_features` on
`dd.read_parquet`, written back as Parquet), the trees are trained with `lightgbm.dask` on the
training days and the model scores the last days (AUC, average precision). `--compare` trains the
single-process model (`lgb.train`, same parameters and trees) on the same features and reports
both models' quality on the same days. Prints one line per step, then a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import pandas as pd
import psutil
from distributed import Client, LocalCluster
from lightgbm.dask import DaskLGBMClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from antifraud.features.offline import OfflineFeatures
from antifraud.features.offline_dask import dask_features, with_positions
from antifraud.features.spec import load_spec
from antifraud.training.config import TrainConfig
from antifraud.training.simulator import simulate
from antifraud.training.train import scale_pos_weight

RENAMED = ("transaction_id", "card_id", "customer_id", "device_id", "email")  # one world per replica
GIB = 1 << 30


def generate(folder: Path, payments: int, days: int, cards: int, seed: int) -> int:
    """Write about `payments` payments as one Parquet file per day; returns the number written."""
    base = simulate(days=days, cards=cards, merchants=max(20, cards // 20), seed=seed)
    replicas = max(1, math.ceil(payments / len(base)))
    day = base["timestamp"].dt.floor("D")
    folder.mkdir(parents=True)
    written = 0
    for i, (_, rows) in enumerate(base.groupby(day, sort=True)):
        copies = []
        for r in range(replicas):
            copy = rows.copy()
            for column in RENAMED:
                text = copy[column].astype("string")
                copy[column] = (text + f"~{r}").astype(object).where(text.notna(), None)
            copies.append(copy)
        frame = pd.concat(copies).sort_values("timestamp", kind="stable").reset_index(drop=True)
        frame.to_parquet(folder / f"part-{i:05d}.parquet", index=False)
        written += len(frame)
    return written


class PeakRss:
    """Samples the RSS of this process and of the cluster's worker processes every 0.2 s."""

    def __init__(self, pids: list[int], spill: Path) -> None:
        self.spill, self.spill_peak = spill, 0
        self.processes = [psutil.Process(os.getpid())] + [psutil.Process(p) for p in pids]
        self.peak = [0] * len(self.processes)
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            rss = []
            for i, p in enumerate(self.processes):
                try:
                    value = p.memory_info().rss
                except psutil.Error:
                    value = 0
                rss.append(value)
                self.peak[i] = max(self.peak[i], value)
            self.total_peak = max(self.total_peak, sum(rss))
            self.spill_peak = max(self.spill_peak, _disk_use(self.spill))

    @contextlib.contextmanager
    def sampling(self) -> Iterator[PeakRss]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def summary(self) -> dict[str, float]:
        return {
            "client_peak_gib": round(self.peak[0] / GIB, 2),
            "worker_peak_gib": [round(v / GIB, 2) for v in self.peak[1:]],
            "sum_peak_gib": round(self.total_peak / GIB, 2),
            "spill_dir_peak_gib": round(self.spill_peak / GIB, 2),
        }


def _disk_use(folder: Path) -> int:
    """Bytes of the files under a folder whose files come and go (shuffle and spill files)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed since listed
                total += os.stat(os.path.join(root, name)).st_size
    return total


def features_step(history: Path, out: Path, partitions: int) -> None:
    """Features of the whole dataset, written with each payment's time and label as Parquet."""
    frame = dd.read_parquet(history, split_row_groups=False)
    features = dask_features(frame, partitions=partitions)
    labels = with_positions(frame)[["timestamp", "label"]]  # numbered as the features are
    joined = dd.concat([features, labels], axis=1)
    joined.to_parquet(out, write_index=False, name_function=lambda i: f"part-{i:05d}.parquet")  # stream order


def train_step(
    client: Client, features: Path, split: pd.Timestamp, trees: int
) -> tuple[lgb.Booster, dict[str, Any]]:
    """lightgbm.dask trees on the payments before `split` (the training days)."""
    names = load_spec().feature_names
    frame = dd.read_parquet(features, columns=[*names, "label", "timestamp"])
    train = frame[frame["timestamp"] < split]
    counts = train["label"].value_counts().compute()
    frauds, legit = int(counts.get(1, 0)), int(counts.get(0, 0))
    cfg = TrainConfig()
    params = cfg.lgb_params(scale_pos_weight(cfg, legit, frauds))
    params.pop("num_threads")  # lightgbm.dask gives each worker its own threads
    # one persisted frame: X and y cut from it keep the same partitions (lightgbm.dask pairs them)
    train = client.persist(train[[*names, "label"]].astype({n: "float32" for n in names}))
    model = DaskLGBMClassifier(client=client, n_estimators=trees, **params)
    model.fit(train[names], train["label"], feature_name=names)
    return model.booster_, {"train_payments": legit + frauds, "train_frauds": frauds, "params": params}


def evaluate_step(booster: lgb.Booster, features: Path, split: pd.Timestamp) -> dict[str, float]:
    """AUC and average precision of the model on the payments from `split` on."""
    names = load_spec().feature_names
    frame = dd.read_parquet(features, columns=[*names, "label", "timestamp"])
    test = frame[frame["timestamp"] >= split]

    def score(part: pd.DataFrame) -> pd.DataFrame:
        values = booster.predict(part[names].to_numpy(dtype=np.float32)) if len(part) else np.zeros(0)
        return pd.DataFrame({"score": values, "label": part["label"].to_numpy()}, index=part.index)

    meta = pd.DataFrame({"score": pd.Series(dtype=float), "label": pd.Series(dtype=np.int64)})
    got = test.map_partitions(score, meta=meta).compute()
    return {
        "test_payments": len(got),
        "test_frauds": int(got["label"].sum()),
        "auc": round(float(roc_auc_score(got["label"], got["score"])), 4),
        "ap": round(float(average_precision_score(got["label"], got["score"])), 4),
    }


def single_process(features: Path, split: pd.Timestamp, trees: int) -> dict[str, float]:
    """The same trees trained in one process on the same features, scored on the same days."""
    names = load_spec().feature_names
    frame = pd.read_parquet(features, columns=[*names, "label", "timestamp"])
    train, test = frame[frame["timestamp"] < split], frame[frame["timestamp"] >= split]
    cfg = TrainConfig()
    frauds = int(train["label"].sum())
    params = cfg.lgb_params(scale_pos_weight(cfg, len(train) - frauds, frauds))
    params["num_threads"] = 2
    booster = lgb.train(params, lgb.Dataset(train[names].to_numpy(np.float32), train["label"]), trees)
    scores = booster.predict(test[names].to_numpy(np.float32))
    return {
        "auc": round(float(roc_auc_score(test["label"], scores)), 4),
        "ap": round(float(average_precision_score(test["label"], scores)), 4),
    }


def check_exact(history: Path, features: Path) -> int:
    """Values that differ between the Dask features and `OfflineFeatures` on the whole history."""
    whole = pd.read_parquet(history)
    want = OfflineFeatures().transform(whole)
    got = pd.read_parquet(features, columns=list(want.columns))
    assert got["transaction_id"].tolist() == want["transaction_id"].tolist(), "payments out of order"
    a, b = got.iloc[:, 1:].to_numpy(dtype=float), want.iloc[:, 1:].to_numpy(dtype=float)
    return int((~((a == b) | (np.isnan(a) & np.isnan(b)))).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--cards", type=int, default=5_000, help="cards of the simulated world replicated")
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--test-days", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-gib", type=float, default=9.0, help="memory limit of each worker")
    parser.add_argument("--partitions", type=int, default=0, help="per entity shuffle (default: the days)")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and spill (default: a temp)")
    parser.add_argument("--compare", action="store_true", help="also train the single-process model")
    parser.add_argument("--check", action="store_true", help="compare every value with OfflineFeatures")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dask-"))
    history, features = work / "history", work / "features"
    shutil.rmtree(history, ignore_errors=True)
    shutil.rmtree(features, ignore_errors=True)
    summary: dict[str, Any] = {"payments_asked": args.payments, "workers": args.workers}

    t = time.perf_counter()
    summary["payments"] = generate(history, args.payments, args.days, args.cards, seed=7)
    summary["generate_s"] = round(time.perf_counter() - t, 1)
    print(f"generated {summary['payments']:,} payments in {summary['generate_s']} s", flush=True)
    split = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=args.days - args.test_days)

    # spill early: the shuffles of several entity blocks may be in flight at once
    config = {"distributed.worker.memory.target": 0.6, "distributed.worker.memory.spill": 0.7}
    with (
        dask.config.set(config),
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=int(args.memory_gib * GIB),
            local_directory=str(work / "spill"),
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        rss = PeakRss(pids, work / "spill")
        with rss.sampling():
            t = time.perf_counter()
            features_step(history, features, args.partitions or args.days)
            summary["features_s"] = round(time.perf_counter() - t, 1)
            print(f"features in {summary['features_s']} s  {rss.summary()}", flush=True)
            t = time.perf_counter()
            booster, trained = train_step(client, features, split, args.trees)
            summary["train_s"] = round(time.perf_counter() - t, 1)
            summary.update({k: v for k, v in trained.items() if k != "params"})
            print(
                f"trained {booster.num_trees()} trees in {summary['train_s']} s  {rss.summary()}", flush=True
            )
            t = time.perf_counter()
            summary["dask_model"] = evaluate_step(booster, features, split)
            summary["evaluate_s"] = round(time.perf_counter() - t, 1)
            print(f"evaluated in {summary['evaluate_s']} s: {summary['dask_model']}", flush=True)
        summary["memory"] = rss.summary()
    if args.compare:
        t = time.perf_counter()
        summary["single_process_model"] = single_process(features, split, args.trees)
        summary["single_process_train_s"] = round(time.perf_counter() - t, 1)
        print(f"single-process model: {summary['single_process_model']}", flush=True)
    if args.check:
        summary["values_differing_from_single_process"] = check_exact(history, features)
    print(json.dumps(summary, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
