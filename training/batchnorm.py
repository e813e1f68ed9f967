"""Population statistics for a metanetwork's BatchNorm layers, recomputed with its current weights.

`standardize: true` puts a BatchNorm (without affine) on a model's pooled invariant features. In training it
standardises by batch statistics; in eval mode by running statistics, an exponential moving average
(momentum 0.1) of the batch statistics seen in training. When a trainable body sits before the BatchNorm
(np, hnp, Monomial-NFN and their canonical variants), those features move with every optimiser step; on a
zoo whose features spread by a std of about 1e-3 (the shared-init INR zoo), the moving average lags the
current features by many standard deviations, and the model scores near chance in eval mode while its
training loss falls. A cosine schedule hides it at the very end (the learning rate reaches 0 and the
average catches up); validation during training, early stopping and a stop mid-schedule do not.

`recompute_batchnorm` replaces the running statistics by the average over fixed batches of the training
data evaluated with the current weights ("precise BatchNorm"): the eval-mode model then standardises with
the training data's statistics under the weights it is evaluated with. Only BatchNorm layers change (other
layers stay in eval mode while the batches pass), and no gradient is taken.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable, all_reduce: bool = False) -> int:
    """Set every BatchNorm's running mean and variance of `model` to their averages over `batches` (inputs
    of `model`), computed with the current weights; returns the number of rows used (0: nothing changed).

    Each batch counts equally (BatchNorm's cumulative average, momentum None). With `all_reduce` the
    statistics are averaged over the ranks of the default process group, so every rank holds the same
    buffers (each rank passes its own rows)."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    rows = 0
    try:
        for x in batches:
            if x.batch_size < 2:  # a one-row batch has no batch variance
                continue
            model(x)
            rows += x.batch_size
    finally:
        for m, (momentum, mean, var, tracked) in zip(layers, saved):
            m.momentum = momentum
            if rows == 0:  # nothing passed: keep the statistics as they were
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    # every rank takes part (a rank without rows contributes the statistics it kept), or the collective hangs
    if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        for m in layers:
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)
    return rows


class BatchReservoir:
    """The first `max_rows` training rows a worker sees, kept as they were fed to the model (augmented,
    on its device), for `recompute_batchnorm` before each validation; filled once, in the first epoch
    this process trains."""

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.batches: list = []
        self.rows = 0

    def offer(self, ws) -> None:
        if self.rows >= self.max_rows or ws.batch_size < 2:
            return
        keep = ws[: self.max_rows - self.rows] if ws.batch_size > self.max_rows - self.rows else ws
        if keep.batch_size < 2:
            return
        self.batches.append(keep)
        self.rows += keep.batch_size
