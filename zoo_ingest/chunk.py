"""One ingest task: read a chunk of the inputs, validate, hash, split and write its shards.

A chunk is a fixed run of input rows. Its task writes its shards and its rejects, and only then its
marker `_manifest/_chunk-<k>.json` (the files, row counts and rejects). A chunk with a marker is done; a
rerun skips it. A chunk without one is redone from scratch under the same file names.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zoo_ingest.schema import finite_rows, model_ids
from zoo_ingest.sources.base import NON_FINITE, NOT_IN_SPLIT_FILE, Reject, Source, WeightBatch
from zoo_ingest.splits import SplitPolicy
from zoo_ingest.storage import Location
from zoo_ingest.writer import ShardWriter, WriteSettings

REJECT_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


# Files in the `_` folders have `_` names too: readers that skip hidden files but not hidden folders
# (polars' `hidden_file_prefix`) then read the table's folder as the shards alone.
def marker_name(chunk: int) -> str:
    return f"_manifest/_chunk-{chunk:05d}.json"


def rejects_name(chunk: int) -> str:
    return f"_rejects/_part-{chunk:05d}.parquet"


@dataclass
class ChunkJob:
    chunk: int
    inputs: pa.Table  # the chunk's rows of the plan's inputs, plus column `split` (see splits.assign)
    source: Source
    dest: Location
    metrics: list[str]
    write: WriteSettings
    split: SplitPolicy
    fingerprint: str


class Progress:
    """Counts a chunk's inputs as they are read and handed to the writer, and sends the running count
    `send(chunk, rows_done)` at most every `every` seconds (and once at the end): a progress bar then
    moves per batch of rows, not per finished chunk. A retried chunk starts again from 0."""

    def __init__(self, send: Callable[[int, int], None] | None, chunk: int, every: float = 0.0):
        self.send, self.chunk, self.every = send, chunk, every
        self.done, self.last = 0, time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.send is not None and now - self.last >= self.every:
            self.last = now
            self.send(self.chunk, self.done)

    def close(self) -> None:
        if self.send is not None:
            self.send(self.chunk, self.done)


def run_chunk(
    job: ChunkJob,
    split_by_model_id: dict | None = None,
    hook: Callable | None = None,
    report: Callable[[int, int], None] | None = None,
    report_every: float = 0.0,
) -> dict:
    """Process one chunk and return its marker (also written to `_manifest/`).

    `report(chunk, rows_done)` gets the running count of inputs done (read, checked and buffered or
    written), per batch of rows the source yields, at most every `report_every` seconds."""
    progress = Progress(report, job.chunk, report_every)
    inputs = job.inputs
    names = inputs["source"].to_pylist()
    presplit = inputs["split"].to_pylist()
    meta = inputs.select(["source", "step", "label", *job.metrics, "hparams"])
    rejects: list[tuple[str, str, str]] = []
    writer = ShardWriter(job.dest, job.chunk, job.metrics, job.write, on_publish=hook)
    specs = {}
    try:
        for item in job.source.read(inputs):
            if isinstance(item, Reject):
                rejects.append((names[item.row], item.reason, item.detail))
                progress.add(1)
                continue
            specs[item.spec.arch_id] = item.spec.to_dict()
            for split, pos, ids in _route(item, names, presplit, job.split, split_by_model_id, rejects):
                table = meta.take(pa.array(item.rows[pos]))
                table = table.add_column(0, "model_id", pa.array(ids, pa.string()))
                whole = len(pos) == len(item.rows)
                writer.add(item.spec, split, table, item.tensors, None if whole else pos)
            progress.add(len(item.rows))
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    rejects_file = None
    if rejects:
        rejects_file = rejects_name(job.chunk)
        table = pa.Table.from_pylist([dict(zip(REJECT_SCHEMA.names, r)) for r in rejects], schema=REJECT_SCHEMA)
        with job.dest.spool(rejects_file) as local:
            pq.write_table(table, local)
    marker = {
        "fingerprint": job.fingerprint,
        "chunk": job.chunk,
        "inputs": inputs.num_rows,
        "files": files,
        "rejects": dict(Counter(r[1] for r in rejects)),
        "rejects_file": rejects_file,
        "specs": specs,
    }
    job.dest.write_bytes(marker_name(job.chunk), json.dumps(marker, indent=1).encode())
    progress.close()
    return marker


def _route(item: WeightBatch, names, presplit, policy: SplitPolicy, by_model_id, rejects):
    """Drop non-finite rows (rejects), hash the rest, and yield (split, positions in the batch, model_ids).

    Positions index `item.tensors`; the writer gathers them when it writes (one copy, not two).
    """
    ok, first_bad = finite_rows(item.tensors, item.flat)
    for r, key in sorted(first_bad.items()):
        row = int(item.rows[r])
        rejects.append((names[row], NON_FINITE, f"{names[row]}: {key} holds NaN or Inf"))
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        return
    if len(keep) == len(ok):
        ids = model_ids(item.spec.arch_id, item.tensors, item.spec.keys, item.flat)
    else:
        flat = None if item.flat is None else item.flat[keep]
        ids = model_ids(item.spec.arch_id, {k: v[keep] for k, v in item.tensors.items()}, item.spec.keys, flat)
    splits = []
    for row, model_id in zip(item.rows[keep], ids):
        split = presplit[row]
        if split is None:
            split = policy.by_hash(model_id) if by_model_id is None else by_model_id.get(model_id, "")
        if split == "":
            detail = f"{names[row]} (model_id {model_id}) is not in {policy.file}"
            rejects.append((names[row], NOT_IN_SPLIT_FILE, detail))
        splits.append(split)
    splits = np.array(splits, dtype=object)
    for split in sorted(set(splits) - {""}):
        sel = np.flatnonzero(splits == split)
        yield split, keep[sel], [ids[i] for i in sel]
