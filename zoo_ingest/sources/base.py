"""What every zoo source gives the ingest driver and its tasks.

A source has two halves. `plan()` runs once on the driver: it lists the inputs, reads the metadata and
checks the folder (a broken folder fails here, before anything is written), and returns an `inputs`
table with one row per checkpoint (columns `INPUT_COLUMNS`, then metric columns, then `hparams`).
`read(inputs)` runs in a Ray task over a slice of that table and yields `WeightBatch`es (the tensors of
some rows, one architecture per batch) and `Reject`s (rows that cannot be used, with the reason).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from metanets.spec import NetworkSpec
from zoo_ingest.schema import hparams_json
from zoo_ingest.storage import Location

INPUT_COLUMNS = ("source", "index", "step", "label", "activation")
# Reject reasons (the `reason` column of `_rejects/`).
CORRUPT = "corrupt"
NEEDS_PICKLE = "needs_pickle"
NON_FINITE = "non_finite"
SHAPE_MISMATCH = "shape_mismatch"
UNSUPPORTED = "unsupported_architecture"
NOT_IN_SPLIT_FILE = "not_in_split_file"
NO_ACTIVATION = "no_activation"

STEP_COLUMNS = ("step", "ckpt_step", "ckpt_epoch", "epoch", "global_step")
ACTIVATION_COLUMNS = ("config.activation", "activation", "hparams.activation")
HPARAM_PREFIXES = ("config.", "hparam.", "hparams.")
METRIC_WORDS = ("accuracy", "acc", "loss", "error", "err", "score", "auc", "psnr", "gap", "perplexity", "f1")


class SourceError(ValueError):
    """The source folder is unusable as a whole (missing file, inconsistent layout); names the file."""


@dataclass
class WeightBatch:
    """Tensors of some input rows, all of one architecture.

    rows: positions in the `inputs` slice given to `read`, shape (n,)
    tensors: state-dict key -> (n, numel) float32, row-major in torch order
    flat: optionally the same rows as one (n, P) array in `spec.keys` order, of which `tensors` are
        column views (saves a copy when hashing and checking)
    """

    rows: np.ndarray
    spec: NetworkSpec
    tensors: dict[str, np.ndarray]
    flat: np.ndarray | None = None


@dataclass
class Reject:
    row: int
    reason: str
    detail: str


@dataclass
class Plan:
    inputs: pa.Table
    metrics: list[str]
    hparam_keys: list[str]
    listing: dict = field(default_factory=dict)  # facts that identify the input (names, sizes)
    row_bytes: int = 0  # bytes of one checkpoint's tensors (estimate), to size chunks


class Source:
    """Base class: subclasses set `format` and implement `plan` and `read`."""

    format = ""

    def __init__(self, location: Location, **options):
        self.location = location
        self.options = options

    def plan(self) -> Plan:
        raise NotImplementedError

    def read(self, inputs: pa.Table) -> Iterator[WeightBatch | Reject]:
        raise NotImplementedError

    def network_key(self, plan: Plan) -> tuple[str | None, str]:
        """(key, what it names): the column that identifies each network, so that a network's
        checkpoints share a split (`splits.INDEX` or an hparams key); (None, why not) when the source
        cannot name its networks."""
        return None, f"{self.location.url}: the {self.format} source does not name the network of each checkpoint"

    def settings(self) -> dict:
        """Options that decide the rows (recorded in the zoo card and the ingest fingerprint)."""
        return dict(self.options)


def file_version(info: dict) -> str | None:
    """What changes when a file is rewritten: its ETag on object stores, else its modification time."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def read_text(location: Location, rel: str) -> bytes:
    """The bytes of a (possibly gzipped) text file, decompressed."""
    try:
        with location.fs.open(location.full(rel), "rb", compression="infer") as f:
            return f.read()
    except FileNotFoundError:
        raise SourceError(f"{location.url_of(rel)}: file not found") from None
    except (OSError, EOFError) as exc:
        raise SourceError(f"{location.url_of(rel)}: cannot read ({exc})") from exc


