"""Writing one chunk's rows into Parquet shards, `arch=<arch_id>/split=<split>/part-<chunk>-<seq>.parquet`.

Rows are copied into a buffer per (architecture, split) until a row group's worth (`row_group_mb`) is
there, then appended to that partition's open file; a file is closed and published once it passes
`shard_mb`. Memory per task is therefore about one row group per open partition. Files are written to a local
spool and published atomically (`Location.spool`), so a reader never sees a partial shard. Shard names
depend only on the chunk and a sequence number, so a rerun of a chunk rewrites the same names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metanets.spec import NetworkSpec
from zoo_ingest.schema import arch_schema, tensor_array
from zoo_ingest.storage import Location

MiB = 1 << 20


@dataclass(frozen=True)
class WriteSettings:
    tensor_type: str
    compression: str = "zstd"
    compression_level: int | None = 1
    shard_mb: float = 128
    row_group_mb: float = 32
    compact_mb: float | None = None  # target of the compaction after the chunks (None: shard_mb; 0: off)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def shard_name(arch_id: str, split: str, chunk: int, seq: int) -> str:
    return f"arch={arch_id}/split={split}/part-{chunk:05d}-{seq:03d}.parquet"


def parquet_options(schema: pa.Schema, spec: NetworkSpec, settings: WriteSettings) -> dict:
    """Writer options: no dictionary or statistics on tensor columns (both cost time and help no
    reader); byte-stream-split floats when compressing (about 15% smaller with zstd)."""
    tensor_cols = set(spec.keys)
    opts = dict(
        compression=settings.compression,
        use_dictionary=["hparams"],
        write_statistics=[f.name for f in schema if f.name not in tensor_cols and f.name != "hparams"],
    )
    if settings.compression != "none":
        if settings.compression_level is not None:
            opts["compression_level"] = settings.compression_level
        opts["column_encoding"] = {f"{key}.list.element": "BYTE_STREAM_SPLIT" for key in spec.keys}
    return opts


class _Partition:
    """One (architecture, split) of a chunk: a row group being filled, and the open shard file.

    Rows are copied once, straight into preallocated per-key buffers of one row group (pages of an
    unfilled buffer are never touched, so a small partition costs little memory).
    """

    def __init__(self, spec: NetworkSpec, split: str, schema: pa.Schema, rows_per_group: int):
        self.spec, self.split, self.schema, self.rows_per_group = spec, split, schema, rows_per_group
        numel = {k: int(np.prod(shape)) for k, shape in spec.param_shapes().items()}
        self.buffers = {k: np.empty((rows_per_group, numel[k]), dtype=np.float32) for k in spec.keys}
        self.meta: list[pa.Table] = []
        self.fill = 0
        self.seq = 0
        self.file = None  # [ExitStack, ParquetWriter, local path, relative name, rows]


class ShardWriter:
    """Writes the rows of chunk `chunk`; `close()` returns the published files."""

    def __init__(
        self,
        dest: Location,
        chunk: int,
        metrics: list[str],
        settings: WriteSettings,
        on_publish: Callable[[int, int], None] | None = None,
    ):
        self.dest, self.chunk, self.metrics, self.settings = dest, chunk, metrics, settings
        self.on_publish = on_publish
        self.parts: dict[tuple[str, str], _Partition] = {}
        self.published: list[dict] = []

    def add(self, spec: NetworkSpec, split: str, meta: pa.Table, tensors: dict[str, np.ndarray], index=None) -> None:
        """Add rows: `meta` holds their non-tensor columns; `tensors[key]` is (n, numel) float32, of which
        the rows `index` are taken (all of them when None)."""
        part = self.parts.get((spec.arch_id, split))
        if part is None:
            schema = arch_schema(spec, self.metrics, self.settings.tensor_type)
            rows = max(1, int(self.settings.row_group_mb * MiB) // (4 * spec.num_params))
            part = self.parts[(spec.arch_id, split)] = _Partition(spec, split, schema, rows)
        n, done = meta.num_rows, 0
        while done < n:
            m = min(n - done, part.rows_per_group - part.fill)
            for key, buffer in part.buffers.items():
                out = buffer[part.fill : part.fill + m]
                if index is None:
                    out[...] = tensors[key][done : done + m]
                else:
                    np.take(tensors[key], index[done : done + m], axis=0, out=out)
            part.meta.append(meta.slice(done, m))
            part.fill += m
            done += m
            if part.fill == part.rows_per_group:
                self._flush(part)

    def close(self) -> list[dict]:
        for part in self.parts.values():
            if part.fill:
                self._flush(part)
            self._close_file(part)
        return self.published

    def abort(self) -> None:
        """Drop open files unpublished (the chunk failed; its rerun writes them again)."""
        for part in self.parts.values():
            if part.file is not None:
                stack, writer, *_ = part.file
                with contextlib.suppress(Exception):
                    writer.close()
                stack.__exit__(RuntimeError, RuntimeError("chunk aborted"), None)
                part.file = None

    def _flush(self, part: _Partition) -> None:
        """Write the filled rows as one row group; the buffers are reused (Arrow only borrows them)."""
        meta = pa.concat_tables(part.meta)
        keys = part.spec.keys
        columns = [meta[name] for name in part.schema.names[: len(part.schema) - len(keys)]]
        shapes = part.spec.param_shapes()
        columns += [tensor_array(part.buffers[k][: part.fill], self.settings.tensor_type, shapes[k]) for k in keys]
        table = pa.Table.from_arrays(columns, schema=part.schema)
        part.meta, part.fill = [], 0
        self._write(part, table)

    def _write(self, part: _Partition, table: pa.Table) -> None:
        if part.file is None:
            name = shard_name(part.spec.arch_id, part.split, self.chunk, part.seq)
            part.seq += 1
            stack = contextlib.ExitStack()
            local = stack.enter_context(self.dest.spool(name))
            opts = parquet_options(part.schema, part.spec, self.settings)
            part.file = [stack, pq.ParquetWriter(local, part.schema, **opts), local, name, 0]
        file = part.file
        file[1].write_table(table, row_group_size=table.num_rows)
        file[4] += table.num_rows
        if os.path.getsize(file[2]) >= self.settings.shard_mb * MiB:
            self._close_file(part)

    def _close_file(self, part: _Partition) -> None:
        if part.file is None:
            return
        stack, writer, local, name, rows = part.file
        writer.close()
        size = os.path.getsize(local)
        stack.close()  # publishes
        part.file = None
        self.published.append(
            {"path": name, "arch_id": part.spec.arch_id, "split": part.split, "rows": rows, "bytes": size}
        )
        if self.on_publish is not None:
            self.on_publish(self.chunk, len(self.published))
