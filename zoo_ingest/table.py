"""Reading weight tables: `open_table(uri)` -> `WeightTable`.

    table = open_table("s3://zoos/cnn", storage_options={"endpoint_url": ...})
    table.archs                      # {arch_id: NetworkSpec}
    for ws, targets in table.batches(256, split="train", steps=86, where={"test_accuracy": (0.2, None)}):
        ws.weights[0]                # (B, 1, n_out, n_in, *kernel) float32
        targets["test_accuracy"]     # (B,) float32, NaN where the metric is missing
    ds = table.to_ray_dataset(split="train", arch=arch_id)   # Ray Data over the same shards

Batches stream one Parquet row group at a time (row groups are ~32 MiB), so memory stays bounded
whatever the table's size. Each batch holds one architecture; a table with several yields them in turn.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from metanets.spec import NetworkSpec
from metanets.specs import spec_from_dict
from metanets.transformer import TransformerSpec, TransformerWeightSpace
from metanets.weight_space import WeightSpace
from zoo_ingest.card import CARD, LEGACY_CARD, CardError, read_card
from zoo_ingest.schema import SCHEMA_VERSION, tensor_values
from zoo_ingest.storage import Location


class TableError(ValueError):
    """The URL holds no complete weight table, or a request does not fit the table."""


def open_table(uri: str, storage_options: Mapping | None = None) -> WeightTable:
    """Open the weight table at `uri` (any fsspec URL; S3 settings as in `zoo_ingest.storage`)."""
    loc = Location(uri.rstrip("/"), dict(storage_options or {}))
    try:
        found = read_card(loc)
    except CardError as exc:
        raise TableError(str(exc)) from None
    if found is None:
        raise TableError(
            f"{uri}: no zoo card ({CARD}, or {LEGACY_CARD} in older tables), so no complete weight table "
            "(an ingest may be running or have stopped; rerun `metazoo ingest` with the same arguments to finish it)"
        )
    card, name = found
    version = card.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TableError(f"{loc.url_of(name)} has schema version {version}, this reader knows {SCHEMA_VERSION}")
    return WeightTable(loc, card)


def to_weight_space(columns: Mapping, spec: NetworkSpec) -> WeightSpace:
    """WeightSpace (B, 1, ...) from tensor columns: Arrow arrays (any tensor type) or numpy batches
    from Ray Data ((B, *shape) arrays, or object arrays of flat rows). Arrow input is not copied."""
    if isinstance(spec, TransformerSpec):
        flat = [_flat_column(columns[key], key) for key in spec.keys]
        return TransformerWeightSpace.from_flat(torch.from_numpy(np.concatenate(flat, axis=1)), spec)
    weights, biases = [], []
    batch = None
    for layer in spec.layers:
        pair = []
        for key, shape in ((layer.weight_key, layer.shape), (layer.bias_key, (layer.n_out,))):
            if key is None:
                pair.append(None)
                continue
            col = columns[key]
            if isinstance(col, pa.Array | pa.ChunkedArray):
                flat = tensor_values(col)
            else:
                flat = numpy_column(col, key)
            batch = len(flat) // int(np.prod(shape)) if flat.ndim == 1 else len(flat)
            with warnings.catch_warnings():  # Arrow buffers are read-only to numpy, but private to us
                warnings.simplefilter("ignore", UserWarning)
                pair.append(torch.from_numpy(flat).reshape(batch, 1, *shape))
        weights.append(pair[0])
        biases.append(pair[1] if pair[1] is not None else torch.zeros(batch, 1, layer.n_out))
    return WeightSpace(spec, tuple(weights), tuple(biases))


def _flat_column(col, name: str) -> np.ndarray:
    """One tensor column as (B, numel) float32, from Arrow or from a Ray Data numpy batch."""
    if isinstance(col, pa.Array | pa.ChunkedArray):
        values = tensor_values(col)
        return values.reshape(len(col), -1)
    flat = numpy_column(col, name)
    return flat.reshape(len(flat), -1).astype(np.float32, copy=False)


def numpy_column(col, name: str) -> np.ndarray:
    """One column of a Ray Data numpy batch as a plain (rows, ...) array. Ray Data hands a tensor column
    whose rows it could not prove equal in shape as an object array of per-row arrays; those are stacked
    (rows of unequal shape are an error naming the column `name` and the shapes)."""
    col = np.asarray(col)
    if col.dtype != object:
        return col
    try:
        return np.stack(list(col))
    except ValueError:
        shapes = sorted({np.shape(row) for row in col}, key=str)
        raise ValueError(f"column {name!r}: its rows differ in shape: {shapes[:4]}") from None


def _targets(table: pa.Table | pa.RecordBatch, metrics: list[str]) -> dict:
    out = {m: torch.from_numpy(table[m].to_numpy(zero_copy_only=False).astype(np.float32)) for m in metrics}
    for name in ("step", "label"):
        out[name] = torch.from_numpy(pc.fill_null(table[name], -1).to_numpy().astype(np.int64))
    out["model_id"] = table["model_id"].to_pylist()
    return out


class WeightTable:
    """A complete weight table: its zoo card, architectures, splits and readers."""

    def __init__(self, location: Location, card: dict):
        self.location = location
        self.card = card
        self.archs = {a["arch_id"]: spec_from_dict(a["spec"]) for a in card["architectures"]}
        self.row_counts = {a["arch_id"]: dict(a["rows"]) for a in card["architectures"]}
        self._files = {a["arch_id"]: a["files"] for a in card["architectures"]}

    uri = property(lambda self: self.location.url)
    zoo = property(lambda self: self.card["zoo"])
    splits = property(lambda self: list(self.card["splits"]))
    metrics = property(lambda self: list(self.card["columns"]["metrics"]))
    hparam_keys = property(lambda self: list(self.card["columns"]["hparam_keys"]))
    tensor_type = property(lambda self: self.card["tensor_type"])

    def __repr__(self) -> str:
        return f"WeightTable({self.uri!r}, zoo={self.zoo!r}, rows={self.card['rows']}, archs={len(self.archs)})"

    def num_rows(self, split: str | Iterable[str] | None = None, arch: str | None = None) -> int:
        splits = self._splits(split)
        return sum(n for a in self._arch_ids(arch) for s, n in self.row_counts[a].items() if s in splits)

    def files(self, split: str | Iterable[str] | None = None, arch: str | None = None) -> list[str]:
        """Filesystem paths (no scheme) of the shards; pair them with `self.location.arrow()[0]`."""
        splits = self._splits(split)
        return [
            self.location.full(f["path"]) for a in self._arch_ids(arch) for f in self._files[a] if f["split"] in splits
        ]

    def count_rows(
        self,
        split: str | Iterable[str] | None = None,
        arch: str | None = None,
        *,
        steps: int | Iterable[int] | None = None,
        where: Mapping[str, tuple[float | None, float | None]] | None = None,
        filter: pc.Expression | None = None,
    ) -> int:
        """Rows that `batches` would yield with the same filters (reads only the filter columns)."""
        expr = self._expression(steps, where, filter)
        if expr is None:
            return self.num_rows(split, arch)
        afs, _ = self.location.arrow()
        total = 0
        for arch_id in self._arch_ids(arch):
            paths = self.files(split, arch_id)
            if paths:
                # read one small column rather than Dataset.count_rows: its statistics path crashed
                # (segfault) once under concurrent Ray Data reads; this costs little and is plain scanning
                dataset = ds.dataset(paths, filesystem=afs, format="parquet")
                total += dataset.to_table(columns=["step"], filter=expr).num_rows
        return total

    def read_columns(
        self,
        columns: list[str],
        split: str | Iterable[str] | None = None,
        arch: str | None = None,
        *,
        steps: int | Iterable[int] | None = None,
        where: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> pa.Table:
        """The non-tensor `columns` (e.g. model_id, hparams) of the rows `batches` would yield."""
        expr = self._expression(steps, where, None)
        afs, _ = self.location.arrow()
        parts = [ds.dataset(paths, filesystem=afs, format="parquet").to_table(columns=columns, filter=expr)
                 for paths in (self.files(split, a) for a in self._arch_ids(arch)) if paths]
        return pa.concat_tables(parts) if parts else pa.table({c: pa.array([], pa.string()) for c in columns})

    def rejects(self) -> pa.Table:
        """All rejected inputs: columns source, reason, detail."""
        afs, _ = self.location.arrow()
        tables = [pq.read_table(self.location.full(rel), filesystem=afs) for rel in self.card["rejects"]["files"]]
        if not tables:
            return pa.table(
                {
                    "source": pa.array([], pa.string()),
                    "reason": pa.array([], pa.string()),
                    "detail": pa.array([], pa.string()),
                }
            )
        return pa.concat_tables(tables)

    # ---- streaming batches ----------------------------------------------------------------------
    def batches(
        self,
        batch_size: int = 256,
        *,
        split: str | Iterable[str] | None = None,
        arch: str | None = None,
        steps: int | Iterable[int] | None = None,
        where: Mapping[str, tuple[float | None, float | None]] | None = None,
        filter: pc.Expression | None = None,
        targets: Iterable[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> Iterator[tuple[WeightSpace, dict]]:
        """Yield `(WeightSpace, targets)` batches of rows matching the filters.

        steps: keep these steps; where: {column: (lo, hi)} inclusive bounds (None: open), rows with a
        missing value are dropped; filter: any extra pyarrow expression. targets: metric columns to
        return (default all), as float32 tensors with NaN for missing values, plus `step` and `label`
        (int64, -1 when missing) and `model_id` (list of str). Row groups are dealt round-robin to
        `rank` of `world_size` readers; `shuffle` shuffles their order with `seed`.
        """
        metrics = self.metrics if targets is None else list(targets)
        unknown = [m for m in metrics if m not in self.metrics]
        if unknown:
            raise TableError(f"{self.uri}: no metric column {unknown[0]!r} (metrics: {self.metrics})")
        expr = self._expression(steps, where, filter)
        afs, _ = self.location.arrow()
        rng = np.random.default_rng(seed)
        for arch_id in self._arch_ids(arch):
            paths = self.files(split, arch_id)
            if not paths:
                continue
            spec = self.archs[arch_id]
            columns = ["model_id", "step", "label", *metrics, *spec.keys]
            if expr is not None:  # filter columns not returned are read too, then dropped by _batch
                columns += [c for c in self._filter_columns(steps, where, filter) if c not in columns]
            units = self._row_groups(paths, expr, afs)
            if shuffle:
                units = [units[i] for i in rng.permutation(len(units))]
            buffer: list[pa.RecordBatch] = []  # rows carried over from the previous row group
            buffered = 0
            for rb in self._read(units[rank::world_size], columns, afs):  # one record batch per row group
                if expr is not None:
                    rb = rb.filter(expr)
                start = 0
                if buffered:  # complete the carried-over batch: the only copy, once per row group
                    head = rb.slice(0, batch_size - buffered)
                    buffer.append(head)
                    buffered += head.num_rows
                    start = head.num_rows
                    if buffered < batch_size:
                        continue
                    yield self._batch(pa.Table.from_batches(buffer), spec, metrics)
                    buffer, buffered = [], 0
                while rb.num_rows - start >= batch_size:  # zero-copy slices of the row group
                    yield self._batch(rb.slice(start, batch_size), spec, metrics)
                    start += batch_size
                if start < rb.num_rows:
                    buffer, buffered = [rb.slice(start)], rb.num_rows - start
            if buffered and not drop_last:
                yield self._batch(pa.Table.from_batches(buffer), spec, metrics)

    @staticmethod
    def _row_groups(paths: list[str], expr, afs) -> list[tuple[str, int, pq.FileMetaData]]:
        """(file, row group, file footer) units; with a filter, row groups whose statistics exclude it
        are skipped. Footers are read once, here."""
        footers = {p: pq.read_metadata(p, filesystem=afs) for p in paths}
        if expr is None:
            return [(p, i, md) for p, md in footers.items() for i in range(md.num_row_groups)]
        dataset = ds.dataset(paths, filesystem=afs, format="parquet")
        return [
            (frag.path, rg.row_groups[0].id, footers[frag.path])
            for frag in dataset.get_fragments()
            for rg in frag.split_by_row_group(expr)
        ]

    @staticmethod
    def _read(units, columns, afs) -> Iterator[pa.RecordBatch]:
        """One record batch per unit (row group), in order: a file's consecutive row groups in one reader,
        one row group in memory at a time, columns decoded in parallel.

        Each row group is its own `iter_batches` call: given several, pyarrow pre-buffers all of them
        at once, so a compacted shard of many row groups would be held whole."""
        for path, run in itertools.groupby(units, key=lambda u: u[0]):
            run = list(run)
            footer = run[0][2]
            pf = pq.ParquetFile(path, metadata=footer, filesystem=afs)
            for _, group, _ in run:
                rows = max(footer.row_group(group).num_rows, 1)
                yield from pf.iter_batches(batch_size=rows, row_groups=[group], columns=columns)

    def _batch(self, table: pa.Table | pa.RecordBatch, spec: NetworkSpec, metrics: list[str]):
        return to_weight_space({k: table[k] for k in spec.keys}, spec), _targets(table, metrics)

    # ---- Ray Data ---------------------------------------------------------------------------------
    def to_ray_dataset(
        self,
        split: str | Iterable[str] | None = None,
        arch: str | None = None,
        *,
        steps: int | Iterable[int] | None = None,
        where: Mapping[str, tuple[float | None, float | None]] | None = None,
        columns: list[str] | None = None,
        model_ids: Iterable[str] | None = None,
        **read_kwargs,
    ):
        """A Ray Data dataset over one architecture's shards (with `arch` and `split` columns from the
        paths). Turn its numpy batches into WeightSpaces with `to_weight_space(batch, table.archs[arch])`.
        `model_ids`: keep only these rows."""
        from ray.data.expressions import col

        from zoo_ingest.ray_runtime import ensure_ray

        (arch_id,) = self._one_arch(arch)
        ensure_ray()
        afs, _ = self.location.arrow()
        paths = self.files(split, arch_id)
        if not paths:
            raise TableError(f"{self.uri}: no rows for split {split!r} in arch {arch_id}")
        dataset = _read_parquet(paths, afs, read_kwargs)
        for name, op, value in self._conditions(steps, where):
            c = col(name)
            dataset = dataset.filter(expr=c.is_in(value) if op == "in" else (c >= value if op == ">=" else c <= value))
        if model_ids is not None:
            dataset = dataset.filter(expr=col("model_id").is_in(list(model_ids)))
        if columns is not None:
            dataset = dataset.select_columns(columns)
        return dataset

    # ---- helpers ----------------------------------------------------------------------------------
    def _splits(self, split) -> set[str]:
        wanted = set(self.splits) if split is None else {split} if isinstance(split, str) else set(split)
        unknown = wanted - set(self.splits)
        if unknown:
            raise TableError(f"{self.uri}: no split {sorted(unknown)[0]!r} (splits: {self.splits})")
        return wanted

    def _arch_ids(self, arch) -> list[str]:
        if arch is None:
            return sorted(self.archs)
        if arch not in self.archs:
            raise TableError(f"{self.uri}: no architecture {arch!r} (has {sorted(self.archs)})")
        return [arch]

    def _one_arch(self, arch) -> list[str]:
        ids = self._arch_ids(arch)
        if len(ids) != 1:
            raise TableError(f"{self.uri}: holds {len(ids)} architectures, each with its own columns; pass arch=")
        return ids

    def _conditions(self, steps, where) -> list[tuple[str, str, object]]:
        out = []
        if steps is not None:
            out.append(("step", "in", [int(steps)] if np.isscalar(steps) else [int(s) for s in steps]))
        for name, (lo, hi) in (where or {}).items():
            if name not in self.metrics and name not in ("step", "label"):
                raise TableError(f"{self.uri}: cannot filter on {name!r} (metrics: {self.metrics})")
            if lo is not None:
                out.append((name, ">=", lo))
            if hi is not None:
                out.append((name, "<=", hi))
        return out

    def _filter_columns(self, steps, where, extra) -> list[str]:
        names = [name for name, _, _ in self._conditions(steps, where)]
        if extra is not None:  # an arbitrary expression may use any non-tensor column: read them all
            names += ["model_id", "source", "step", "label", *self.metrics, "hparams"]
        return names

    def _expression(self, steps, where, extra) -> pc.Expression | None:
        expr = extra
        for name, op, value in self._conditions(steps, where):
            f = pc.field(name)
            e = f.isin(value) if op == "in" else (f >= value if op == ">=" else f <= value)
            expr = e if expr is None else expr & e
        return expr


def _read_parquet(paths: list[str], filesystem, read_kwargs: dict):
    """`ray.data.read_parquet` through Ray Data's file-list reader rather than its footer-indexing (V2) one.

    The V2 reader starts a pool of footer-reader actors on every execution of the dataset, i.e. every
    epoch of training, and kills them afterwards: on a small node that costs seconds per epoch before
    the first row arrives (measured 3.5-5 s on 8 shards, against 0.2 s here; bench/train.py). The table
    already knows its files, so listing them again buys nothing. The flag is read when the dataset is
    built, so it is set only around this call.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    previous = getattr(ctx, "use_datasource_v2", None)
    if previous is None:
        return ray.data.read_parquet(paths, filesystem=filesystem, **read_kwargs)
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(paths, filesystem=filesystem, **read_kwargs)
    finally:
        ctx.use_datasource_v2 = previous
