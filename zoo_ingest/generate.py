"""Train a built-in zoo with Ray tasks: `generate(zoo, out, n, seed)`, behind `metazoo generate`.

Two paths, recorded in generation.json as `block_size`:
- batched (block size S > 1, the default for zoos with a `train_block`): network ids are cut into fixed
  blocks [b*S, (b+1)*S); one Ray task trains one block, all its networks at once. Blocks depend on the ids
  and S only, never on the workers, so the same seed gives the same files whatever the scheduling.
- per-network (block size 1, the reference): Ray tasks of several networks, trained one after the other.
At most `workers` tasks run at a time. Each task writes its networks' checkpoints and parts straight to
`out`; the driver merges the parts into `metadata.csv` at the end. A rerun into the same folder trains only
the networks that are missing (see `generators/store.py`); a block with missing networks is trained whole
again, so they train with the same companions as in a clean run. The file layout and every column are
documented in docs/zoos.md.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from zoo_ingest.generators import ZOOS, ZooDefinition, build_digits_cnn, build_digits_transformer, build_siren
from zoo_ingest.generators.siren import PSNR_TARGET
from zoo_ingest.generators.store import (
    MANIFEST,
    METADATA,
    GenerateError,
    ZooStore,
    check_manifest,
    decode_part,
    manifest,
    metadata_csv,
    network_of,
    part_file,
)
from zoo_ingest.generators.worker import train_block_task, train_networks

__all__ = [
    "ZOOS",
    "GenerateError",
    "GenerationResult",
    "build_digits_cnn",
    "build_digits_transformer",
    "build_siren",
    "generate",
]
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
DEFAULT_BLOCK_SIZE = 128  # networks per block on the batched path: measured in bench/generate.py (docs/zoos.md)


@dataclass(frozen=True)
class GenerationResult:
    """What a run did: `trained` lists the networks trained by this run (the rest were already done)."""

    zoo: str
    out: str
    networks: int
    trained: tuple[int, ...]
    checkpoints: int
    metric: str
    spread: dict[str, float]  # quantiles of the metric over the networks' final checkpoints
    seconds: float

    def summary(self) -> str:
        q = self.spread
        lines = [
            f"{self.zoo}: {self.networks} networks ({len(self.trained)} trained now, "
            f"{self.networks - len(self.trained)} already done), {self.checkpoints} checkpoints, "
            f"{self.seconds:.1f} s -> {self.out}",
            f"final {self.metric}: "
            + "  ".join(f"{name} {value:.3f}" for name, value in q.items() if not name.startswith("share")),
        ]
        shares = {name: value for name, value in q.items() if name.startswith("share")}
        if shares:
            lines.append("  " + "  ".join(f"{name[6:]}: {value:.0%}" for name, value in shares.items()))
        return "\n".join(lines)


def _options(definition: ZooDefinition, copies: int | None, extra: dict | None = None) -> dict:
    options = dict(definition.options)
    for key, value in (extra or {}).items():
        if key in definition.optional:
            if value is not None:
                options[key] = value
            continue
        if key == "copies":
            raise GenerateError("copies is its own argument (generate(..., copies=K), --copies K), not an option")
        if key not in options:
            takes = sorted(set(options) | definition.optional)
            raise GenerateError(f"option {key!r} does not apply to {definition.name}; it takes {takes}")
        options[key] = value
    if copies is not None:
        if "copies" not in options:
            raise GenerateError(f"--copies applies to digits-siren only, not to {definition.name}")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise GenerateError(f"copies must be a positive integer, got {copies!r}")
        options["copies"] = copies
    return options


def _check_arguments(zoo: str, n, seed, workers, networks_per_task, block_size, block_memory_mb) -> ZooDefinition:
    if zoo not in ZOOS:
        raise GenerateError(f"unknown zoo {zoo!r}; choose from {', '.join(ZOOS)}")
    for name, value, least in (
        ("n", n, 1),
        ("seed", seed, 0),
        ("workers", workers, 0),
        ("networks_per_task", networks_per_task, 1),
        ("block_size", block_size, 1),
        ("block_memory_mb", block_memory_mb, 1),
    ):
        if value is None and name not in ("n", "seed"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise GenerateError(f"{name} must be an integer >= {least}, got {value!r}")
    return ZOOS[zoo]


def _block_size(definition: ZooDefinition, block_size: int | None, networks_per_task: int | None) -> int:
    if block_size is None:
        block_size = 1 if definition.train_block is None or networks_per_task is not None else DEFAULT_BLOCK_SIZE
    if block_size > 1 and definition.train_block is None:
        raise GenerateError(f"block_size {block_size}: {definition.name} has no batched path; use block_size 1")
    if block_size > 1 and networks_per_task is not None:
        raise GenerateError(
            f"networks_per_task applies to the per-network path (block_size 1), not to block_size {block_size}: "
            "on the batched path each Ray task trains one block"
        )
    return int(block_size)


def _recorded_block_size(store: ZooStore) -> int | None:
    """The block size generation.json records, if the folder holds a generated zoo (errors: see _prepare)."""
    try:
        found = json.loads(store.read_bytes(MANIFEST))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return int(found.get("block_size", 1)) if isinstance(found, dict) and found.get("zoo") else None


def _prepare(store: ZooStore, wanted: dict, n: int) -> tuple[list[int], dict[int, list[dict]]]:
    """Check the folder, write the manifest, and split networks 0..n-1 into (to train, done rows)."""
    url = store.url
    try:
        files = store.list_files()
    except OSError as exc:
        raise GenerateError(f"cannot read output location {url}: {exc}") from exc
    if files:
        if MANIFEST not in files:
            example = sorted(files)[0]
            raise GenerateError(
                f"{url} already holds files (e.g. {example}) but no {MANIFEST}: it is not a generated zoo; "
                "choose an empty or new folder"
            )
        try:
            found = json.loads(store.read_bytes(MANIFEST))
        except (ValueError, UnicodeDecodeError) as exc:
            raise GenerateError(f"{url}/{MANIFEST} is not valid JSON ({exc}); not a generated zoo") from exc
        check_manifest(url, found if isinstance(found, dict) else {}, wanted)
    beyond = sorted({k for f in files if (k := network_of(f)) is not None and k >= n})
    if beyond:
        raise GenerateError(
            f"{url} holds files of networks up to {beyond[-1]} but n is {n}: rerun with n >= {beyond[-1] + 1} "
            "or choose another folder"
        )
    try:
        store.write_bytes(MANIFEST, json.dumps(wanted, indent=2).encode())
    except OSError as exc:
        raise GenerateError(f"cannot write to output location {url}: {exc}") from exc
    store.remove_temporaries(files)
    parts = store.read_many([part_file(k) for k in range(n) if part_file(k) in files])
    done = {}
    for k in range(n):
        rows = decode_part(k, parts[part_file(k)]) if part_file(k) in parts else None
        if rows and all(row.get("file") in files for row in rows):
            done[k] = rows
    return [k for k in range(n) if k not in done], done


def _chunks(todo: list[int], workers: int, networks_per_task: int | None) -> list[list[int]]:
    # ~8 tasks per worker keeps workers busy to the end despite networks of very different cost.
    size = networks_per_task or max(1, min(16, math.ceil(len(todo) / (8 * max(workers, 1)))))
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _blocks(todo: list[int], n: int, block_size: int) -> list[tuple[list[int], list[int]]]:
    """(the block's ids, the ones to write) for each fixed block [b*S, min((b+1)*S, n)) with work left."""
    wanted: dict[int, list[int]] = {}
    for k in todo:
        wanted.setdefault(k // block_size, []).append(k)
    return [(list(range(b * block_size, min((b + 1) * block_size, n))), ids) for b, ids in sorted(wanted.items())]


def _train(zoo, seed, options, todo, store, plan, address, bar) -> dict[int, list]:
    """Run the tasks of `plan` (workers, networks_per_task, block_size, block_memory, n); the rows by network."""
    results: dict[int, list[dict]] = {}
    url, storage = store.task_url, store.storage_options
    workers, networks_per_task, block_size, block_memory, n = plan
    if not todo:
        bar.close()
        return results

    def jobs(workers: int) -> list[tuple]:  # (arguments after (zoo, seed, options), ids written)
        if block_size == 1:
            return [((ids, url, storage), ids) for ids in _chunks(todo, workers, networks_per_task)]
        return [((block, write, url, storage, block_memory), write) for block, write in _blocks(todo, n, block_size)]

    function = train_networks if block_size == 1 else train_block_task
    if workers == 0:  # in this process, without Ray (debugging)
        with bar:
            for arguments, ids in jobs(1):
                results.update(function(zoo, seed, options, *arguments))
                bar.update(len(ids))
        return results

    import ray

    from zoo_ingest.ray_runtime import ensure_ray

    ensure_ray(address)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1)(function)
    queue, pending = deque(jobs(workers)), {}
    with bar:
        try:
            while queue or pending:
                while queue and len(pending) < workers:
                    arguments, ids = queue.popleft()
                    pending[task.remote(zoo, seed, options, *arguments)] = ids
                ready, _ = ray.wait(list(pending), num_returns=1)
                ids = pending.pop(ready[0])
                try:
                    results.update(ray.get(ready[0]))
                except ray.exceptions.RayError as exc:
                    raise GenerateError(f"{zoo}: training networks {ids[0]}..{ids[-1]} failed: {exc}") from exc
                bar.update(len(ids))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    return results


def _spread(metric: str, finals: list[dict]) -> dict[str, float]:
    values = np.array([row[metric] for row in finals if row.get(metric) is not None], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {}
    names = ("min", "q10", "q25", "median", "q75", "q90", "max")
    spread = {name: float(v) for name, v in zip(names, np.quantile(values, QUANTILES))}
    if metric == "psnr":
        spread[f"share at least {PSNR_TARGET:g} dB"] = float(np.mean(values >= PSNR_TARGET))
    else:
        spread["share near chance (< 0.2)"] = float(np.mean(values < 0.2))
        spread["share above 0.9"] = float(np.mean(values > 0.9))
    return spread


def generate(
    zoo: str,
    out: str,
    n: int,
    seed: int = 0,
    *,
    workers: int | None = None,
    networks_per_task: int | None = None,
    block_size: int | None = None,
    block_memory_mb: int | None = None,
    copies: int | None = None,
    options: dict | None = None,
    address: str | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
    summary: bool = True,
) -> GenerationResult:
    """Train networks 0..n-1 of a built-in zoo into `out` (any fsspec URL) and write its metadata.csv.

    `workers`: tasks running at once (default: the Ray cluster's CPUs; 0 trains in this process without
    Ray). `block_size`: networks trained at once per task (default DEFAULT_BLOCK_SIZE for zoos with a
    batched path, else 1; 1 is the per-network path, the only one `networks_per_task` applies to).
    `block_memory_mb`: memory a task may use for one block (default: a quarter of what is available);
    a block that would need more is split. `copies` (digits-siren): fits per image; `options`: the zoo's
    other options (digits-siren: `init`, `size`, `steps`, `augment`, `psnr_floor`; see
    `generators/siren.py`). `storage_options` (`endpoint_url`, `region`, `key`, `secret` for S3) override
    the AWS environment variables; the Ray tasks get them too. Networks already complete in `out` are not
    retrained; `out` must be empty, new, or hold the same zoo (same zoo name, seed, options and block
    size). Shows a progress bar when `progress` is true and prints the spread of the final metric when
    `summary` is true. Raises GenerateError on bad arguments (naming the argument), an unwritable
    location or a folder that holds another zoo.
    """
    started = time.perf_counter()
    definition = _check_arguments(zoo, n, seed, workers, networks_per_task, block_size, block_memory_mb)
    n, seed = int(n), int(seed)
    options = _options(definition, copies, options)
    if definition.check_options is not None:
        definition.check_options(options)
    block_memory = None if block_memory_mb is None else int(block_memory_mb) << 20
    if definition.max_networks is not None and n > definition.max_networks(options):
        raise GenerateError(f"{zoo} with options {options} has at most {definition.max_networks(options)} networks")
    if not isinstance(out, str) or not out.strip():
        raise GenerateError(f"out must be a folder path or URL, got {out!r}")
    try:
        store = ZooStore(out, storage_options)
    except (ValueError, ImportError) as exc:  # fsspec: unknown protocol, missing driver
        raise GenerateError(f"cannot open output location {out}: {exc}") from exc
    if block_size is None and networks_per_task is None:  # resuming: the folder's path by default
        block_size = _recorded_block_size(store)
    block_size = _block_size(definition, block_size, networks_per_task)
    wanted = manifest(zoo, seed, options, definition.version, n, block_size, definition.block_version)
    todo, done = _prepare(store, wanted, n)
    bar = tqdm(total=n, initial=len(done), desc=f"generate {zoo}", unit="net", disable=not progress)
    plan = (workers, networks_per_task, block_size, block_memory, n)
    done.update(_train(zoo, seed, options, todo, store, plan, address, bar))
    rows = [row for k in range(n) for row in sorted(done[k], key=lambda r: r["step"])]
    try:
        store.write_bytes(METADATA, metadata_csv(rows))
    except OSError as exc:
        raise GenerateError(f"cannot write {out}/{METADATA}: {exc}") from exc
    finals = [max(done[k], key=lambda r: r["step"]) for k in range(n)]
    result = GenerationResult(
        zoo,
        out,
        n,
        tuple(todo),
        len(rows),
        definition.metric,
        _spread(definition.metric, finals),
        time.perf_counter() - started,
    )
    if summary:
        print(result.summary())
    return result
