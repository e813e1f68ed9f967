"""digits-cnn: CNNs with the Small CNN Zoo architecture, trained on digits with sampled hyper-parameters.

Architecture (4,970 parameters, the same shapes as the Small CNN Zoo): three Conv2d 3x3, stride 2,
padding 1 layers 1 -> 16 -> 16 -> 16 (8x8 -> 4x4 -> 2x2 -> 1x1), each followed by the activation (and
dropout while training), global average pooling, and a Linear 16 -> 10 classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo_ingest.generators.classifier import OPTIMIZERS, NetworkRun, apply_dropout, train_classifier
from zoo_ingest.generators.sampling import choice, log_uniform, network_rng, split_of_rank, torch_generator

ZOO = "digits-cnn"
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}
BATCH_SIZE = 64


class DigitsCNN(nn.Module):
    """Images `(B, 8, 8)` or `(B, 1, 8, 8)` -> logits `(B, 10)`."""

    def __init__(self, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor, dropout: float = 0.0, generator=None) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        if x.dim() == 3:
            x = x.unsqueeze(1)
        for conv in (self.conv1, self.conv2, self.conv3):
            x = apply_dropout(act(conv(x)), dropout, generator)
        return self.fc(x.mean(dim=(2, 3)))


def build_digits_cnn(activation: str = "relu") -> DigitsCNN:
    """An untrained digits CNN; load a generated checkpoint with `load_state_dict`."""
    return DigitsCNN(activation)


def sample_hparams(rng) -> dict:
    """Hyper-parameters drawn as in the Small CNN Zoo, with ranges sized for digits."""
    return dict(
        activation=choice(rng, sorted(ACTIVATIONS)),
        init_scale=log_uniform(rng, 0.2, 3.0),
        learning_rate=log_uniform(rng, 3e-4, 5e-2),
        l2=log_uniform(rng, 1e-8, 1e-2),
        dropout=float(rng.uniform(0.0, 0.5)),
        optimizer=choice(rng, OPTIMIZERS),
        train_fraction=float(rng.uniform(0.1, 1.0)),
        epochs=int(rng.integers(1, 21)),
    )


def init_weights(model: nn.Module, scale: float, generator: torch.Generator) -> None:
    """Weights ~ N(0, (scale / sqrt(fan_in))^2), biases zero: `scale` 1 is LeCun-normal."""
    with torch.no_grad():
        for module in (model.conv1, model.conv2, model.conv3, model.fc):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, scale / fan_in**0.5, generator=generator)
            module.bias.zero_()


def train_network(k: int, seed: int, options: dict) -> NetworkRun:
    """Network k of the zoo; its checkpoints train lazily as they are iterated."""
    rng = network_rng(ZOO, seed, k)
    hparams = sample_hparams(rng)
    generator = torch_generator(rng)
    model = DigitsCNN(hparams["activation"])
    init_weights(model, hparams["init_scale"], generator)
    checkpoints = train_classifier(model, hparams, generator, BATCH_SIZE)
    return NetworkRun(hparams, hparams["activation"], split_of_rank(k), checkpoints)
