"""What a Ray task runs: train a batch of networks, writing each one's checkpoints and then its part."""

from __future__ import annotations

import json

import torch

from zoo_ingest.generators import ZOOS
from zoo_ingest.generators.store import ZooStore, checkpoint_file, encode_part, part_file


def write_network(zoo: str, seed: int, options: dict, k: int, store: ZooStore) -> list[dict]:
    """Train network k, write its checkpoints as they come, then its part (which marks it done).

    Returns its metadata rows, one per checkpoint. Memory holds one network at a time.
    """
    from safetensors.torch import save

    run = ZOOS[zoo].train_network(k, seed, options)
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


def train_networks(
    zoo: str, seed: int, options: dict, ids: list[int], url: str, storage_options: dict | None = None
) -> list[tuple[int, list[dict]]]:
    """Train networks `ids` one after the other on one thread; returns [(k, rows), ...]."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core per task, and the same kernels whatever the machine's core count
    try:
        store = ZooStore(url, storage_options)
        return [(k, write_network(zoo, seed, options, k, store)) for k in ids]
    finally:
        torch.set_num_threads(threads)
