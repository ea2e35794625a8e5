"""The offline executor on Dask DataFrames: the spec's point-in-time features for histories larger
than one process holds, equal to `OfflineFeatures` value for value.

An entity's aggregates depend only on its own payments and on the feedback events of those payments
(features/offline.py). So the history is shuffled once per *entity block* by the block's key, which
puts all of an entity's payments in one partition, and `OfflineFeatures.raw` runs there on the rows
in stream order. A block is an entity with the entities kept within it (card x merchant lives in the
card's head, so it is computed on the card's partitions); merchant and terminal fraud rates read the
labels of the merchant's own payments, which travel with them. Each block's raw columns then go back
to stream order (indexed by the global stream position), the blocks are joined side by side, and the
derived features, a function of one row's raw aggregates and fields, are computed per partition.

The input is a Dask DataFrame of a normalised history (training.history) in stream order across its
partitions: time-sorted, ties in file order.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask import delayed

from antifraud.engine.vocabulary import EVENT_TIME_COLUMNS
from antifraud.features.offline import OfflineFeatures
from antifraud.features.spec import FeatureSpec

POSITION = "_position"  # a payment's place in the whole stream (0, 1, ...): the index of the results


# what every entity's aggregates read besides its own fields: time, amount and feedback events
_EVENT_COLUMNS = ("timestamp", "amount", "bank_outcome", "label", *EVENT_TIME_COLUMNS.values())


@dataclass(frozen=True)
class EntityBlock:
    """Entities computed together on one shuffle: an entity and those kept within it."""

    key: tuple[str, ...]  # the fields the block's rows are partitioned by
    entities: tuple[str, ...]
    raw_names: tuple[str, ...]
    reads: tuple[str, ...]  # the history columns its aggregates read (the only ones shuffled)


def entity_blocks(features: OfflineFeatures) -> list[EntityBlock]:
    """The plan's entities grouped by the entity whose state holds them, in plan order."""
    members: dict[str, list[str]] = {}
    names: dict[str, list[str]] = {}
    reads: dict[str, list[str]] = {}
    for p in features.plan.entities:
        root = p.within or p.entity
        members.setdefault(root, []).append(p.entity)
        names.setdefault(root, []).extend(p.raw_names())
        fields = [*features.spec.entities[root], *features.spec.entities[p.entity]]
        reads.setdefault(root, list(_EVENT_COLUMNS)).extend(
            [*fields, *(d.field for d in p.distinct.values())]
        )
    return [
        EntityBlock(
            tuple(features.spec.entities[root]),
            tuple(members[root]),
            tuple(names[root]),
            tuple(dict.fromkeys(reads[root])),
        )
        for root in members
    ]


def with_positions(history: dd.DataFrame) -> dd.DataFrame:
    """The history indexed by stream position, with known divisions (one pass counts the rows)."""
    # the rows are counted on the very pieces that are numbered: Dask may partition a projection of
    # the same files differently (it fuses small Parquet partitions when few columns are read)
    pieces = history.to_delayed()
    lengths = np.asarray(dask.compute(*[delayed(len)(p) for p in pieces]), dtype=np.int64)
    offsets = np.r_[0, np.cumsum(lengths)]
    meta = history._meta.reset_index(drop=True)
    meta.index = pd.RangeIndex(0, name=POSITION)
    # divisions must increase strictly: empty partitions are left out
    kept = [i for i, n in enumerate(lengths) if n]
    if not kept:
        return dd.from_pandas(meta, npartitions=1)
    numbered = [delayed(_numbered)(pieces[i], int(offsets[i])) for i in kept]
    divisions = [int(offsets[i]) for i in kept] + [int(offsets[-1]) - 1]
    return dd.from_delayed(numbered, meta=meta, divisions=tuple(divisions), verify_meta=False)


def _numbered(part: pd.DataFrame, first: int) -> pd.DataFrame:
    out = part.reset_index(drop=True)
    out.index = pd.RangeIndex(first, first + len(out), name=POSITION)
    return out


def _block_raw(part: pd.DataFrame, features: OfflineFeatures, block: EntityBlock) -> pd.DataFrame:
    """One block's raw aggregates for the payments of one partition (whole entities), by position."""
    part = part.sort_index()  # stream order: the executor reads payments before each one
    raw = features.raw(part.reset_index(drop=True), entities=block.entities)
    columns = [features.plan.raw_index[name] for name in block.raw_names]
    return pd.DataFrame(raw[:, columns], columns=list(block.raw_names), index=part.index)


def dask_features(
    history: dd.DataFrame, spec: FeatureSpec | None = None, partitions: int | None = None
) -> dd.DataFrame:
    """Point-in-time features of every payment of a history in stream order (see the module docstring).

    Returns a lazy frame indexed by stream position: `transaction_id`, then one column per feature,
    exactly `OfflineFeatures(spec).transform` of the whole history. `partitions` is the number of
    partitions of each entity shuffle (default: the history's).
    """
    features = OfflineFeatures(spec)
    positioned = with_positions(history)
    divisions = positioned.divisions
    n = partitions or positioned.npartitions
    parts: list[dd.DataFrame] = [positioned]
    for block in entity_blocks(features):
        fields = [f for f in block.key if f in history.columns]
        # each block reads its own columns from the source and numbers them itself (the positions
        # are row numbers, whatever the partitions): the whole history is never held for all blocks
        read = with_positions(history[[c for c in block.reads if c in history.columns]])
        shuffled = read.shuffle(on=fields, npartitions=n) if fields else read
        meta = pd.DataFrame({name: pd.Series(dtype=float) for name in block.raw_names})
        meta.index = pd.Index([], dtype=np.int64, name=POSITION)
        raw = shuffled.map_partitions(_block_raw, features, block, meta=meta, align_dataframes=False)
        # back to stream order, partitioned as the history, so the blocks line up side by side
        parts.append(raw.reset_index().set_index(POSITION, divisions=list(divisions)))
    joined = dd.concat(parts, axis=1)
    meta_out = pd.DataFrame(
        {
            "transaction_id": pd.Series(dtype=object),
            **{f: pd.Series(dtype=float) for f in features.feature_names},
        }
    )
    meta_out.index = pd.Index([], dtype=np.int64, name=POSITION)
    return joined.map_partitions(
        lambda part: features.derive(part[features.plan.raw_names].to_numpy(dtype=float), part),
        meta=meta_out,
        align_dataframes=False,
    )
