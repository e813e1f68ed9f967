"""`smallcnnzoo`: the Small CNN Zoo layout (Unterthiner et al., 2020).

A folder with
  weights.npy      (N, P) float32, one flattened checkpoint per row, TensorFlow variable order
  metrics.csv.gz   N rows aligned with weights.npy: `step`, `test_accuracy`, `train_accuracy`,
                   `test_loss`, `train_loss`, `config.*` hyper-parameters (`config.activation`, ...)
  layout.csv       `varname`, `start_idx`, `end_idx`, `shape`: where each variable sits in a row

Variables are renamed to torch state-dict keys and transposed to torch order:
  .../conv2d/kernel:0    (h, w, in, out) -> conv1.weight (out, in, h, w)
  .../conv2d/bias:0      (out,)          -> conv1.bias
  .../conv2d_<k>/...                     -> conv<k+1>.weight / conv<k+1>.bias
  .../dense/kernel:0     (in, out)       -> fc.weight (out, in)    (fc1, fc2, ... when there are several)
  .../dense/bias:0                       -> fc.bias
Layers are numbered in the order their kernels appear in the row. The activation of each row comes
from `config.activation` (relu and tanh nets land in different architectures). `weights.npy` is read in
row blocks (memory-mapped when local, ranged reads otherwise), so the zoo never has to fit in RAM.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from metanets.spec import GROUP_OF_ACTIVATION, LayerSpec, NetworkSpec, group_of_activation
from zoo_ingest.sources.base import (
    NO_ACTIVATION,
    UNSUPPORTED,
    Plan,
    Reject,
    Source,
    SourceError,
    WeightBatch,
    file_version,
    float_column,
    hparam_name,
    hparams_from,
    inputs_table,
    int_column,
    metadata_roles,
    read_csv,
    read_text,
)

MODELDIR = "modeldir"  # metrics.csv.gz column naming each training run
VARNAME = re.compile(r"^(?:.*/)?(conv2d|dense)(?:_(\d+))?/(kernel|bias)(?::\d+)?$")


@dataclass(frozen=True)
class Variable:
    key: str  # torch state-dict key
    start: int
    end: int
    tf_shape: tuple[int, ...]

    @property
    def torch_shape(self) -> tuple[int, ...]:
        s = self.tf_shape
        return (s[3], s[2], s[0], s[1]) if len(s) == 4 else (s[1], s[0]) if len(s) == 2 else s

    def to_torch(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(n, size) in TF order -> (n, size) row-major in torch order, written into `out` if given."""
        block = rows[:, self.start : self.end]
        n, s = block.shape[0], self.tf_shape
        if len(s) == 4:  # (h, w, in, out) -> (out, in, h, w)
            block = block.reshape(n, *s).transpose(0, 4, 3, 1, 2)
        elif len(s) == 2:  # (in, out) -> (out, in)
            block = block.reshape(n, *s).transpose(0, 2, 1)
        if out is None:
            return np.ascontiguousarray(block, dtype=np.float32).reshape(n, -1)
        np.copyto(out.reshape(n, *block.shape[1:]), block)  # one strided copy, no temporary
        return out


