"""Train a block of digits classifiers (one architecture, one activation) all at once: the batched path.

S networks are stacked: every parameter is one tensor `(S, ...)`, and a zoo supplies a `Family` whose
forward runs all S on their own mini-batches at once (grouped convolutions, batched matmuls). Everything
a network does alone it does here, per network:
- its hyper-parameters come as tensors: learning rate and weight decay in `BatchedOptimizer` (networks
  sorted by optimiser), dropout probability as a per-network keep factor;
- its randomness comes from its own generator, drawn in the order of the per-network loop: the training
  subset, each epoch's batch order, and its dropout masks (one draw per batch, the masks of all layers
  back to back, which is the same stream as one draw per layer);
- its training subset and epoch count: each network walks its own batches; a batch shorter than the
  others (the end of an epoch) is padded, and padded rows have loss weight 0; a network whose epochs are
  over stops stepping (done-mask) and leaves the stack at the end of that step;
- divergence: at the end of each of its epochs a network is checked; one that is no longer finite goes
  back to its last finite weights and stops, as in `classifier.train_classifier`.
Checkpoint weights are kept as they are reached and evaluated together at the end (all snapshots on the
same images), so the metrics are those `classifier.evaluate` measures, up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from zoo_ingest.generators.batched_optim import BatchedOptimizer, optimizer_order
from zoo_ingest.generators.classifier import Checkpoint
from zoo_ingest.generators.digits import split
from zoo_ingest.generators.sampling import checkpoint_epochs

EVAL_CHUNK = 16  # checkpoints evaluated at once (memory: ~7 MB each for the CNN)


@dataclass(frozen=True)
class Family:
    """How to run S stacked networks of one architecture.

    `forward(params, x, factors)`: params `{key: (S, ...)}`, images `(S, B, 8, 8)`, and either None (no
    dropout) or one dropout factor tensor `(S, B, *shape)` per entry of `mask_shapes` -> logits `(S, B, 10)`.
    `mask_shapes`: the per-sample shape of each dropout mask, in the order the per-network forward draws them.
    """

    forward: Callable[[dict, torch.Tensor, list | None], torch.Tensor]
    mask_shapes: tuple[tuple[int, ...], ...]


@dataclass
class _Net:
    hparams: dict
    generator: torch.Generator
    subset: torch.Tensor  # indices into the train split
    saved: list[int]
    last: torch.Tensor  # flat weights `(P,)` at the end of its last finite epoch
    order: torch.Tensor | None = None
    epoch: int = 0
    last_epoch: int = 0
    pos: int = 0
    done: bool = False
    snapshots: list = field(default_factory=list)  # [(epoch, flat weights)]


def _dropout(family: Family, nets: list[_Net], sizes: list[int], batch: int, dtype) -> list | None:
    """Per-network dropout factors keep/(1-p), `(S, B, *shape)` per mask; rows of p == 0 are all ones."""
    if not family.mask_shapes:
        return None
    counts = [math.prod(shape) for shape in family.mask_shapes]
    total = sum(counts)
    p = torch.tensor([net.hparams["dropout"] for net in nets], dtype=dtype)
    draws = torch.ones(len(nets), batch * total, dtype=dtype)
    for j, (net, b) in enumerate(zip(nets, sizes)):
        if b == 0 or net.hparams["dropout"] <= 0.0:
            continue
        if b == batch:
            draws[j].uniform_(generator=net.generator)
            continue
        drawn, offset = torch.empty(b * total, dtype=dtype).uniform_(generator=net.generator), 0
        for count in counts:  # the mask of each layer starts at B * offset; its padded rows stay 1
            draws[j, batch * offset : batch * offset + b * count] = drawn[b * offset : b * (offset + count)]
            offset += count
    factors = (draws >= p[:, None]).to(dtype) / (1.0 - p)[:, None]
    out, offset = [], 0
    for shape, count in zip(family.mask_shapes, counts):
        out.append(factors[:, batch * offset : batch * (offset + count)].view(len(nets), batch, *shape))
        offset += count
    return out


class _Layout:
    """Where each parameter lives in a network's flat vector: one `(S, P)` leaf holds the whole stack, so
    the optimiser, the finiteness check and snapshots are a few operations, not one per parameter."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}
        self.size = sum(math.prod(shape) for shape in self.shapes.values())

    def flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[k].reshape(-1) for k in self.shapes])

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{key: (S, *shape)}` views of `flat` `(S, P)` (or `{key: shape}` views of one vector `(P,)`)."""
        out, offset, lead = {}, 0, flat.shape[:-1]
        for k, shape in self.shapes.items():
            count = math.prod(shape)
            out[k] = flat[..., offset : offset + count].view(*lead, *shape)
            offset += count
        return out


def _train(family: Family, nets: list[_Net], layout: _Layout, batch: int, dtype) -> None:
    train = split("train")
    stack = optimizer_order([net.hparams["optimizer"] for net in nets])
    flat = torch.stack([nets[i].last for i in stack]).requires_grad_(True)
    optimizer = BatchedOptimizer(
        flat,
        [nets[i].hparams["optimizer"] for i in stack],
        [nets[i].hparams["learning_rate"] for i in stack],
        [nets[i].hparams["l2"] for i in stack],
    )
    for net in nets:
        net.order = torch.randperm(len(net.subset), generator=net.generator)
    while stack:
        members = [nets[i] for i in stack]
        index = torch.zeros(len(stack), batch, dtype=torch.long)
        weight = torch.zeros(len(stack), batch, dtype=dtype)
        sizes = []
        for j, net in enumerate(members):
            rows = net.order[net.pos : net.pos + batch] if not net.done else net.order[:0]
            sizes.append(len(rows))
            index[j, : len(rows)] = net.subset[rows]
            weight[j, : len(rows)] = 1.0 / max(len(rows), 1)
        active = torch.tensor([b > 0 for b in sizes])
        factors = _dropout(family, members, sizes, batch, dtype)
        logits = family.forward(layout.views(flat), train.images[index].to(dtype), factors)
        labels = train.labels[index].reshape(-1)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="none")
        flat.grad = None
        (losses.view(len(stack), batch) * weight).sum().backward()
        optimizer.step(flat, active)
        for j, net in enumerate(members):
            if net.done:
                continue
            net.pos += batch
            if net.pos < len(net.subset):
                continue
            net.epoch, net.pos = net.epoch + 1, 0
            if not bool(torch.isfinite(flat[j]).all()):  # diverged: back to the last finite weights, and stop
                with torch.no_grad():
                    flat[j] = net.last
                if net.last_epoch not in net.saved:
                    net.snapshots.append((net.last_epoch, net.last))
                net.done = True
                continue
            net.last, net.last_epoch = flat[j].detach().clone(), net.epoch
            if net.epoch in net.saved:
                net.snapshots.append((net.epoch, net.last))
            if net.epoch == net.hparams["epochs"]:
                net.done = True
            else:
                net.order = torch.randperm(len(net.subset), generator=net.generator)
        alive = [j for j, net in enumerate(members) if not net.done]
        if len(alive) < len(stack):  # finished networks leave the stack (a few copies of (S, P) tensors)
            keep = torch.tensor(alive, dtype=torch.long)
            flat = flat.detach()[keep].requires_grad_(True)
            optimizer.select(keep)
            stack = [stack[j] for j in alive]


@torch.no_grad()
def _evaluate(family: Family, nets: list[_Net], layout: _Layout, dtype) -> list[list[Checkpoint]]:
    """Every snapshot's metrics: train ones on its network's subset, test ones on the test split."""
    train, test = split("train"), split("test")
    images = torch.cat([train.images, test.images]).to(dtype)
    labels = torch.cat([train.labels, test.labels])
    n_train = len(train.labels)
    entries = [(net, epoch, state) for net in nets for epoch, state in net.snapshots]
    out: dict[int, list[Checkpoint]] = {id(net): [] for net in nets}
    for start in range(0, len(entries), EVAL_CHUNK):
        chunk = entries[start : start + EVAL_CHUNK]
        params = layout.views(torch.stack([state for _, _, state in chunk]))
        logits = family.forward(params, images.expand(len(chunk), *images.shape), None)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.repeat(len(chunk)), reduction="none")
        losses = losses.view(len(chunk), -1)
        correct = (logits.argmax(dim=-1) == labels).to(torch.float32)
        for c, (net, epoch, state) in enumerate(chunk):
            metrics = dict(
                train_accuracy=correct[c, :n_train][net.subset].mean().item(),
                test_accuracy=correct[c, n_train:].mean().item(),
                train_loss=losses[c, :n_train][net.subset].mean().item(),
                test_loss=losses[c, n_train:].mean().item(),
            )
            weights = {k: v.to(torch.float32).clone() for k, v in layout.views(state).items()}
            out[id(net)].append(Checkpoint(epoch, weights, metrics))
    return [sorted(out[id(net)], key=lambda c: c.step) for net in nets]


def train_classifiers(
    family: Family,
    states: list[dict[str, torch.Tensor]],
    hparams: list[dict],
    generators: list[torch.Generator],
    batch_size: int,
    dtype: torch.dtype = torch.float32,
) -> list[list[Checkpoint]]:
    """Train S networks of one `family` from initial weights `states` at once; their checkpoints, in order.

    `hparams[i]` has the keys `classifier.train_classifier` reads; `generators[i]` is network i's
    generator, right after its weights were initialised. The checkpoint schedule and the divergence rule are
    `classifier.train_classifier`'s.
    """
    if not states:
        return []
    train, layout = split("train"), _Layout(states[0])
    nets = []
    for state, h, generator in zip(states, hparams, generators):
        n_train = max(batch_size, round(h["train_fraction"] * len(train.labels)))
        subset = torch.randperm(len(train.labels), generator=generator)[:n_train]
        start = layout.flatten(state).detach().to(dtype)
        nets.append(_Net(h, generator, subset, checkpoint_epochs(h["epochs"]), start, snapshots=[(0, start)]))
    _train(family, nets, layout, batch_size, dtype)
    return _evaluate(family, nets, layout, dtype)
