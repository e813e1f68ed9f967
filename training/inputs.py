"""What a training worker's step loop consumes: each epoch's prepared `(WeightSpace, targets)` batches.

`epoch_batches` reads this worker's shard of the training split (shuffled per epoch), converts each
numpy batch to a WeightSpace, augments it with the epoch's own generator and moves it to the device.
`TrainingInputs` serves those batches either inline (`data.prefetch: 0`: the step loop runs the
generator itself) or from an `EpochPrefetcher` thread (`data.prefetch: N`): the same generator, so the
same batches and augmentation draws either way.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from metanets import NetworkSpec, WeightSpace
from training.augment import augment
from training.batches import batch_targets, batch_to_weightspace
from training.config import TrainConfig
from training.prefetch import EpochPrefetcher


def iter_shard(shard, cfg: TrainConfig, epoch: int):
    """This worker's share of the training split, shuffled differently (and reproducibly) every epoch."""
    yield from shard.iter_batches(
        batch_size=cfg.batch_size, batch_format="numpy", drop_last=False, prefetch_batches=4,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer, local_shuffle_seed=cfg.seed * 10007 + epoch,
    )


def augment_generator(cfg: TrainConfig, epoch: int, rank: int) -> torch.Generator:
    """The generator of one epoch's augmentation draws on one rank."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)


def epoch_batches(shard, cfg: TrainConfig, spec: NetworkSpec, epoch: int, *, rank: int, device: torch.device,
                  dtype: torch.dtype) -> Iterator[tuple[WeightSpace, torch.Tensor]]:
    """One epoch of `(WeightSpace (B, 1, ...) on device in dtype, targets (B,))`."""
    gen = augment_generator(cfg, epoch, rank)
    for batch in iter_shard(shard, cfg, epoch):
        ws = augment(batch_to_weightspace(batch, spec), cfg.augment, gen).to(device=device, dtype=dtype)
        yield ws, batch_targets(batch, cfg.data.target, cfg.task.kind).to(device)


class TrainingInputs:
    """The step loop's batches, epoch by epoch: inline or prefetched (`cfg.data.prefetch` batches ahead).

    `start(first_epoch)` starts the producer (a no-op inline, or when already started there); it may be
    called before the model is set up, so the first epoch's read overlaps that set-up. `epoch(e)` must then
    be asked for the epochs `first_epoch, first_epoch + 1, ...` in order. `close()` stops the producer."""

    def __init__(self, shard, cfg: TrainConfig, spec: NetworkSpec, *, rank: int, device: torch.device,
                 dtype: torch.dtype):
        self._make_epoch = functools.partial(epoch_batches, shard, cfg, spec, rank=rank, device=device, dtype=dtype)
        self._depth, self._last_epoch = cfg.data.prefetch, cfg.epochs - 1
        self._prefetcher: EpochPrefetcher | None = None
        self._first_epoch: int | None = None

    def start(self, first_epoch: int) -> None:
        if self._first_epoch is not None:
            if first_epoch != self._first_epoch:
                raise ValueError(f"training inputs started at epoch {self._first_epoch}, asked for {first_epoch}")
            return
        self._first_epoch = first_epoch
        if self._depth > 0 and first_epoch <= self._last_epoch:
            self._prefetcher = EpochPrefetcher(self._make_epoch, range(first_epoch, self._last_epoch + 1),
                                               self._depth)

    def epoch(self, epoch: int) -> Iterator[tuple[WeightSpace, torch.Tensor]]:
        if self._first_epoch is None:
            raise RuntimeError("TrainingInputs.epoch() before start()")
        if self._prefetcher is None:
            return self._make_epoch(epoch)
        return self._prefetcher.epoch(epoch)

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
