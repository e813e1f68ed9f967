"""Zoos stored as one checkpoint file per network: `nfn-siren` and `checkpoints`.

`nfn-siren`: a tree of SIREN state dicts, one `.pth` per image, as published with NFN:
`<root>/<prefix>_<label>s/net<idx>.pth`. The label is parsed from the parent folder name
(`label_pattern`, default `_(\\d+)s?$`, so `..._3s/` and `..._3/` both give 3) and the index from the
file name (`index_pattern`, default `net(\\d+)\\.pth$`); `glob` (default `**/*.pth`) picks the files.
A name that does not match leaves the label or index null. The activation is `sine`.

`checkpoints`: a folder (or a glob such as `s3://b/zoo/*/model.safetensors`) of `.safetensors`,
`.pt`, `.pth`, `.bin` or `.ckpt` state dicts, plus an optional `metadata.csv` in the folder (or at
`metadata=URL-or-relative-path`) joined on the file name: the file column is the first of
`FILE_COLUMNS`, matched against the path relative to the folder, else the base name. Other columns are
sorted by `metadata_roles` (step, label, activation, metrics, hparams). A file without a metadata row
gets null metrics. The activation comes from the metadata or the `activation` option.

Layers are taken in state-dict order for torch files and in natural key order (`net.2` before `net.10`)
for safetensors files, whose header does not keep the order; `layer_order` (module prefixes, comma
separated) overrides both.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import logging
import posixpath
import re
from collections.abc import Iterator

import pyarrow as pa

from zoo_ingest.sources.base import (
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
from zoo_ingest.sources.loading import CHECKPOINT_SUFFIXES, read_files
from zoo_ingest.splits import INDEX
from zoo_ingest.storage import Location

log = logging.getLogger(__name__)
NETWORK_ID = "network_id"  # metadata column naming each training run (metazoo generate writes it)
FILE_COLUMNS = ("ckpt_file", "file", "filename", "path", "checkpoint", "source")


def list_files(location: Location, pattern: str) -> dict[str, tuple[int, str | None]]:
    """{relative path: (size, version)} of files under `location` matching `pattern`, sorted by path."""
    fs, base = location.fs, location.path.rstrip("/")
    try:
        if not fs.isdir(base):
            raise SourceError(f"{location.url}: not a folder (or not reachable)")
        found = fs.glob(f"{base}/{pattern}", detail=True)
    except (FileNotFoundError, PermissionError) as exc:
        raise SourceError(f"{location.url}: cannot list ({exc})") from None
    out = {}
    for path, info in sorted(found.items()):
        if info.get("type") == "file":
            out[path[len(base) + 1 :]] = (int(info.get("size") or 0), file_version(info))
    return out


def split_glob(url: str) -> tuple[str, str | None]:
    """("s3://b/zoo", "*/model.pt") for a URL with glob characters, (url, None) otherwise."""
    if not globlib.has_magic(url):
        return url, None
    parts = url.split("/")
    first = next(i for i, p in enumerate(parts) if globlib.has_magic(p))
    return "/".join(parts[:first]), "/".join(parts[first:])


class NFNSiren(Source):
    format = "nfn-siren"

    def plan(self) -> Plan:
        files = list_files(self.location, self.options.get("glob", "**/*.pth"))
        if not files:
            raise SourceError(f"{self.location.url}: no files match {self.options.get('glob', '**/*.pth')!r}")
        label_re = re.compile(self.options.get("label_pattern", r"_(\d+)s?$"))
        index_re = re.compile(self.options.get("index_pattern", r"net(\d+)\.pth$"))
        names, labels, indices = [], [], []
        for rel in files:
            folder, name = posixpath.split(rel)
            m_label, m_index = label_re.search(posixpath.basename(folder)), index_re.search(name)
            names.append(rel)
            labels.append(int(m_label.group(1)) if m_label else None)
            indices.append(int(m_index.group(1)) if m_index else None)
        order = sorted(range(len(names)), key=lambda i: (indices[i] is None, indices[i] or 0, names[i]))
        names = [names[i] for i in order]
        sizes = [files[name][0] for name in names]
        n = len(names)
        inputs = inputs_table(
            source=names,
            index=[indices[i] for i in order],
            step=pa.nulls(n, pa.int64()),
            label=pa.array([labels[i] for i in order], pa.int64()),
            activation=[self.options.get("activation", "sine")] * n,
            metrics={},
            hparams=pa.array(["{}"] * n, pa.string()),
        ).append_column("bytes", pa.array(sizes, pa.int64()))
        return Plan(inputs, [], [], {"files": files}, row_bytes=_mean_size(files))

    def network_key(self, plan: Plan) -> tuple[str | None, str]:
        """A SIREN encodes one image, named by the index in its file name (NFN's loaders pair
        `net<idx>.pth` with image idx of the dataset); copies fitted to the same image (NFN's
        `..._aug<k>_<label>s/` folders) share it, so they share a split."""
        return INDEX, "the image the SIREN was fitted to: the index in its file name"

    def read(self, inputs: pa.Table) -> Iterator[WeightBatch | Reject]:
        yield from read_files(
            self.location, inputs, bool(self.options.get("allow_pickle")), "sine", _layer_order(self.options)
        )


class Checkpoints(Source):
    format = "checkpoints"

    def __init__(self, location: Location, **options):
        base, pattern = split_glob(location.url)
        super().__init__(Location(base, location.options), **options)
        self.pattern = pattern

    def plan(self) -> Plan:
        files = {
            rel: size
            for rel, size in list_files(self.location, self.pattern or "**").items()
            if rel.endswith(CHECKPOINT_SUFFIXES)
        }
        if not files:
            raise SourceError(f"{self.location.url}: no {'/'.join(CHECKPOINT_SUFFIXES)} files found")
        names = list(files)
        n = len(names)
        meta_rel = self.options.get("metadata") or "metadata.csv"
        meta_loc, meta_name = self.location, meta_rel
        if "://" in meta_rel or meta_rel.startswith("/"):
            folder, meta_name = meta_rel.rsplit("/", 1)
            meta_loc = Location(folder, self.location.options)
        rows, roles, meta, where = [None] * n, None, None, meta_loc.url_of(meta_name)
        digest = None
        if meta_loc.exists(meta_name):
            text = read_text(meta_loc, meta_name)
            digest = hashlib.sha256(text).hexdigest()
            meta = read_csv(meta_loc, meta_name, text)
            file_col = next((c for c in FILE_COLUMNS if c in meta.column_names), None)
            if file_col is None:
                raise SourceError(f"{where}: needs a file column, one of {FILE_COLUMNS}")
            rows = _join(names, [str(v) for v in meta[file_col].to_pylist()], where)
            roles = metadata_roles(meta, exclude=(file_col,), metrics=self.options.get("metrics"))
        elif self.options.get("metadata"):
            raise SourceError(f"{where}: metadata file not found")
        default_act = self.options.get("activation")
        if meta is not None:
            taken = pa.array(rows, pa.int64())
            meta = meta.take(taken)  # null index -> null row
        if not default_act and (roles is None or roles["activation"] is None):
            raise SourceError(
                f"{self.location.url}: no activation; add an 'activation' column to the metadata or pass --activation"
            )

        def col(role, fn, what):
            name = roles and roles[role]
            return fn(meta[name], n, f"{where} column {what}") if name else pa.nulls(n, pa.int64())

        acts = meta[roles["activation"]].to_pylist() if roles and roles["activation"] else [None] * n
        inputs = inputs_table(
            source=names,
            index=[None] * n,
            step=col("step", int_column, "step"),
            label=col("label", int_column, "label"),
            activation=[str(a).lower() if a else default_act for a in acts],
            metrics={m: float_column(meta[m], f"{where} column {m}") for m in (roles or {}).get("metrics", [])},
            hparams=hparams_from(meta, roles["hparams"]) if roles else pa.array(["{}"] * n, pa.string()),
        ).append_column("bytes", pa.array([files[name][0] for name in names], pa.int64()))
        hkeys = [hparam_name(h) for h in roles["hparams"]] if roles else []
        listing = {"files": files, "pattern": self.pattern, "metadata_sha256": digest}
        return Plan(inputs, roles["metrics"] if roles else [], hkeys, listing, row_bytes=_mean_size(files))

    def network_key(self, plan: Plan) -> tuple[str | None, str]:
        """`network_id` of the metadata (as `metazoo generate` writes it); other folders do not say
        which checkpoints belong to one training run."""
        if NETWORK_ID in plan.hparam_keys:
            return NETWORK_ID, "metadata column network_id"
        return None, (
            f"{self.location.url}: the metadata has no {NETWORK_ID!r} column, so it does not name "
            "each checkpoint's network"
        )

    def read(self, inputs: pa.Table) -> Iterator[WeightBatch | Reject]:
        allow = bool(self.options.get("allow_pickle"))
        yield from read_files(self.location, inputs, allow, self.options.get("activation"), _layer_order(self.options))


def _layer_order(options: dict) -> list[str] | None:
    order = options.get("layer_order")
    return [p.strip() for p in order.split(",")] if isinstance(order, str) else order


def _join(names: list[str], keys: list[str], where: str) -> list[int | None]:
    """For each file, the metadata row naming it (by relative path, else by unique base name)."""
    by_key: dict[str, int] = {}
    for row, key in enumerate(keys):
        key = key.strip().removeprefix("./")
        if key in by_key:
            raise SourceError(f"{where}, row {row + 2}: file {key!r} is listed twice")
        by_key[key] = row
    base_count: dict[str, int] = {}
    for name in names:
        base_count[posixpath.basename(name)] = base_count.get(posixpath.basename(name), 0) + 1
    out, used = [], set()
    for name in names:
        row = by_key.get(name)
        if row is None and base_count[posixpath.basename(name)] == 1:
            row = by_key.get(posixpath.basename(name))
        out.append(row)
        if row is not None:
            used.add(row)
    if len(used) < len(keys):
        log.warning("%s: %d metadata rows name no checkpoint file", where, len(keys) - len(used))
    return out


def _mean_size(files: dict[str, tuple[int, str | None]]) -> int:
    return int(sum(size for size, _ in files.values()) / max(1, len(files)))
