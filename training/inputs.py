"""What a training worker's step loop consumes: each epoch's prepared `(WeightSpace, targets)` batches.

`ShardRows` reads this worker's shard of the training split and shuffles it itself, in numpy: Ray Data's
per-batch cost (its local shuffle buffer handing out batches of 32 rows) was most of the producer's time
once STATNet's step got fast. A streamed epoch reads the shard in chunks of a few MiB and draws each batch
at random from a pool of at least `data.shuffle_buffer` more rows than the batch. When the split is cached
(`data.cache`), the worker also keeps the rows of its first complete epoch in its own memory, and every
later epoch is a fresh permutation of them, with no read at all.

`epoch_batches` converts each numpy batch to a WeightSpace, augments it with the epoch's own generator and
moves it to the device. `TrainingInputs` serves those batches either inline (`data.prefetch: 0`: the step
loop runs the generator itself) or from an `EpochPrefetcher` thread (`data.prefetch: N`): the same
generator, so the same batches and augmentation draws either way.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from metanets import NetworkSpec, WeightSpace
from training.augment import augment
from training.batches import batch_targets, batch_to_weightspace
from training.config import TrainConfig
from training.prefetch import EpochPrefetcher
from zoo_ingest.table import numpy_column

READ_CHUNK_BYTES = 32 << 20  # a streamed read's chunk is at most this big (when a row allows it)


def _rows(columns: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(columns.values())))


def _take(columns: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.take(v, index, axis=0) for k, v in columns.items()}


def _dense(batch: Mapping) -> dict[str, np.ndarray]:
    """A Ray Data numpy batch with every column a plain (rows, ...) array (ragged tensor columns stacked)."""
    return {key: numpy_column(col, key) for key, col in batch.items()}


class ShufflePool:
    """Rows waiting to be served, in preallocated arrays (one per column, grown when needed).

    `draw(rng, k)` takes `k` rows chosen uniformly without replacement and fills their slots with the last
    rows, so a draw copies O(k) rows whatever the pool's size."""

    def __init__(self):
        self._cols: dict[str, np.ndarray] | None = None
        self.size = 0

    def add(self, chunk: Mapping[str, np.ndarray]) -> None:
        m = _rows(chunk)
        if self._cols is None or self.size + m > len(next(iter(self._cols.values()))):
            capacity = max(2 * (self.size + m), 16)
            grown = {k: np.empty((capacity, *v.shape[1:]), v.dtype) for k, v in chunk.items()}
            if self._cols is not None:
                for k, v in grown.items():
                    v[:self.size] = self._cols[k][:self.size]
            self._cols = grown
        for k, v in chunk.items():
            self._cols[k][self.size:self.size + m] = v
        self.size += m

    def draw(self, rng: np.random.Generator, k: int) -> dict[str, np.ndarray]:
        k = min(k, self.size)
        idx = rng.choice(self.size, size=k, replace=False)
        out = _take(self._cols, idx)
        last = self.size - k  # rows at or past `last` that were not drawn move into the holes below it
        holes = np.sort(idx[idx < last])
        drawn_tail = np.zeros(k, bool)
        drawn_tail[idx[idx >= last] - last] = True
        movers = last + np.flatnonzero(~drawn_tail)
        for v in self._cols.values():
            v[holes] = v[movers]
        self.size = last
        return out


