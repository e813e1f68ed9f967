"""`ingest`: turn a model zoo into a weight table, as Ray tasks over chunks of the inputs.

    source plan (driver) -> chunks -> Ray tasks (read, validate, hash, split, write shards + marker)
                         -> finalize (driver): shape check, duplicates, _zoo.json last

Reruns are idempotent: a table whose zoo card has the same fingerprint (source listing + settings) is
left as it is; an incomplete table resumes, skipping chunks that have a marker and deleting the shards
of chunks that do not. A complete table with another fingerprint is only replaced with `overwrite`.
The destination is checked first and the source planned before anything is written, so a bad
destination or a broken source folder fails fast and leaves an existing table untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from zoo_ingest.card import delete_cards, read_card
from zoo_ingest.chunk import ChunkJob
from zoo_ingest.finalize import IngestError, IngestSummary, finalize, summary_from_card
from zoo_ingest.runner import run_chunks
from zoo_ingest.schema import DEFAULT_TENSOR_TYPE, SCHEMA_VERSION, TENSOR_TYPES
from zoo_ingest.sources import make_source
from zoo_ingest.sources.base import SourceError
from zoo_ingest.splits import SplitPolicy, assign, resolve_network
from zoo_ingest.storage import Location
from zoo_ingest.writer import WriteSettings

log = logging.getLogger(__name__)
TABLE_ENTRIES = re.compile(r"^(_?zoo\.json|_manifest|_rejects|_probe-\w+|arch=[^/]+|\..*)$")
PART = re.compile(r"_?part-(\d+)(?:-\d+)?\.parquet$")  # shards and rejects of a chunk


@dataclass
class IngestSettings:
    """Everything that decides a table's rows and layout (recorded in the zoo card)."""

    format: str
    zoo: str
    split: SplitPolicy = field(default_factory=SplitPolicy)
    write: WriteSettings = field(default_factory=lambda: WriteSettings(DEFAULT_TENSOR_TYPE))
    source_options: dict = field(default_factory=dict)
    chunk_rows: int | None = None
    shapes: str = "majority"  # majority: reject shapes that differ from their architecture; all: keep

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "zoo": self.zoo,
            "split": self.split.to_dict(),
            "write": self.write.to_dict(),
            "source_options": self.source_options,
            "chunk_rows": self.chunk_rows,
            "shapes": self.shapes,
        }


def _local_abs(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def ingest(
    source: str,
    out: str,
    format: str,
    *,
    zoo: str | None = None,
    split: str = "80/10/10",
    split_file: str | None = None,
    split_seed: int = 0,
    split_by: str | None = None,
    allow_pickle: bool = False,
    activation: str | None = None,
    metrics: list[str] | None = None,
    source_options: dict | None = None,
    tensor_type: str = DEFAULT_TENSOR_TYPE,
    compression: str = "zstd",
    shard_mb: float = 128,
    row_group_mb: float = 32,
    compact_mb: float | None = None,
    chunk_rows: int | None = None,
    shapes: str = "majority",
    overwrite: bool = False,
    storage_options: dict | None = None,
    source_storage_options: dict | None = None,
    use_ray: bool = True,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    progress: bool | Callable[[int, int], None] = True,
    task_hook=None,
    compact_hook=None,
) -> IngestSummary:
    """Ingest the zoo at `source` (format `smallcnnzoo`, `nfn-siren` or `checkpoints`) into a table at `out`.

    `storage_options` configure `out` (and `source`, unless `source_storage_options` is given); for S3:
    `endpoint_url`, `region`, `key`, `secret`, `token` override the AWS_* environment variables.
    `source_options` are format options (`glob`, `label_pattern`, `index_pattern`, `metadata`, ...).
    `use_ray=False` runs the chunks in this process (debugging, tiny zoos). `progress`: a bar on
    stderr that moves per batch of checkpoints read and written, or a callable `progress(done, total)`.
    `task_hook(chunk, n_files)` is called in the task after each published shard (tests use it to kill
    a worker mid-chunk).
    `compact_mb` is the target size of the shards that compaction merges the small per-chunk shards
    into (default `shard_mb`; 0 keeps them); `compact_hook(phase, bin)` is called as compaction goes
    (`zoo_ingest.compact.compact`; tests raise in it to interrupt it).
    Returns the summary; raises SourceError, StorageError or IngestError with a message naming the cause.
    """
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"tensor_type {tensor_type!r}: choose from {TENSOR_TYPES}")
    if compact_mb is not None and not compact_mb >= 0:
        raise ValueError(f"compact_mb {compact_mb!r}: give a size in MiB, or 0 to keep the per-chunk shards")
    if shapes not in ("majority", "all"):
        raise ValueError(f"shapes {shapes!r}: choose 'majority' or 'all'")
    t0 = time.perf_counter()
    # resolved(): S3 settings from this process's environment travel to the tasks explicitly
    dest = Location(_local_abs(out).rstrip("/"), dict(storage_options or {})).resolved()
    src_loc = Location(_local_abs(source), dict(source_storage_options or storage_options or {})).resolved()
    options = dict(source_options or {})
    options.update(
        {k: v for k, v in dict(allow_pickle=allow_pickle, activation=activation, metrics=metrics).items() if v}
    )
    policy = SplitPolicy.parse(split, split_file=split_file, seed=split_seed, by=split_by)
    settings = IngestSettings(
        format=format,
        zoo=zoo or os.path.basename(src_loc.url.rstrip("/")) or format,
        split=policy,
        write=WriteSettings(
            tensor_type, compression, 1 if compression == "zstd" else None, shard_mb, row_group_mb, compact_mb
        ),
        source_options=options,
        chunk_rows=chunk_rows,
        shapes=shapes,
    )
    dest.check_writable()  # fail fast, before reading the source
    src = make_source(format, src_loc, **options)
    try:
        plan = src.plan()
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{src_loc.url}: cannot read the source ({type(exc).__name__}: {exc})") from exc
    n = plan.inputs.num_rows
    policy = resolve_network(policy, *src.network_key(plan))
    settings.split = policy
    split_text = _read_split_file(policy.file, src_loc.options) if policy.file else None
    assignment = assign(
        policy,
        plan.inputs["source"].to_pylist(),
        plan.inputs["index"].to_pylist(),
        plan.inputs["step"].to_pylist(),
        plan.inputs["hparams"].to_pylist(),
        split_text,
    )
    inputs = plan.inputs.append_column("split", pa.array(assignment.rows, pa.string()))
    rows_per_chunk = chunk_rows or _auto_chunk_rows(n, plan.row_bytes, shard_mb)
    settings.chunk_rows = rows_per_chunk
    fingerprint = _fingerprint(src_loc.url, plan.listing, settings, split_text)

    existing = _read_card(dest)
    if existing is not None and existing.get("fingerprint") == fingerprint and not overwrite:
        log.info("%s is already complete for this input and these settings", dest.url)
        return summary_from_card(existing, dest.url, time.perf_counter() - t0, already_complete=True)
    if existing is not None and not overwrite:
        raise IngestError(
            f"{dest.url} already holds a complete weight table from another input or other settings; "
            "choose another --out, or pass --overwrite to replace it"
        )
    _prepare(dest, fingerprint, overwrite or existing is not None)

    chunks = [(k, lo, min(lo + rows_per_chunk, n)) for k, lo in enumerate(range(0, n, rows_per_chunk))]
    done = _done_markers(dest, fingerprint)
    _delete_unfinished(dest, set(done))
    todo = [c for c in chunks if c[0] not in done]
    jobs = [
        # take() copies: a sliced table would pickle all of `inputs` into every task
        ChunkJob(k, inputs.take(pa.array(range(lo, hi))), src, dest, plan.metrics, settings.write, policy, fingerprint)
        for k, lo, hi in todo
    ]
    new = run_chunks(
        jobs,
        assignment.by_model_id,
        use_ray,
        ray_address,
        num_cpus,
        progress,
        n - sum(done[k]["inputs"] for k in done),
        task_hook,
    )
    markers = [done.get(k) or new[k] for k, _, _ in chunks]
    card = finalize(dest, markers, plan, settings, src_loc.url, fingerprint, SCHEMA_VERSION, compact_hook, use_ray)
    written = sum(f["bytes"] for m in new.values() for f in m["files"])
    summary = summary_from_card(
        card,
        dest.url,
        time.perf_counter() - t0,
        written=written,
        resumed=len(done),
        inputs_run=sum(m["inputs"] for m in new.values()),
    )
    log.debug("%s", summary.format())
    return summary