def parse_layout(text_table: pa.Table, where: str, width: int) -> list[Variable]:
    """Variables of layout.csv in row order; checks that they tile [0, width) exactly."""
    for col in ("varname", "start_idx", "end_idx", "shape"):
        if col not in text_table.column_names:
            raise SourceError(f"{where}: missing column {col!r} (has {text_table.column_names})")
    rows = sorted(
        zip(*(text_table[c].to_pylist() for c in ("start_idx", "end_idx", "varname", "shape"))),
        key=lambda r: r[0],
    )
    kinds: dict[tuple[str, str], list] = {}
    parsed = []
    pos = 0
    for start, end, varname, shape in rows:
        m = VARNAME.match(str(varname))
        if not m:
            raise SourceError(f"{where}: variable {varname!r} is not a conv2d/dense kernel or bias")
        tf_shape = tuple(int(d) for d in re.findall(r"\d+", str(shape)))
        if start != pos:
            raise SourceError(
                f"{where}: {varname} starts at {start} but the previous variable ends at {pos} "
                "(layout.csv does not cover weights.npy)"
            )
        if end - start != int(np.prod(tf_shape)):
            raise SourceError(f"{where}: {varname} spans {end - start} values but has shape {tf_shape}")
        pos = end
        layer_kind, suffix, leaf = m.group(1), int(m.group(2) or 0), m.group(3)
        kinds.setdefault((layer_kind, suffix), []).append(leaf)
        parsed.append((layer_kind, suffix, leaf, start, end, tf_shape))
    if pos != width:
        raise SourceError(
            f"{where}: the variables cover {pos} values per row but weights.npy rows have {width} "
            "(layout.csv does not cover weights.npy)"
        )
    layers = sorted({(k, s) for k, s, *_ in parsed}, key=lambda ks: min(p[3] for p in parsed if p[:2] == ks))
    names, counters = {}, {"conv2d": 0, "dense": 0}
    n_dense = sum(1 for k, _ in layers if k == "dense")
    for kind, suffix in layers:
        counters[kind] += 1
        base = "conv" if kind == "conv2d" else "fc"
        names[(kind, suffix)] = f"{base}{counters[kind]}" if kind == "conv2d" or n_dense > 1 else "fc"
    return [
        Variable(f"{names[(k, s)]}.{'weight' if leaf == 'kernel' else 'bias'}", a, b, shp)
        for k, s, leaf, a, b, shp in parsed
    ]


def spec_of(variables: list[Variable], activation: str) -> NetworkSpec:
    layers, by_key = [], {v.key: v for v in variables}
    for v in sorted((v for v in variables if v.key.endswith(".weight")), key=lambda v: v.start):
        name = v.key.removesuffix(".weight")
        bias = f"{name}.bias" if f"{name}.bias" in by_key else None
        kind = "conv2d" if len(v.torch_shape) == 4 else "linear"
        layers.append(LayerSpec(name, v.key, bias, kind, v.torch_shape))
    return NetworkSpec(tuple(layers), activation, group_of_activation(activation))


