"""The last step of an ingest, on the driver: check the shards, settle shapes, write the zoo card.

1. Shape check (`shapes="majority"`): checkpoints with the same keys and activation but other shapes
   than most of them are rejected as `shape_mismatch` (their rows go to `_rejects/_shape-mismatch.parquet`,
   written before their shards are deleted, so a crash here loses nothing). `shapes="all"` keeps every
   shape as an architecture of its own.
2. Small shards are merged into shards of about the target size (`zoo_ingest.compact`).
3. Every shard is read back (its `model_id` column): row counts must match the chunk markers, and
   repeated model_ids (copies of one network) are counted.
4. The zoo card (`_zoo.json`) is written, last. Input count = rows + rejects is checked before it is.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from metanets.specs import spec_from_dict
from zoo_ingest.card import write_card
from zoo_ingest.chunk import REJECT_SCHEMA
from zoo_ingest.compact import CompactionError, compact
from zoo_ingest.sources.base import SHAPE_MISMATCH
from zoo_ingest.storage import Location

MISMATCH_FILE = "_rejects/_shape-mismatch.parquet"


class IngestError(RuntimeError):
    """The ingest could not finish; the message says why and what to do."""


@dataclass
class IngestSummary:
    table: str
    inputs: int
    rows: int
    rejects: dict[str, int]
    rows_by_arch: dict[str, dict[str, int]]
    duplicates: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    inputs_run: int = 0
    resumed_chunks: int = 0
    already_complete: bool = False
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    def format(self) -> str:
        lines = [f"weight table {self.table}"]
        if self.already_complete:
            lines.append("  already complete for this input and these settings: nothing to do")
        lines.append(f"  inputs {self.inputs} = rows {self.rows} + rejects {self.rejected}")
        for arch, counts in sorted(self.rows_by_arch.items()):
            lines.append(f"  arch {arch}: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
        for reason, n in sorted(self.rejects.items()):
            lines.append(f"  rejected ({reason}): {n}")
        if self.duplicates:
            lines.append(f"  {self.duplicates} rows repeat the weights of another row (same model_id)")
        if self.resumed_chunks:
            lines.append(f"  resumed: {self.resumed_chunks} chunks were already done")
        if not self.already_complete:
            secs = max(self.seconds, 1e-9)
            lines.append(
                f"  wrote {self.bytes_written / 1e6:.1f} MB in {self.seconds:.1f} s: "
                f"{self.inputs_run / secs:.0f} ckpt/s, {self.bytes_written / 1e6 / secs:.1f} MB/s"
            )
        return "\n".join(lines)


def summary_from_card(
    card: dict,
    table: str,
    seconds: float,
    written: int = 0,
    resumed: int = 0,
    inputs_run: int = 0,
    already_complete: bool = False,
) -> IngestSummary:
    return IngestSummary(
        table=table,
        inputs=card["inputs"],
        rows=card["rows"],
        rejects=dict(card["rejects"]["by_reason"]),
        rows_by_arch={a["arch_id"]: dict(a["rows"]) for a in card["architectures"]},
        duplicates=card["duplicates"]["rows"],
        bytes_written=written,
        seconds=seconds,
        inputs_run=inputs_run,
        resumed_chunks=resumed,
        already_complete=already_complete,
        splits=dict(card["splits"]),
    )


def _family(spec: dict) -> tuple:
    """Architectures of one family share their state-dict keys and activation; only shapes differ."""
    parsed = spec_from_dict(spec)
    return tuple(parsed.keys), parsed.activation


def _differences(spec: dict, ref: dict) -> str:
    a, b = spec_from_dict(spec).param_shapes(), spec_from_dict(ref).param_shapes()
    return ", ".join(f"{k} {tuple(a[k])} vs {tuple(b[k])}" for k in a if k in b and tuple(a[k]) != tuple(b[k]))


def _settle_shapes(dest: Location, files: list[dict], specs: dict[str, dict], arch_rows: Counter) -> set[str]:
    """Reject minority shapes within each family; returns the rejected arch_ids."""
    families = defaultdict(list)
    for arch_id, spec in specs.items():
        families[_family(spec)].append(arch_id)
    losers: dict[str, str] = {}
    for members in families.values():
        if len(members) < 2:
            continue
        keep = max(members, key=lambda a: (arch_rows[a], a))
        for arch_id in members:
            if arch_id != keep:
                losers[arch_id] = keep
    if not losers:
        return set()
    afs, _ = dest.arrow()
    rows = []
    if dest.exists(MISMATCH_FILE):
        rows = pq.read_table(dest.full(MISMATCH_FILE), filesystem=afs).to_pylist()
    seen = {r["source"] for r in rows}
    for f in files:
        if f["arch_id"] in losers and dest.exists(f["path"]):
            ref = losers[f["arch_id"]]
            why = _differences(specs[f["arch_id"]], specs[ref])
            for source in pq.read_table(dest.full(f["path"]), columns=["source"], filesystem=afs)["source"].to_pylist():
                if source not in seen:
                    seen.add(source)
                    detail = f"{source}: shapes differ from the {arch_rows[ref]} checkpoints of arch {ref} ({why})"
                    rows.append({"source": source, "reason": SHAPE_MISMATCH, "detail": detail})
    rows.sort(key=lambda r: r["source"])
    with dest.spool(MISMATCH_FILE) as local:
        pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), local)
    for arch_id in losers:
        dest.delete_tree(f"arch={arch_id}")
    return set(losers)


def finalize(
    dest: Location,
    markers: list[dict],
    plan,
    settings,
    source_url: str,
    fingerprint: str,
    schema_version: int,
    compact_hook=None,
    use_ray: bool = False,
) -> dict:
    files = [f for m in markers for f in m["files"]]
    specs = {a: s for m in markers for a, s in m["specs"].items()}
    arch_rows = Counter()
    for f in files:
        arch_rows[f["arch_id"]] += f["rows"]
    rejects = Counter()
    for m in markers:
        rejects.update(m["rejects"])
    reject_files = [m["rejects_file"] for m in markers if m["rejects_file"]]
    losers = _settle_shapes(dest, files, specs, arch_rows) if settings.shapes == "majority" else set()
    if losers or dest.exists(MISMATCH_FILE):
        n_mismatch = pq.ParquetFile(dest.full(MISMATCH_FILE), filesystem=dest.arrow()[0]).metadata.num_rows
        rejects[SHAPE_MISMATCH] += n_mismatch
        reject_files.append(MISMATCH_FILE)
    files = [f for f in files if f["arch_id"] not in losers]
    try:
        files = compact(dest, files, specs, settings.write, fingerprint, compact_hook, use_ray)
    except CompactionError as exc:
        raise IngestError(str(exc)) from exc

    afs, _ = dest.arrow()
    ids = Counter()
    for f in files:
        try:
            column = pq.read_table(dest.full(f["path"]), columns=["model_id"], filesystem=afs)["model_id"]
        except (OSError, pa.ArrowException) as exc:
            raise IngestError(f"{dest.url_of(f['path'])}: cannot read back ({exc}); rerun with --overwrite") from exc
        if len(column) != f["rows"]:
            raise IngestError(f"{dest.url_of(f['path'])}: {len(column)} rows, its marker says {f['rows']}")
        ids.update(column.to_pylist())
    n_rows = sum(f["rows"] for f in files)
    n_inputs = plan.inputs.num_rows
    if n_rows + sum(rejects.values()) != n_inputs:
        raise IngestError(
            f"{dest.url}: {n_rows} rows + {sum(rejects.values())} rejects != {n_inputs} inputs; rerun with --overwrite"
        )
    by_arch = defaultdict(lambda: defaultdict(int))
    files_by_arch = defaultdict(list)
    splits = Counter()
    for f in sorted(files, key=lambda f: f["path"]):
        by_arch[f["arch_id"]][f["split"]] += f["rows"]
        splits[f["split"]] += f["rows"]
        files_by_arch[f["arch_id"]].append({k: f[k] for k in ("path", "split", "rows", "bytes")})
    architectures = []
    for arch_id in sorted(by_arch):
        spec = specs[arch_id]
        parsed = spec_from_dict(spec)
        shapes = parsed.param_shapes()
        kinds = {}  # Linear/Conv2d chains name each tensor's layer kind; other specs list plain tensors
        for layer in spec.get("layers", []) if isinstance(spec.get("layers"), list) else []:
            if isinstance(layer, dict) and "weight_key" in layer:
                kinds[layer["weight_key"]] = layer["kind"]
                if layer.get("bias_key"):
                    kinds[layer["bias_key"]] = "bias"
        params = [{"key": k, "shape": list(shapes[k]), "kind": kinds.get(k, "tensor")} for k in parsed.keys]
        architectures.append(
            {
                "arch_id": arch_id,
                "spec": spec,
                "activation": spec["activation"],
                "group": spec["group"],
                "params": params,
                "num_params": sum(_numel(p["shape"]) for p in params),
                "rows": dict(sorted(by_arch[arch_id].items())),
                "files": files_by_arch[arch_id],
            }
        )
    card = {
        "schema_version": schema_version,
        "zoo": settings.zoo,
        "format": settings.format,
        "source": source_url,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensor_type": settings.write.tensor_type,
        "columns": {
            "ids": ["model_id", "source", "step", "label"],
            "metrics": plan.metrics,
            "hparams": "hparams",
            "hparam_keys": plan.hparam_keys,
        },
        "inputs": n_inputs,
        "rows": n_rows,
        "splits": {s: splits.get(s, 0) for s in settings.split.names},
        "rejects": {
            "total": sum(rejects.values()),
            "by_reason": dict(sorted(rejects.items())),
            "files": sorted(reject_files),
        },
        "duplicates": {
            "rows": sum(c - 1 for c in ids.values() if c > 1),
            "model_ids": sum(1 for c in ids.values() if c > 1),
        },
        "architectures": architectures,
        "settings": settings.to_dict(),
    }
    write_card(dest, card)
    return card


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
