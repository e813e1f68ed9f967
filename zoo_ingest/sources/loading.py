"""Loading one checkpoint file into a state dict, safely, and turning it into a `WeightBatch`.

`.safetensors` files load with safetensors. `.pt` / `.pth` / `.bin` / `.ckpt` files load with
`torch.load(weights_only=True)`: a file that needs code to unpickle (a custom class, argparse
arguments, ...) is refused as `needs_pickle` unless `allow_pickle` is set, which runs
`torch.load(weights_only=False)`: only for checkpoints you trust. Training checkpoints that wrap the
state dict (`{"state_dict": ..., "epoch": ...}`) are unwrapped.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from metanets.spec import NetworkSpec, SpecError
from metanets.specs import infer_spec
from metanets.transformer.spec import looks_like_transformer
from zoo_ingest.sources.base import CORRUPT, NEEDS_PICKLE, NO_ACTIVATION, UNSUPPORTED, Reject, WeightBatch
from zoo_ingest.storage import Location

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "params", "weights", "net")


class LoadError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def load_state_dict(data: bytes, name: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """State dict of the checkpoint bytes `data` (file `name`), as float32 numpy arrays."""
    if name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            obj = load(data)
        except (SafetensorError, ValueError, OSError) as exc:
            raise LoadError(CORRUPT, f"{name}: not a readable safetensors file ({exc})") from None
        # A safetensors header does not keep the state dict's order: restore the module order.
        return _as_arrays(dict(sorted(obj.items(), key=lambda kv: _natural_key(kv[0]))), name)
    obj = _torch_load(data, name, allow_pickle)
    return _as_arrays(_unwrap(obj, name), name)


def _natural_key(key: str) -> tuple:
    """`net.2.weight` < `net.10.weight`, `conv2.bias` < `conv10.weight`, weight before bias."""
    prefix, _, leaf = key.rpartition(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", prefix) if p)
    return parts, leaf != "weight", leaf


def _torch_load(data: bytes, name: str, allow_pickle: bool):
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found and not allow_pickle:
            raise LoadError(
                NEEDS_PICKLE,
                f"{name}: loading it would run pickled code ({found.group(1)}); refused. "
                "Pass --allow-pickle (allow_pickle=True) only if you trust this file",
            ) from None
        raise LoadError(CORRUPT, f"{name}: not a readable torch checkpoint ({_last_line(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LoadError(CORRUPT, f"{name}: truncated or corrupt checkpoint ({_last_line(exc)})") from None
    except (AttributeError, ModuleNotFoundError, ImportError, TypeError) as exc:
        # Only reachable with allow_pickle: the pickle names code this process cannot import.
        raise LoadError(NEEDS_PICKLE, f"{name}: its pickled code cannot be loaded here ({exc})") from None


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _is_tensor_map(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(hasattr(v, "shape") for v in obj.values())


def _unwrap(obj, name: str) -> Mapping:
    if _is_tensor_map(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if _is_tensor_map(obj.get(key)):
                return obj[key]
        keys = ", ".join(map(str, list(obj)[:8]))
        raise LoadError(UNSUPPORTED, f"{name}: not a state dict of tensors (top-level keys: {keys})")
    raise LoadError(UNSUPPORTED, f"{name}: holds a {type(obj).__name__}, not a state dict")


def _as_arrays(sd: Mapping, name: str) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for key, value in sd.items():
        if isinstance(value, torch.Tensor):
            if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
                raise LoadError(UNSUPPORTED, f"{name}: {key} has dtype {value.dtype}, expected floats")
            value = value.detach().to(torch.float32).contiguous().numpy()
        out[str(key)] = np.asarray(value, dtype=np.float32)
    return out


class SpecCache:
    """One NetworkSpec per (keys, shapes, activation): most checkpoints of a zoo share it."""

    def __init__(self, layer_order: list[str] | None = None):
        self._specs: dict = {}
        self.layer_order = layer_order

    def spec_for(self, sd: Mapping[str, np.ndarray], activation: str, name: str) -> NetworkSpec:
        key = (tuple((k, v.shape) for k, v in sd.items()), activation)
        spec = self._specs.get(key)
        if spec is None:
            try:
                if self.layer_order is None and looks_like_transformer(sd):
                    spec = infer_spec(sd, activation)  # a transformer encoder (metanets.transformer)
                else:
                    spec = NetworkSpec.from_state_dict(sd, activation=activation, layer_order=self.layer_order)
            except SpecError as exc:
                hint = "" if self.layer_order else " (if the layer order is wrong, pass the layer_order option)"
                raise LoadError(UNSUPPORTED, f"{name}: {exc}{hint}") from None
            self._specs[key] = spec
        return spec


READ_BLOCK_BYTES = 64 << 20  # files fetched together (concurrently on object stores)


def _blocks(sizes: list[int]):
    """Runs of row positions whose files add up to about READ_BLOCK_BYTES (at most 256 files)."""
    start, total = 0, 0
    for row, size in enumerate(sizes):
        total += size
        if total >= READ_BLOCK_BYTES or row + 1 - start >= 256:
            yield range(start, row + 1)
            start, total = row + 1, 0
    if start < len(sizes):
        yield range(start, len(sizes))


def read_files(
    location: Location, inputs, allow_pickle: bool, default_activation: str | None, layer_order: list[str] | None = None
):
    """Yield a one-row `WeightBatch` or a `Reject` per row of `inputs` (columns `source` = file name,
    `bytes` = its size). Files are fetched in blocks of about 64 MB: memory stays bounded, and object
    stores serve a block's files concurrently."""
    specs = SpecCache(layer_order)
    sources = inputs["source"].to_pylist()
    activations = inputs["activation"].to_pylist()
    sizes = inputs["bytes"].to_pylist() if "bytes" in inputs.column_names else [0] * len(sources)
    for block in _blocks(sizes):
        paths = [location.full(sources[row]) for row in block]
        fetched = location.fs.cat(paths, on_error="return") if len(paths) > 1 else {paths[0]: _cat(location, paths[0])}
        for row, path in zip(block, paths):
            name, activation = sources[row], activations[row] or default_activation
            data = fetched.get(path, FileNotFoundError(path))
            try:
                if isinstance(data, Exception):
                    raise LoadError(CORRUPT, f"{name}: cannot read ({type(data).__name__}: {data})")
                sd = load_state_dict(data, name, allow_pickle)
                if not activation:
                    raise LoadError(NO_ACTIVATION, f"{name}: no activation (no metadata row with one, no --activation)")
                spec = specs.spec_for(sd, activation, name)
            except LoadError as exc:
                yield Reject(row, exc.reason, exc.detail)
                continue
            tensors = {key: sd[key].reshape(1, -1) for key in spec.keys}
            yield WeightBatch(np.array([row]), spec, tensors)


def _cat(location: Location, path: str):
    try:
        return location.fs.cat_file(path)
    except OSError as exc:
        return exc
