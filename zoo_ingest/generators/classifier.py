"""The training loop shared by the digits classifier zoos (CNN and transformer).

A model's forward takes images `(B, 8, 8)` and returns logits `(B, 10)`; during training it also gets
`dropout` (probability) and `generator` (the network's torch generator), so dropout masks come from the
network's own randomness and never from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo_ingest.generators.digits import split
from zoo_ingest.generators.sampling import checkpoint_epochs

OPTIMIZERS = ("sgd", "adam", "rmsprop")


@dataclass(frozen=True)
class Checkpoint:
    """One saved state of a network: `step` (epochs or optimisation steps, per zoo), weights, metrics."""

    step: int
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]


@dataclass
class NetworkRun:
    """One network of a zoo: what describes it, and its checkpoints (produced lazily, while training)."""

    hparams: dict
    activation: str
    split: str
    checkpoints: Iterator[Checkpoint]
    label: int | None = None


def apply_dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout with masks drawn from `generator`; the identity when p == 0 or generator is None."""
    if p <= 0.0 or generator is None:
        return x
    keep = torch.rand(x.shape, generator=generator) >= p
    return x * keep / (1.0 - p)


def make_optimizer(name: str, params, lr: float, l2: float) -> torch.optim.Optimizer:
    # foreach=False: the same single-tensor kernels on every machine, for bit-identical zoos.
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=l2, foreach=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=l2, foreach=False)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=l2, foreach=False)
    raise ValueError(f"unknown optimiser {name!r}; choose from {OPTIMIZERS}")


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on images `(N, 8, 8)` with labels `(N,)`."""
    model.eval()
    logits = model(images)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return accuracy, loss


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}


def train_classifier(
    model: nn.Module, hparams: dict, generator: torch.Generator, batch_size: int
) -> Iterator[Checkpoint]:
    """Train `model` on the fixed digits train split and yield checkpoints after the scheduled epochs.

    Uses `hparams` keys `optimizer`, `learning_rate`, `l2`, `dropout`, `train_fraction`, `epochs`. The
    network trains on a random subset (`train_fraction` of the train split); train metrics are measured on
    that subset, test metrics on the fixed test split. A network whose weights stop being finite stops
    training; its last checkpoint holds its last finite weights (step = the epoch they were reached), so
    every checkpoint is finite and no two checkpoints of a network repeat the same weights.
    """
    train, test = split("train"), split("test")
    n_train = max(batch_size, round(hparams["train_fraction"] * len(train.labels)))
    subset = torch.randperm(len(train.labels), generator=generator)[:n_train]
    x, y = train.images[subset], train.labels[subset]
    optimizer = make_optimizer(hparams["optimizer"], model.parameters(), hparams["learning_rate"], hparams["l2"])
    saved = checkpoint_epochs(hparams["epochs"])

    def checkpoint(epoch: int) -> Checkpoint:
        train_acc, train_loss = evaluate(model, x, y)
        test_acc, test_loss = evaluate(model, test.images, test.labels)
        metrics = dict(train_accuracy=train_acc, test_accuracy=test_acc, train_loss=train_loss, test_loss=test_loss)
        return Checkpoint(epoch, snapshot(model), metrics)

    last_finite, last_epoch = snapshot(model), 0
    for epoch in range(hparams["epochs"] + 1):
        if epoch in saved:
            yield checkpoint(epoch)
        if epoch == hparams["epochs"]:
            return
        model.train()
        order = torch.randperm(n_train, generator=generator)
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            logits = model(x[idx], dropout=hparams["dropout"], generator=generator)
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            # Diverged: end on the last finite weights rather than write NaNs or duplicate checkpoints.
            model.load_state_dict(last_finite)
            if last_epoch not in saved:
                yield checkpoint(last_epoch)
            return
        last_finite, last_epoch = snapshot(model), epoch + 1
