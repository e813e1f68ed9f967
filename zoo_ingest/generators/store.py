"""The folder a generated zoo is written to (any fsspec URL), and how a rerun resumes it.

Layout (documented for the `checkpoints` ingest format in docs/zoos.md):
    generation.json                               the manifest: zoo, seed, options; a rerun must match it
    net-<k:06d>_step-<step:05d>.safetensors       one file per checkpoint
    _parts/net-<k:06d>.json                       network k's metadata rows, written after its checkpoints
    metadata.csv                                  all rows, merged from the parts when a run completes
Every file is written atomically (temporary name + rename on local disks, one put on object stores), and a
network counts as done only when its part exists and every file the part names exists. So a crash leaves
either complete networks or networks a rerun trains again, never a half-written row or file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import uuid
from collections.abc import Mapping

from zoo_ingest.storage import Location

MANIFEST = "generation.json"
METADATA = "metadata.csv"
PARTS = "_parts"
FORMAT = "metazoo-generated-zoo"
FORMAT_VERSION = 1
BASE_COLUMNS = ("file", "network_id", "step", "split", "label", "activation")
_NETWORK_FILE = re.compile(r"^(?:_parts/)?net-(\d+)[_.]")
_TEMP_MARK = ".tmp-"


class GenerateError(ValueError):
    """A zoo cannot be generated as asked (bad arguments, a foreign or mismatched output folder)."""


def checkpoint_file(k: int, step: int) -> str:
    return f"net-{k:06d}_step-{step:05d}.safetensors"


def part_file(k: int) -> str:
    return f"{PARTS}/net-{k:06d}.json"


def network_of(relpath: str) -> int | None:
    """The network id a checkpoint or part file belongs to, or None for other files."""
    match = _NETWORK_FILE.match(relpath)
    return int(match.group(1)) if match else None


class ZooStore:
    """Reads and writes the files of one generated zoo under `url`.

    `storage_options` (e.g. `endpoint_url`, `region`, `key`, `secret` for S3) override the standard AWS
    environment variables, as everywhere in zoo_ingest (`zoo_ingest.storage.Location`).
    """

    def __init__(self, url: str, storage_options: Mapping | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        location = Location(url, self.storage_options)
        self.fs, self.root = location.fs, location.path.rstrip("/")
        self.local = location.is_local
        # What Ray tasks open: absolute on local disks, since a worker's working folder may differ.
        self.task_url = self.root if self.local else url

    def path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write one file atomically: a reader sees the old file, no file, or the whole new file."""
        path = self.path(relpath)
        if not self.local:
            self.fs.pipe_file(path, data)  # a single put: object stores never show a partial object
            return
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f".{name}{_TEMP_MARK}{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.remove(temp)
            raise

    def read_bytes(self, relpath: str) -> bytes:
        return self.fs.cat_file(self.path(relpath))

    def read_many(self, relpaths: list[str]) -> dict[str, bytes]:
        """Read several files at once (concurrently on object stores)."""
        if not relpaths:
            return {}
        data = self.fs.cat([self.path(r) for r in relpaths])
        return {r: data[self.path(r)] for r in relpaths}

    def list_files(self) -> set[str]:
        """Relative paths of every file under the root (empty if the root does not exist)."""
        self.fs.invalidate_cache(self.root)  # fsspec caches listings per filesystem instance
        if not self.fs.exists(self.root):
            return set()
        if self.fs.isfile(self.root):
            raise GenerateError(f"output location {self.url} is a file, not a folder")
        prefix = self.root + "/"
        found = self.fs.find(self.root)
        return {p[len(prefix) :] if p.startswith(prefix) else p for p in found}

    def remove_temporaries(self, files: set[str]) -> None:
        """Delete temporary files left by an interrupted run (one run per folder at a time)."""
        for relpath in sorted(f for f in files if _TEMP_MARK in f):
            self.fs.rm(self.path(relpath))


def manifest(
    zoo: str,
    seed: int,
    options: dict,
    generator_version: int,
    networks: int,
    block_size: int = 1,
    block_version: int | None = None,
) -> dict:
    """`block_size` 1 is the per-network path; S > 1 the batched path with blocks [b*S, (b+1)*S), whose
    code version is `block_version` (the two paths give different weights, so a folder records which)."""
    return dict(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        zoo=zoo,
        seed=seed,
        options=dict(sorted(options.items())),
        generator_version=generator_version,
        block_size=block_size,
        block_version=block_version if block_size > 1 else None,
        networks=networks,
    )


_BEFORE_BLOCKS = dict(block_size=1, block_version=None)  # what a manifest without these keys means


def check_manifest(url: str, found: dict, wanted: dict) -> None:
    """Fail unless the folder's manifest describes the same zoo (zoo, seed, options, code version, block size)."""
    keys = ("format", "format_version", "zoo", "seed", "options", "generator_version", "block_size", "block_version")
    found = {**_BEFORE_BLOCKS, **found}
    differ = [k for k in keys if found.get(k) != wanted.get(k)]
    if differ:
        detail = "; ".join(f"{k}: folder has {found.get(k)!r}, this run {wanted.get(k)!r}" for k in differ)
        raise GenerateError(
            f"{url}/{MANIFEST} describes a different zoo ({detail}); refusing to mix two zoos in one "
            "folder: rerun with the folder's settings or choose another --out"
        )


def metadata_csv(rows: list[dict]) -> bytes:
    """CSV text of `rows`: the base columns, then the others in first-seen order; None is an empty cell."""
    columns = list(BASE_COLUMNS)
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    return buffer.getvalue().encode()


def encode_part(k: int, rows: list[dict]) -> bytes:
    return json.dumps({"network_id": k, "rows": rows}).encode()


def decode_part(k: int, data: bytes) -> list[dict] | None:
    """Rows of a part file, or None when it is unreadable or belongs to another network."""
    try:
        part = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(part, dict) or part.get("network_id") != k or not isinstance(part.get("rows"), list):
        return None
    return part["rows"]
