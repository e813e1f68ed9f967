"""The weight-table row schema: columns, tensor column types, content hashes.

A row is one checkpoint:
    model_id  string   content hash of the weights (see `model_ids`)
    source    string   where the checkpoint came from, relative to the source URI
    step      int64    training step or epoch (null when unknown)
    label     int64    class label of the network (e.g. the digit an INR encodes), null when none
    <metric>  float64  one nullable column per metric, e.g. test_accuracy
    hparams   string   JSON object of hyper-parameters
    <key>     float32  one tensor column per parameter, named by its state-dict key, in spec.keys order

The tensor columns' Arrow type is one of `TENSOR_TYPES`; `bench/ingest.py` measures them and the zoo
card records the one a table uses. Every type stores the tensor row-major in torch order (out, in, *k).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from metanets.spec import NetworkSpec

SCHEMA_VERSION = 1
ID_COLUMNS = ("model_id", "source", "step", "label")
HPARAMS = "hparams"

LIST, FIXED_SIZE_LIST, FIXED_SHAPE_TENSOR = "list", "fixed_size_list", "fixed_shape_tensor"
TENSOR_TYPES = (LIST, FIXED_SIZE_LIST, FIXED_SHAPE_TENSOR)
# Chosen by bench/ingest.py (docs/weight_tables.md has the figures): reads into torch as fast as the
# others, and Ray Data turns it into (B, *shape) ndarrays instead of object arrays.
DEFAULT_TENSOR_TYPE = FIXED_SHAPE_TENSOR


def tensor_arrow_type(kind: str, shape: tuple[int, ...]) -> pa.DataType:
    numel = int(np.prod(shape)) if shape else 1
    if kind == LIST:
        return pa.list_(pa.float32())
    if kind == FIXED_SIZE_LIST:
        return pa.list_(pa.float32(), numel)
    if kind == FIXED_SHAPE_TENSOR:
        return pa.fixed_shape_tensor(pa.float32(), list(shape))
    raise ValueError(f"unknown tensor column type {kind!r}; choose from {TENSOR_TYPES}")


def tensor_array(values: np.ndarray, kind: str, shape: tuple[int, ...]) -> pa.Array:
    """Arrow column from `values` of shape (n, numel), float32, C-contiguous (no copy for fixed types)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    n, numel = values.shape
    flat = pa.array(values.reshape(-1))
    if kind == LIST:
        offsets = pa.array(np.arange(0, (n + 1) * numel, numel, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat)
    storage = pa.FixedSizeListArray.from_arrays(flat, numel)
    if kind == FIXED_SIZE_LIST:
        return storage
    return pa.ExtensionArray.from_storage(tensor_arrow_type(kind, shape), storage)


def tensor_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Flat float32 values of a tensor column of any `TENSOR_TYPES` (no copy when it is one chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if isinstance(column, pa.ExtensionArray):
        column = column.storage
    if column.null_count:
        raise ValueError("tensor column holds nulls: the table is corrupt")
    return column.flatten().to_numpy(zero_copy_only=False)


def arch_schema(spec: NetworkSpec, metrics: list[str], tensor_type: str) -> pa.Schema:
    """The Parquet schema of one architecture's shards."""
    fields = [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("step", pa.int64()),
        pa.field("label", pa.int64()),
    ]
    fields += [pa.field(m, pa.float64()) for m in metrics]
    fields.append(pa.field(HPARAMS, pa.string()))
    for key, shape in spec.param_shapes().items():
        fields.append(pa.field(key, tensor_arrow_type(tensor_type, shape), nullable=False))
    return pa.schema(fields, metadata={"metazoo.arch_id": spec.arch_id})


def check_column_names(spec: NetworkSpec, metrics: list[str]) -> None:
    """Parameter keys and metric names must not collide with each other or the fixed columns."""
    reserved = set(ID_COLUMNS) | {HPARAMS, "arch", "split"}
    seen: set[str] = set()
    for name in list(metrics) + list(spec.keys):
        if name in reserved or name in seen:
            raise ValueError(f"column name {name!r} is used twice (or is reserved): rename the metric")
        seen.add(name)


def flat_rows(tensors: dict[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    """(n, P) float32 little-endian: each row's tensors one after the other in key order."""
    return np.concatenate([np.asarray(tensors[key], dtype="<f4") for key in keys], axis=1)


def model_ids(arch_id: str, tensors: dict[str, np.ndarray], keys: tuple[str, ...], flat=None) -> list[str]:
    """Content hashes of n checkpoints: sha256 of the arch_id, the keys, then the row's float32 bytes
    (little-endian) of every tensor in key order.

    `tensors[key]` is (n, numel) float32 in torch order, so the same network gets the same id whichever
    format it was ingested from; `flat` (`flat_rows(tensors, keys)`, when the caller has it) saves a
    copy. Returns 32 hex digits (128 bits) per row.
    """
    flat = flat_rows(tensors, keys) if flat is None else np.ascontiguousarray(flat, dtype="<f4")
    head = hashlib.sha256(f"{arch_id}\n{chr(10).join(keys)}\n".encode())
    out = []
    for row in flat:
        h = head.copy()
        h.update(row.data)
        out.append(h.hexdigest()[:32])
    return out


def finite_rows(tensors: dict[str, np.ndarray], flat=None) -> tuple[np.ndarray, dict[int, str]]:
    """(mask of rows whose tensors are all finite, {row: first key holding NaN or Inf}).

    With `flat` (the rows as one (n, P) array) the check is one pass; keys are looked up for bad rows only.
    """
    if flat is not None:
        ok = np.isfinite(flat).all(axis=1)
        bad = np.flatnonzero(~ok)
        if len(bad) == 0:
            return ok, {}
        _, first_bad = finite_rows({k: v[bad] for k, v in tensors.items()})
        return ok, {int(bad[i]): key for i, key in first_bad.items()}
    n = next(iter(tensors.values())).shape[0]
    ok = np.ones(n, dtype=bool)
    first_bad: dict[int, str] = {}
    for key, values in tensors.items():
        row_ok = np.isfinite(values).all(axis=1)
        for r in np.flatnonzero(~row_ok & ok):
            first_bad[int(r)] = key
        ok &= row_ok
    return ok, first_bad


def hparams_json(value: dict) -> str:
    """Canonical JSON text (sorted keys, NaN as null) so equal inputs give byte-equal rows."""
    clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in value.items()}
    return json.dumps(clean, sort_keys=True, default=_json_default)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"hyper-parameter value {value!r} is not JSON serialisable")