def read_csv(location: Location, rel: str, data: bytes | None = None) -> pa.Table:
    """A CSV (optionally .gz) with a header row; column types are inferred, empty or NaN cells are null."""
    data = read_text(location, rel) if data is None else data
    try:
        table = pacsv.read_csv(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{location.url_of(rel)}: not a valid CSV file ({exc})") from exc
    return table


def _is_metric(name: str) -> bool:
    words = re.split(r"[^a-z0-9]+", name.lower())
    return any(w in METRIC_WORDS for w in words)


def metadata_roles(table: pa.Table, exclude=(), metrics: list[str] | None = None) -> dict:
    """Sort metadata columns into step / label / activation / metrics / hparams.

    step: the first of `STEP_COLUMNS`; activation: the first of `ACTIVATION_COLUMNS`; `label`;
    metrics: numeric columns named like a metric (accuracy, loss, error, ...) unless `metrics` names
    them; everything else goes to hparams (prefixes `config.` / `hparam.` dropped).
    """
    names = [n for n in table.column_names if n not in exclude]
    step = next((c for c in STEP_COLUMNS if c in names), None)
    activation = next((c for c in ACTIVATION_COLUMNS if c in names), None)
    label = "label" if "label" in names else None
    used = {step, activation, label}
    if metrics is None:
        metrics = [n for n in names if n not in used and _is_numeric(table[n]) and _is_metric(n)]
    else:
        missing = [m for m in metrics if m not in names]
        if missing:
            raise SourceError(f"metric column {missing[0]!r} is not in the metadata (columns: {names})")
    hparams = [n for n in names if n not in used and n not in metrics]
    return dict(step=step, activation=activation, label=label, metrics=list(metrics), hparams=hparams)


def _is_numeric(column: pa.ChunkedArray) -> bool:
    return pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_null(column.type)


def int_column(column: pa.ChunkedArray | None, n: int, what: str) -> pa.Array:
    """Nullable int64 from a numeric or text column; a non-integral value is an error naming the row."""
    if column is None:
        return pa.nulls(n, pa.int64())
    values = column.to_pylist()
    out = []
    for row, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)) or v == "":
            out.append(None)
            continue
        try:
            f = float(v)
            ok = f == int(f)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise SourceError(f"{what}, row {row + 1}: value {v!r} is not an integer")
        out.append(int(f))
    return pa.array(out, pa.int64())


def float_column(column: pa.ChunkedArray, what: str) -> pa.Array:
    """Nullable float64; NaN and empty cells become null (a missing metric is not a reject)."""
    try:
        arr = pc.cast(column, pa.float64()).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SourceError(f"{what}: not numeric ({exc})") from None
    return pc.if_else(pc.is_nan(arr), pa.scalar(None, pa.float64()), arr)


def hparam_name(column: str) -> str:
    """`config.lr` (Small CNN Zoo), `hparam.lr` (metazoo generate) and `lr` all name hyper-parameter `lr`."""
    for prefix in HPARAM_PREFIXES:
        if column.startswith(prefix):
            return column[len(prefix) :]
    return column


def hparams_from(table: pa.Table, columns: list[str], extra: dict | None = None) -> pa.Array:
    """One canonical JSON object per row (keys sorted, as `hparams_json` writes them), keys as
    `hparam_name` gives them. Each distinct cell value is encoded once: zoos repeat them a lot."""
    names = {hparam_name(c): c for c in columns}
    fixed = dict(extra or {})
    keys = sorted(set(names) | set(fixed))
    parts = []
    for key in keys:
        prefix = json.dumps(key) + ": "
        if key in names:
            cache: dict = {}
            encoded = []
            for value in table[names[key]].to_pylist():
                text = cache.get(value)
                if text is None:
                    text = cache[value] = prefix + hparams_json({"v": value})[6:-1]
                encoded.append(text)
        else:
            encoded = [prefix + hparams_json({"v": fixed[key]})[6:-1]] * table.num_rows
        parts.append(encoded)
    rows = ["{" + ", ".join(cells) + "}" for cells in zip(*parts)] if parts else ["{}"] * table.num_rows
    return pa.array(rows, pa.string())


def inputs_table(source, index, step, label, activation, metrics: dict, hparams) -> pa.Table:
    """Assemble the `inputs` table in its fixed column order."""
    cols = {
        "source": pa.array(source, pa.string()),
        "index": index if isinstance(index, pa.Array) else pa.array(index, pa.int64()),
        "step": step,
        "label": label,
        "activation": pa.array(activation, pa.string()),
    }
    cols.update(metrics)
    cols["hparams"] = hparams
    return pa.table(cols)
