"""The Dask cluster the offline commands run on with `--dask SCHEDULER` (docs/scale.md).

`dask_cluster("local")` starts a LocalCluster sized for this machine (one single-threaded worker
process per core, the memory split between them, spilling to a local folder); any other value is
a scheduler address to connect to. While the context is open it is the *active* client: the
offline steps that can run on Dask (features: `antifraud.training.dataset.compute_features`; trees:
`antifraud.training.train`) use it, and without one nothing changes. Dask is an optional extra
(`pip install 'antifraud[dask]'`): it is imported only when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from antifraud.features.spec import FeatureSpec
from antifraud.training.config import TrainingError

if TYPE_CHECKING:
    from distributed import Client

_ACTIVE: ContextVar[Client | None] = ContextVar("antifraud_dask_client", default=None)
# rows per partition when a history in memory is handed to the cluster: small enough that a
# partition's features (about 60 float columns) stay far below a worker's memory
PARTITION_ROWS = 500_000


def active_client() -> Client | None:
    """The client of the enclosing `dask_cluster` context, if any."""
    return _ACTIVE.get()


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@contextlib.contextmanager
def dask_cluster(scheduler: str, spill_dir: Path | None = None) -> Iterator[Client]:
    """A client on `scheduler` ("local": a new LocalCluster on this machine; else an address such as
    tcp://host:8786), active for the offline steps while the context is open."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise TrainingError("--dask needs the dask extra: pip install 'antifraud[dask]'") from exc
    with contextlib.ExitStack() as stack:
        if scheduler == "local":
            workers = os.cpu_count() or 1
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    # most of the memory, the rest for the client (this process) and the system
                    memory_limit=int(machine_memory() * 0.75 / workers),
                    local_directory=str(spill_dir) if spill_dir else None,
                    dashboard_address=None,
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(scheduler))
        token = _ACTIVE.set(client)
        try:
            yield client
        finally:
            _ACTIVE.reset(token)


def dask_transform(history: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """`OfflineFeatures(spec).transform(history)` computed on the active cluster (same values, same
    index), for a history held in memory."""
    import dask.dataframe as dd

    from antifraud.features.offline_dask import dask_features

    parts = max(1, -(-len(history) // PARTITION_ROWS))
    frame = dd.from_pandas(history.reset_index(drop=True), npartitions=parts, sort=True)
    workers = len(_required().scheduler_info()["workers"])
    out = dask_features(frame, spec, partitions=max(parts, workers)).compute()
    out.index = history.index
    return out


def _required() -> Client:
    client = active_client()
    if client is None:
        raise RuntimeError("no active Dask cluster (use dask_cluster)")
    return client
