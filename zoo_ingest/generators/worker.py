"""What a Ray task runs: train networks (one by one, or a block at once), writing each one's checkpoints
and then its part."""

from __future__ import annotations

import json
import os

import torch

from zoo_ingest.generators import ZOOS
from zoo_ingest.generators.classifier import NetworkRun
from zoo_ingest.generators.store import GenerateError, ZooStore, checkpoint_file, encode_part, part_file


def write_run(zoo: str, seed: int, k: int, run: NetworkRun, store: ZooStore) -> list[dict]:
    """Write network k's checkpoints as they come, then its part (which marks it done); its metadata rows."""
    from safetensors.torch import save

    hparams = {f"hparam.{name}": value for name, value in run.hparams.items()}
    rows = []
    for checkpoint in run.checkpoints:
        relpath = checkpoint_file(k, checkpoint.step)
        # One header key: safetensors writes several in random order, and zoos must be bit-identical.
        about = dict(zoo=zoo, seed=seed, network_id=k, step=checkpoint.step, activation=run.activation)
        header = {"metazoo": json.dumps(about, sort_keys=True)}
        store.write_bytes(relpath, save(checkpoint.state_dict, metadata=header))
        rows.append(
            dict(
                file=relpath,
                network_id=k,
                step=checkpoint.step,
                split=run.split,
                label=run.label,
                activation=run.activation,
                **checkpoint.metrics,
                **hparams,
            )
        )
    store.write_bytes(part_file(k), encode_part(k, rows))
    return rows


def write_network(zoo: str, seed: int, options: dict, k: int, store: ZooStore) -> list[dict]:
    """Train network k alone (the per-network path) and write it. Memory holds one network at a time."""
    return write_run(zoo, seed, k, ZOOS[zoo].train_network(k, seed, options), store)


class _OneThread:
    """One core per task, and the same kernels whatever the machine's core count."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def train_networks(
    zoo: str, seed: int, options: dict, ids: list[int], url: str, storage_options: dict | None = None
) -> list[tuple[int, list[dict]]]:
    """Train networks `ids` one after the other on one thread; returns [(k, rows), ...]."""
    with _OneThread():
        store = ZooStore(url, storage_options)
        return [(k, write_network(zoo, seed, options, k, store)) for k in ids]


def available_memory() -> int:
    """Bytes of memory available now (psutil when installed, else the free pages)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def networks_at_once(zoo: str, block: int, block_memory: int | None = None) -> int:
    """How many networks of a block train together: all of them, unless their estimated memory exceeds
    `block_memory` bytes (default: a quarter of the memory available now), in which case the block is
    split into consecutive parts that do fit, trained one after the other."""
    budget = block_memory if block_memory is not None else available_memory() // 4
    return max(1, min(block, budget // ZOOS[zoo].block_bytes))


def train_block_task(
    zoo: str,
    seed: int,
    options: dict,
    block: list[int],
    write: list[int],
    url: str,
    storage_options: dict | None = None,
    block_memory: int | None = None,
) -> list[tuple[int, list[dict]]]:
    """Train the networks `block` together (split if they do not fit in memory) and write those in `write`.

    A resumed block is trained whole, so its networks train with the same companions as in a clean run;
    only the ones not yet written are written. Returns [(k, rows), ...] for `write`.
    """
    definition, wanted = ZOOS[zoo], set(write)
    at_once = networks_at_once(zoo, len(block), block_memory)
    out = []
    with _OneThread():
        store = ZooStore(url, storage_options)
        for start in range(0, len(block), at_once):
            ids = block[start : start + at_once]
            if not wanted & set(ids):
                continue
            runs = definition.train_block(ids, seed, options)
            if len(runs) != len(ids):
                raise GenerateError(f"{zoo}: train_block returned {len(runs)} networks for {len(ids)} ids")
            out += [(k, write_run(zoo, seed, k, run, store)) for k, run in zip(ids, runs) if k in wanted]
    return out
