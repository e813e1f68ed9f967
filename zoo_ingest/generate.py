"""Train a built-in zoo with Ray tasks: `generate(zoo, out, n, seed)`, behind `metazoo generate`.

Networks are trained in Ray tasks of several networks each, at most `workers` tasks at a time (bounded
memory: a task holds one network, the driver only metadata rows). Each task writes its networks'
checkpoints and parts straight to `out`; the driver merges the parts into `metadata.csv` at the end.
A rerun into the same folder trains only the networks that are missing (see `generators/store.py`).
The file layout and every column are documented in docs/zoos.md.
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
from zoo_ingest.generators.worker import train_networks

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
        if key not in options or key == "copies":
            raise GenerateError(f"option {key!r} does not apply to {definition.name}; it takes {sorted(options)}")
        options[key] = value
    if copies is not None:
        if "copies" not in options:
            raise GenerateError(f"--copies applies to digits-siren only, not to {definition.name}")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise GenerateError(f"copies must be a positive integer, got {copies!r}")
        options["copies"] = copies
    return options


def _check_arguments(zoo: str, n, seed, workers, networks_per_task) -> ZooDefinition:
    if zoo not in ZOOS:
        raise GenerateError(f"unknown zoo {zoo!r}; choose from {', '.join(ZOOS)}")
    for name, value, least in (
        ("n", n, 1),
        ("seed", seed, 0),
        ("workers", workers, 0),
        ("networks_per_task", networks_per_task, 1),
    ):
        if value is None and name in ("workers", "networks_per_task"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise GenerateError(f"{name} must be an integer >= {least}, got {value!r}")
    return ZOOS[zoo]


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


def _train(zoo, seed, options, todo, store, workers, networks_per_task, address, bar) -> dict[int, list]:
    results: dict[int, list[dict]] = {}
    url, storage = store.task_url, store.storage_options
    if not todo:
        bar.close()
        return results
    if workers == 0:  # in this process, without Ray (debugging)
        with bar:
            for ids in _chunks(todo, 1, networks_per_task):
                results.update(train_networks(zoo, seed, options, ids, url, storage))
                bar.update(len(ids))
        return results

    import ray

    from zoo_ingest.ray_runtime import ensure_ray

    ensure_ray(address)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1)(train_networks)
    queue, pending = deque(_chunks(todo, workers, networks_per_task)), {}
    with bar:
        try:
            while queue or pending:
                while queue and len(pending) < workers:
                    ids = queue.popleft()
                    pending[task.remote(zoo, seed, options, ids, url, storage)] = ids
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
    copies: int | None = None,
    options: dict | None = None,
    address: str | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
    summary: bool = True,
) -> GenerationResult:
    """Train networks 0..n-1 of a built-in zoo into `out` (any fsspec URL) and write its metadata.csv.

    `workers`: tasks running at once (default: the Ray cluster's CPUs; 0 trains in this process without
    Ray). `copies` (digits-siren): fits per image; `options`: the zoo's other options (digits-siren:
    `init`, `size`, `steps`, `augment`, `psnr_floor`; see `generators/siren.py`). `storage_options`
    (`endpoint_url`, `region`, `key`, `secret` for S3) override the AWS environment variables;
    the Ray tasks get them too.
    Networks already complete in `out` are not retrained; `out` must be empty, new, or hold the same zoo
    (same zoo name, seed and options). Shows a progress bar when `progress` is true and prints the spread
    of the final metric when `summary` is true. Raises GenerateError on bad arguments, an unwritable
    location or a folder that holds another zoo.
    """
    started = time.perf_counter()
    definition = _check_arguments(zoo, n, seed, workers, networks_per_task)
    n, seed = int(n), int(seed)
    options = _options(definition, copies, options)
    if definition.max_networks is not None and n > definition.max_networks(options):
        raise GenerateError(f"{zoo} with options {options} has at most {definition.max_networks(options)} networks")
    if not isinstance(out, str) or not out.strip():
        raise GenerateError(f"out must be a folder path or URL, got {out!r}")
    try:
        store = ZooStore(out, storage_options)
    except (ValueError, ImportError) as exc:  # fsspec: unknown protocol, missing driver
        raise GenerateError(f"cannot open output location {out}: {exc}") from exc
    todo, done = _prepare(store, manifest(zoo, seed, options, definition.version, n), n)
    bar = tqdm(total=n, initial=len(done), desc=f"generate {zoo}", unit="net", disable=not progress)
    done.update(_train(zoo, seed, options, todo, store, workers, networks_per_task, address, bar))
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
