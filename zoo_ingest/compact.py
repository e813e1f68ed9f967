"""Compaction: merge the small shards an ingest leaves into shards of about a target size.

Every chunk writes its own shards per (architecture, split), so the splits that get few rows of a
chunk (val and test at 10% each) and the last shard of every partition come out small: many files of a
few MB beside full ones, and an object store charges its per-file overhead for each, every epoch. After
the chunks and the shape check, the small shards of each partition (under an eighth of the target
`compact_mb`, default `shard_mb`) are merged, in path order, into shards of about the target: same
rows, same ids, same order within a partition's merged shards. Larger shards are left as they are:
rewriting them would cost about as much as the ingest itself and save little per-file overhead (a
16 MiB shard already takes several times an object store's request latency to read). The merges
run as Ray tasks, one per merged shard (in this process with `use_ray=False`).

Crash safety, so that a compaction interrupted anywhere loses no row and doubles none on rerun:
  1. the plan (which inputs go to which output) is computed from the chunk markers and written first,
     to `_manifest/_compact.json`, with the ingest's fingerprint; a rerun reuses it as it is;
  2. per bin: the merged output is written to a spool and published atomically, then its inputs are
     deleted. On rerun a published output means the bin is done (its leftover inputs are deleted);
     an unpublished one means every input is still there, and the bin is merged again.
The zoo card, written after compaction, lists the merged shards; the finalize step reads every shard
back and checks its row count against the plan, and the input count against rows + rejects.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from metanets.specs import spec_from_dict
from zoo_ingest.storage import Location
from zoo_ingest.writer import MiB, WriteSettings, parquet_options

PLAN = "_manifest/_compact.json"
SMALL = 1 / 8  # shards under this fraction of the target are merged (16 MiB of 128)


class CompactionError(RuntimeError):
    """The compaction plan does not fit the folder (a file it needs is gone); names the file."""


def target_bytes(settings: WriteSettings) -> int:
    """0 disables compaction."""
    mb = settings.shard_mb if settings.compact_mb is None else settings.compact_mb
    return int(mb * MiB)


def plan_bins(files: list[dict], target: int) -> list[dict]:
    """Bins of small shards (under SMALL * target), per (arch, split), in path order: each bin's inputs
    add up to about `target` bytes (at most one small input over it). Other shards, and bins that would
    hold a single shard, are left as they are."""
    groups = defaultdict(list)
    for f in sorted(files, key=lambda f: f["path"]):
        if f["bytes"] < SMALL * target:
            groups[(f["arch_id"], f["split"])].append(f)
    bins = []
    for (arch_id, split), small in sorted(groups.items()):
        current: list[dict] = []
        seq = 0
        for f in small:
            current.append(f)
            if sum(g["bytes"] for g in current) >= target:
                seq = _close(bins, current, arch_id, split, seq)
                current = []
        _close(bins, current, arch_id, split, seq)
    return bins


def _close(bins: list[dict], current: list[dict], arch_id: str, split: str, seq: int) -> int:
    if len(current) < 2:
        return seq
    first = current[0]["path"].rsplit("/", 1)[1].removeprefix("part-").split("-")[0]
    # "-c" keeps compacted names apart from chunk shards (`part-<chunk>-<seq>`), which reruns may delete
    out = f"arch={arch_id}/split={split}/part-{first}-c{seq:03d}.parquet"
    bins.append(
        {
            "out": out,
            "arch_id": arch_id,
            "split": split,
            "inputs": [f["path"] for f in current],
            "rows": sum(f["rows"] for f in current),
        }
    )
    return seq + 1


def compact(
    dest: Location,
    files: list[dict],
    specs: dict[str, dict],
    settings: WriteSettings,
    fingerprint: str,
    hook: Callable[[str, int], None] | None = None,
    use_ray: bool = False,
) -> list[dict]:
    """Compact `files` (the chunk markers' shard records) in place; returns the table's shard records.

    `hook(phase, bin)` is called with phase "merging" (part of the output written, nothing published),
    "written" (output published, inputs not yet deleted) and "deleted"; tests raise in it to interrupt
    the compaction at each of those points.
    """
    target = target_bytes(settings)
    if target <= 0:
        return files
    bins = _load_plan(dest, fingerprint)
    if bins is None:
        bins = plan_bins(files, target)
        if not bins:
            return files
        dest.write_bytes(PLAN, json.dumps({"fingerprint": fingerprint, "target": target, "bins": bins}).encode())
    sizes = {i: _done_size(dest, b) for i, b in enumerate(bins)}
    todo = [(i, b) for i, b in enumerate(bins) if sizes[i] is None]
    for i, size in _merge_all(dest, todo, specs, settings, hook, use_ray):
        sizes[i] = size
        if hook:
            hook("written", i)
        dest.delete(bins[i]["inputs"])
        if hook:
            hook("deleted", i)
    merged: dict[str, dict] = {}
    for i, b in enumerate(bins):
        dest.delete(b["inputs"])  # a bin published before a crash: its inputs may still be there
        size = sizes[i]
        merged[b["out"]] = {
            "path": b["out"],
            "arch_id": b["arch_id"],
            "split": b["split"],
            "rows": b["rows"],
            "bytes": size,
        }
    gone = {p for b in bins for p in b["inputs"]}
    return [f for f in files if f["path"] not in gone] + list(merged.values())


def _merge_all(dest, todo, specs, settings, hook, use_ray):
    """Merge the bins of `todo` [(index, bin)]; yields (index, size) as each output is published."""
    if not use_ray:
        for i, b in todo:
            yield i, _merge(dest, b, spec_from_dict(specs[b["arch_id"]]), settings, lambda p, i=i: hook and hook(p, i))
        return
    if not todo:
        return
    import ray

    from zoo_ingest.ray_runtime import ensure_ray

    ensure_ray()
    task = ray.remote(num_cpus=1, max_retries=3)(_merge_task)
    pending = {task.remote(dest, b, specs[b["arch_id"]], settings): i for i, b in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(ready[0]), ray.get(ready[0])


def _merge_task(dest: Location, b: dict, spec: dict, settings: WriteSettings) -> int:
    return _merge(dest, b, spec_from_dict(spec), settings, lambda phase: None)


def _load_plan(dest: Location, fingerprint: str) -> list[dict] | None:
    try:
        plan = json.loads(dest.read_bytes(PLAN))
    except FileNotFoundError:
        return None
    return plan["bins"] if plan.get("fingerprint") == fingerprint else None


def _done_size(dest: Location, b: dict) -> int | None:
    """The published output's size, or None when the bin still has to be merged."""
    try:
        info = dest.fs.info(dest.full(b["out"]))
    except FileNotFoundError:
        return None
    return int(info.get("size") or 0)


def _merge(dest: Location, b: dict, spec, settings: WriteSettings, hook: Callable[[str], None]) -> int:
    """Write the bin's inputs, in order, as one shard with row groups of about `row_group_mb`."""
    afs, _ = dest.arrow()
    missing = [p for p in b["inputs"] if not dest.exists(p)]
    if missing:
        raise CompactionError(
            f"{dest.url_of(missing[0])}: a shard to compact into {b['out']} is gone and the merged shard was never "
            "written; rerun the ingest with --overwrite"
        )
    rows_per_group = max(1, int(settings.row_group_mb * MiB) // (4 * spec.num_params))
    schema = pq.read_schema(dest.full(b["inputs"][0]), filesystem=afs)
    with dest.spool(b["out"]) as local:
        with pq.ParquetWriter(local, schema, **parquet_options(schema, spec, settings)) as writer:
            pending: list[pa.RecordBatch] = []
            held = 0
            for path in b["inputs"]:
                for batch in pq.ParquetFile(dest.full(path), filesystem=afs).iter_batches(batch_size=rows_per_group):
                    pending.append(batch)
                    held += batch.num_rows
                    while held >= rows_per_group:
                        table = pa.Table.from_batches(pending).combine_chunks()
                        writer.write_table(table.slice(0, rows_per_group), row_group_size=rows_per_group)
                        rest = table.slice(rows_per_group)
                        pending, held = rest.to_batches(), rest.num_rows
                        hook("merging")
            if held:
                writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=held)
                hook("merging")
        size = os.path.getsize(local)
    return size