class ShardRows:
    """This worker's rows of the training split, epoch by epoch, as shuffled numpy batches of `batch_size`.

    `shard` is a Ray Data iterator (the worker's `streaming_split`). A streamed epoch reads it in chunks of
    `read_rows` into a `ShufflePool` and, whenever the pool holds `shuffle_buffer + batch_size` rows or
    more, serves a batch drawn uniformly from it; at the end of the read, what is left is served in a
    random order (the last batch may be smaller). With `keep`, the rows of the first epoch read to its end
    stay in this worker's memory and each later epoch serves a fresh permutation of all of them, reading
    nothing. The draws come from a generator seeded by `(seed, epoch, rank)` and used by the caller's
    thread only. An epoch stopped before its end keeps nothing.
    """

    def __init__(self, shard, *, batch_size: int, shuffle_buffer: int, seed: int, rank: int, keep: bool,
                 read_rows: int):
        if batch_size < 1 or shuffle_buffer < 1 or read_rows < 1:
            raise ValueError(f"batch_size, shuffle_buffer and read_rows must be at least 1, got "
                             f"{batch_size}, {shuffle_buffer}, {read_rows}")
        self._shard, self._batch, self._buffer = shard, batch_size, shuffle_buffer
        self._seed, self._rank, self._keep, self._read_rows = seed, rank, keep, read_rows
        self.kept: dict[str, np.ndarray] | None = None  # the worker's rows, once an epoch has read them all
        self.reads = 0  # epochs that read the shard (tests and benchmarks look)

    @classmethod
    def for_config(cls, shard, cfg: TrainConfig, spec: NetworkSpec, *, rank: int, keep: bool) -> ShardRows:
        row_bytes = 4 * spec.num_params + 64  # float32 weights and the target
        read_rows = max(cfg.batch_size, min(4096, READ_CHUNK_BYTES // row_bytes))
        return cls(shard, batch_size=cfg.batch_size, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.seed,
                   rank=rank, keep=keep, read_rows=read_rows)

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([self._seed, epoch, self._rank])
        if self.kept is not None:
            yield from self._serve(self.kept, rng.permutation(_rows(self.kept)))
            return
        self.reads += 1
        kept, pool = [], ShufflePool()
        chunks = iter(self._shard.iter_batches(batch_size=self._read_rows, batch_format="numpy", drop_last=False,
                                               prefetch_batches=1))
        try:
            for chunk in chunks:
                chunk = _dense(chunk)
                if self._keep:
                    kept.append(chunk)
                pool.add(chunk)
                while pool.size >= self._buffer + self._batch:
                    yield pool.draw(rng, self._batch)
        finally:  # stopped early (the consumer closed us): close the reader's iterator now
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        while pool.size:
            yield pool.draw(rng, self._batch)
        if self._keep and kept:  # reached only when the epoch was read to its end
            self.kept = kept[0] if len(kept) == 1 else {k: np.concatenate([c[k] for c in kept]) for k in kept[0]}

    def _serve(self, columns: Mapping[str, np.ndarray], order: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(order), self._batch):
            yield _take(columns, order[start:start + self._batch])


def augment_generator(cfg: TrainConfig, epoch: int, rank: int) -> torch.Generator:
    """The generator of one epoch's augmentation draws on one rank."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)


def epoch_batches(rows: ShardRows, cfg: TrainConfig, spec: NetworkSpec, epoch: int, *, rank: int,
                  device: torch.device, dtype: torch.dtype) -> Iterator[tuple[WeightSpace, torch.Tensor]]:
    """One epoch of `(WeightSpace (B, 1, ...) on device in dtype, targets (B,))`."""
    gen = augment_generator(cfg, epoch, rank)
    for batch in rows.epoch(epoch):
        ws = augment(batch_to_weightspace(batch, spec), cfg.augment, gen).to(device=device, dtype=dtype)
        yield ws, batch_targets(batch, cfg.data.target, cfg.task.kind).to(device)


class TrainingInputs:
    """The step loop's batches, epoch by epoch: inline or prefetched (`cfg.data.prefetch` batches ahead).

    `start(first_epoch)` starts the producer (a no-op inline, or when already started there); it may be
    called before the model is set up, so the first epoch's read overlaps that set-up. `epoch(e)` must then
    be asked for the epochs `first_epoch, first_epoch + 1, ...` in order. `close()` stops the producer.
    `keep`: hold the worker's rows in memory after the first complete epoch (`ShardRows`)."""

    def __init__(self, shard, cfg: TrainConfig, spec: NetworkSpec, *, rank: int, device: torch.device,
                 dtype: torch.dtype, keep: bool = False):
        self.rows = ShardRows.for_config(shard, cfg, spec, rank=rank, keep=keep)
        self._make_epoch = functools.partial(epoch_batches, self.rows, cfg, spec, rank=rank, device=device,
                                             dtype=dtype)
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
