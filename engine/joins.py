"""A partitioned hash join on disk, for tables larger than memory, that keeps the left side's order.

Rows go to `n` Arrow IPC files by a hash of their key (`Partitions`), each numbered by its position
in its input (`SEQ`); `join_partitions` joins partition i of one side with partition i of the
other, one partition in memory at a time, and `InOrder` reads the joined partitions back merged in
`SEQ` order, a range at a time. Nothing here knows what is joined: engine/export.py joins the
decision log with its feedback.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

SEQ = "_seq"  # a row's position in its input: what restores the input's order after the join


class Partitions:
    """Rows spread over `n` Arrow IPC files on disk by a hash of their `key` column."""

    def __init__(
        self,
        directory: Path,
        name: str,
        schema: pa.Schema,
        n: int,
        chunk_rows: int,
        key: str = "transaction_id",
    ) -> None:
        self.paths = [directory / f"{name}-{i}.arrow" for i in range(n)]
        self.schema = schema
        self.key = key
        self.chunk_rows = chunk_rows  # rows per batch on disk: what a reader holds at once
        self._writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        self._sinks: dict[int, pa.OSFile] = {}

    def write(self, batch: pa.RecordBatch) -> None:
        """Spread rows over the partitions by their key."""
        n = len(self.paths)
        if n == 1:
            self._writer(0).write_batch(batch)
            return
        groups: dict[int, list[int]] = {}
        for row, key in enumerate(batch.column(self.key).to_pylist()):
            groups.setdefault(zlib.crc32(key.encode()) % n, []).append(row)
        for part, rows in groups.items():
            self._writer(part).write_batch(batch.take(pa.array(rows, type=pa.int64())))

    def write_numbered(self, batch: pa.RecordBatch, start: int) -> None:
        """Spread the rows of `batch`, numbered in `SEQ` from `start`, keeping this schema's columns."""
        positions = pa.array(range(start, start + batch.num_rows), type=pa.int64())
        columns = [positions, *(batch.column(name) for name in self.schema.names if name != SEQ)]
        self.write(pa.RecordBatch.from_arrays(columns, schema=self.schema))

    def write_to(self, part: int, table: pa.Table) -> None:
        """Write rows into one given partition."""
        self._writer(part).write_table(table, max_chunksize=self.chunk_rows)

    def _writer(self, part: int) -> ipc.RecordBatchStreamWriter:
        if part not in self._writers:
            self._sinks[part] = pa.OSFile(str(self.paths[part]), "wb")
            self._writers[part] = ipc.new_stream(self._sinks[part], self.schema)
        return self._writers[part]

    def close(self) -> None:
        for part, writer in self._writers.items():
            writer.close()
            self._sinks[part].close()
        self._writers.clear()

    def read(self, part: int) -> pa.Table:
        path = self.paths[part]
        if not path.exists():
            return self.schema.empty_table()
        with pa.OSFile(str(path), "rb") as source:
            return ipc.open_stream(source).read_all()

    def reader(self, part: int) -> Iterator[pa.RecordBatch]:
        path = self.paths[part]
        if not path.exists():
            return
        with pa.OSFile(str(path), "rb") as source:
            yield from ipc.open_stream(source)


def join_partitions(
    left: Partitions,
    right: Partitions,
    out: Partitions,
    join: Callable[[pa.Table, pa.Table], pa.Table],
    done: Callable[[pa.Table, pa.Table, pa.Table], None],
) -> None:
    """`join` each partition of `left` with the same partition of `right` into `out`, one partition
    in memory at a time; `done(left rows, right rows, joined rows)` sees each before it is freed.
    The joined rows of a partition must be sorted by `SEQ` (`InOrder` merges them)."""
    for part in range(len(left.paths)):
        left_rows, right_rows = left.read(part), right.read(part)
        joined = join(left_rows, right_rows)
        done(left_rows, right_rows, joined)
        out.write_to(part, joined)
        del left_rows, right_rows, joined  # one partition in memory at a time
    out.close()


class InOrder:
    """Merges partitions, each sorted by `SEQ`, back into `SEQ` order, a range at a time."""

    def __init__(self, partitions: Partitions) -> None:
        self._schema = partitions.schema
        self._readers = [partitions.reader(i) for i in range(len(partitions.paths))]
        self._buffers = [self._schema.empty_table() for _ in self._readers]

    def take(self, upto: int) -> pa.Table:
        """Every row with `SEQ` below `upto` not taken yet, sorted by `SEQ`."""
        parts = []
        for i, reader in enumerate(self._readers):
            buffer = self._buffers[i]
            while buffer.num_rows == 0 or buffer[SEQ][-1].as_py() < upto:
                batch = next(reader, None)
                if batch is None:
                    break
                buffer = pa.concat_tables([buffer, pa.Table.from_batches([batch], self._schema)])
            below = pc.sum(pc.less(buffer[SEQ], upto)).as_py() or 0
            parts.append(buffer.slice(0, below))
            self._buffers[i] = buffer.slice(below)
        return pa.concat_tables(parts).sort_by(SEQ)