def _auto_chunk_rows(n: int, row_bytes: int, shard_mb: float) -> int:
    """About one shard of rows per chunk, but at least 8 chunks when the zoo allows (load balance)."""
    by_size = max(1, int(shard_mb * (1 << 20)) // max(1, row_bytes))
    return max(1, min(by_size, -(-n // 8)))


def _fingerprint(url: str, listing: dict, settings: IngestSettings, split_text: str | None) -> str:
    blob = json.dumps(
        {
            "source": url,
            "listing": listing,
            "settings": settings.to_dict(),
            "split_file": hashlib.sha256((split_text or "").encode()).hexdigest(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_split_file(url: str, options: dict) -> str:
    loc = Location(_local_abs(url), options)
    try:
        return loc.fs.cat_file(loc.path).decode()
    except FileNotFoundError:
        raise SourceError(f"split file {url}: not found") from None


def _read_card(dest: Location) -> dict | None:
    found = read_card(dest)
    return None if found is None else found[0]


def _prepare(dest: Location, fingerprint: str, replace: bool) -> None:
    """Refuse a folder holding other data; clear a table being replaced or left by other settings."""
    try:
        entries = [e.rstrip("/").rsplit("/", 1)[-1] for e in dest.fs.ls(dest.path, detail=False)]
    except FileNotFoundError:
        entries = []
    foreign = sorted(e for e in entries if not TABLE_ENTRIES.match(e))
    if foreign:
        raise IngestError(
            f"{dest.url} holds files that are not part of a weight table (e.g. {foreign[0]!r}); "
            "choose an empty folder or an existing table"
        )
    stale = any(m.get("fingerprint") != fingerprint for m in _markers(dest))
    if replace or stale:
        if stale and not replace:
            log.warning("%s: clearing an unfinished ingest made with other settings", dest.url)
        delete_cards(dest)  # first: from here on the table is incomplete
        dest.delete(dest.glob("arch=*/split=*/*") + dest.glob("_rejects/*") + dest.glob("_manifest/*"))


def _markers(dest: Location) -> list[dict]:
    out = []
    for rel in dest.glob("_manifest/_chunk-*.json"):
        try:
            out.append(json.loads(dest.read_bytes(rel)))
        except (FileNotFoundError, ValueError):
            continue
    return out


def _done_markers(dest: Location, fingerprint: str) -> dict[int, dict]:
    return {m["chunk"]: m for m in _markers(dest) if m.get("fingerprint") == fingerprint}


def _delete_unfinished(dest: Location, done: set[int]) -> None:
    """Shards and rejects of chunks without a marker (a crashed run) and leftover temporary files."""
    doomed = []
    for rel in dest.glob("arch=*/split=*/*") + dest.glob("_rejects/*"):
        name = rel.rsplit("/", 1)[-1]
        m = PART.match(name)
        if name.startswith(".") or (m and int(m.group(1)) not in done):
            doomed.append(rel)
    dest.delete(doomed)