class NpyRows:
    """Row blocks of a C-order .npy file: memory-mapped when local, ranged reads otherwise."""

    def __init__(self, location, rel: str):
        self.location, self.rel = location, rel
        try:
            with location.fs.open(location.full(rel), "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(f)
                self.offset = f.tell()
        except FileNotFoundError:
            raise SourceError(f"{location.url_of(rel)}: file not found") from None
        except (ValueError, OSError) as exc:
            raise SourceError(f"{location.url_of(rel)}: not a .npy array ({exc})") from None
        if len(shape) != 2 or fortran or dtype.kind != "f":
            raise SourceError(
                f"{location.url_of(rel)}: expected a C-order 2-D float array, got shape {shape}, "
                f"dtype {dtype}, fortran_order={fortran}"
            )
        self.shape, self.dtype = shape, dtype
        self._mmap = None

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.location.is_local:
            if self._mmap is None:
                self._mmap = np.load(self.location.full(self.rel), mmap_mode="r")
            return np.asarray(self._mmap[start:stop], dtype=np.float32)
        width = self.shape[1] * self.dtype.itemsize
        with self.location.fs.open(self.location.full(self.rel), "rb") as f:
            f.seek(self.offset + start * width)
            data = f.read((stop - start) * width)
        if len(data) != (stop - start) * width:
            raise SourceError(f"{self.location.url_of(self.rel)}: truncated at row {start + len(data) // width}")
        return np.frombuffer(data, dtype=self.dtype).reshape(stop - start, -1).astype(np.float32, copy=False)


class SmallCNNZoo(Source):
    """Options: `activation` (used where `config.activation` is missing), `metrics` (column names),
    `block_rows` (rows read at a time)."""

    format = "smallcnnzoo"

    def _layout(self, width: int) -> list[Variable]:
        return parse_layout(read_csv(self.location, "layout.csv"), self.location.url_of("layout.csv"), width)

    def plan(self) -> Plan:
        weights = NpyRows(self.location, "weights.npy")
        n, width = weights.shape
        variables = self._layout(width)
        metrics_name = "metrics.csv.gz" if self.location.exists("metrics.csv.gz") else "metrics.csv"
        where = self.location.url_of(metrics_name)
        meta_text = read_text(self.location, metrics_name)
        meta = read_csv(self.location, metrics_name, meta_text)
        if meta.num_rows != n:
            raise SourceError(f"{where}: {meta.num_rows} rows, but weights.npy has {n} checkpoints")
        roles = metadata_roles(meta, metrics=self.options.get("metrics"))
        activation = meta[roles["activation"]].to_pylist() if roles["activation"] else [None] * n
        default = self.options.get("activation")
        activation = [str(a).lower() if a is not None else default for a in activation]
        inputs = inputs_table(
            source=[f"weights.npy[{i}]" for i in range(n)],
            index=pa.array(np.arange(n, dtype=np.int64)),
            step=int_column(meta[roles["step"]] if roles["step"] else None, n, f"{where} column step"),
            label=int_column(meta[roles["label"]] if roles["label"] else None, n, f"{where} column label"),
            activation=activation,
            metrics={m: float_column(meta[m], f"{where} column {m}") for m in roles["metrics"]},
            hparams=hparams_from(meta, roles["hparams"]),
        )
        digest = hashlib.sha256(meta_text)  # decompressed: re-gzipping the same metrics changes nothing
        digest.update(self.location.read_bytes("layout.csv"))
        info = self.location.fs.info(self.location.full("weights.npy"))
        listing = {"weights.npy": [list(weights.shape), file_version(info)], "metadata_sha256": digest.hexdigest()}
        hkeys = [hparam_name(h) for h in roles["hparams"]]
        return Plan(inputs, roles["metrics"], hkeys, listing, row_bytes=4 * sum(v.end - v.start for v in variables))

    def network_key(self, plan: Plan) -> tuple[str | None, str]:
        """The published metrics name each training run by `modeldir` (its training directory; every
        run's 9 checkpoints share it). `config.random_seed` is 42 for all runs, so the
        hyper-parameters do not identify a run."""
        if MODELDIR in plan.hparam_keys:
            return MODELDIR, "metrics column modeldir: the training run of each checkpoint"
        name = "metrics.csv.gz" if self.location.exists("metrics.csv.gz") else "metrics.csv"
        return None, f"{self.location.url_of(name)} has no {MODELDIR!r} column to name each checkpoint's network"

    def read(self, inputs: pa.Table) -> Iterator[WeightBatch | Reject]:
        weights = NpyRows(self.location, "weights.npy")
        variables = self._layout(weights.shape[1])
        specs: dict[str, NetworkSpec] = {}
        index = inputs["index"].to_numpy()
        activation = np.array([a or "" for a in inputs["activation"].to_pylist()], dtype=object)
        block = int(self.options.get("block_rows", 1024))
        for lo in range(0, len(index), block):
            hi = min(lo + block, len(index))
            first, last = int(index[lo]), int(index[hi - 1]) + 1
            if last - first != hi - lo:
                raise ValueError("smallcnnzoo chunks must be contiguous runs of weights.npy rows")
            rows = weights.read(first, last)
            for act in sorted(set(activation[lo:hi])):
                pos = lo + np.flatnonzero(activation[lo:hi] == act)
                if act not in GROUP_OF_ACTIVATION:
                    for r in pos:
                        if act:
                            yield Reject(int(r), UNSUPPORTED, f"weights.npy[{index[r]}]: activation {act!r} unknown")
                        else:
                            yield Reject(
                                int(r),
                                NO_ACTIVATION,
                                f"weights.npy[{index[r]}]: no config.activation and no --activation",
                            )
                    continue
                spec = specs.get(act) or specs.setdefault(act, spec_of(variables, act))
                picked = rows if len(pos) == hi - lo else rows[pos - lo]
                yield WeightBatch(pos, spec, *_convert(variables, spec, picked))


def _convert(variables: list[Variable], spec: NetworkSpec, rows: np.ndarray):
    """({key: (n, numel) view}, flat (n, P) in spec.keys order) from TF-order rows."""
    by_key = {v.key: v for v in variables}
    flat = np.empty((len(rows), spec.num_params), dtype=np.float32)
    tensors, pos = {}, 0
    for key in spec.keys:
        v = by_key[key]
        size = v.end - v.start
        tensors[key] = v.to_torch(rows, flat[:, pos : pos + size])
        pos += size
    return tensors, flat
