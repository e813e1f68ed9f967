"""digits-cnn: CNNs with the Small CNN Zoo architecture, trained on digits with sampled hyper-parameters.

Architecture (4,970 parameters, the same shapes as the Small CNN Zoo): three Conv2d 3x3, stride 2,
padding 1 layers 1 -> 16 -> 16 -> 16 (8x8 -> 4x4 -> 2x2 -> 1x1), each followed by the activation (and
dropout while training), global average pooling, and a Linear 16 -> 10 classifier.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from zoo_ingest.generators.batched import Family, train_classifiers
from zoo_ingest.generators.classifier import OPTIMIZERS, NetworkRun, apply_dropout, snapshot, train_classifier
from zoo_ingest.generators.sampling import choice, log_uniform, network_rng, split_of_rank, torch_generator
from zoo_ingest.generators.store import GenerateError

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


def check_options(options: dict) -> None:
    """`activation` (optional): every network gets this activation instead of a sampled one."""
    activation = options.get("activation")
    if activation is not None and activation not in ACTIVATIONS:
        raise GenerateError(f"--activation must be one of {', '.join(sorted(ACTIVATIONS))}, got {activation!r}")


def _start(k: int, seed: int, model: DigitsCNN | None = None,
           activation: str | None = None) -> tuple[dict, torch.Generator, DigitsCNN]:
    """Network k's hyper-parameters, its generator (after initialisation) and its initialised model.
    `activation` replaces the sampled one; every other draw is the same as without it."""
    rng = network_rng(ZOO, seed, k)
    hparams = sample_hparams(rng)
    if activation is not None:
        hparams["activation"] = activation
    generator = torch_generator(rng)
    if model is None or model.activation != hparams["activation"]:
        model = DigitsCNN(hparams["activation"])
    init_weights(model, hparams["init_scale"], generator)  # sets every parameter
    return hparams, generator, model


def train_network(k: int, seed: int, options: dict) -> NetworkRun:
    """Network k of the zoo; its checkpoints train lazily as they are iterated."""
    hparams, generator, model = _start(k, seed, activation=options.get("activation"))
    checkpoints = train_classifier(model, hparams, generator, BATCH_SIZE)
    return NetworkRun(hparams, hparams["activation"], split_of_rank(k), checkpoints)


@functools.cache
def family(activation: str) -> Family:
    """S stacked digits CNNs: each conv is one grouped convolution (S groups), the classifier a batched matmul."""
    act = ACTIVATIONS[activation]

    def forward(params: dict, x: torch.Tensor, factors: list | None) -> torch.Tensor:
        s, b = x.shape[:2]
        # Network i's images are input channel i; channels-last measured fastest (bench/generate.py).
        h = x.transpose(0, 1).reshape(b, s, 8, 8).contiguous(memory_format=torch.channels_last)
        for i, name in enumerate(("conv1", "conv2", "conv3")):
            w = params[f"{name}.weight"].flatten(0, 1).contiguous(memory_format=torch.channels_last)
            h = act(F.conv2d(h, w, params[f"{name}.bias"].flatten(), stride=2, padding=1, groups=s))
            if factors is not None:  # factors[i]: (S, B, 16, H, W) -> h's layout (B, S * 16, H, W)
                h = h * factors[i].transpose(0, 1).reshape(h.shape)
        h = h.reshape(b, s, 16).transpose(0, 1)  # the 1x1 map: global average pooling is the identity
        return torch.baddbmm(params["fc.bias"].unsqueeze(1), h, params["fc.weight"].transpose(1, 2))

    return Family(forward, ((16, 4, 4), (16, 2, 2), (16, 1, 1)))


def train_block(ids: list[int], seed: int, options: dict) -> list[NetworkRun]:
    """Networks `ids` trained together, one stack per activation; hyper-parameters and initial weights are
    network k's own (as in `train_network`). Returns one NetworkRun per id, in order."""
    starts, model = [], None
    for k in ids:
        hparams, generator, model = _start(k, seed, model, options.get("activation"))
        starts.append((k, hparams, generator, snapshot(model)))
    runs = {}
    for activation in sorted(ACTIVATIONS):
        group = [s for s in starts if s[1]["activation"] == activation]
        if not group:
            continue
        checkpoints = train_classifiers(
            family(activation), [s[3] for s in group], [s[1] for s in group], [s[2] for s in group], BATCH_SIZE
        )
        for (k, hparams, _, _), cps in zip(group, checkpoints):
            runs[k] = NetworkRun(hparams, activation, split_of_rank(k), iter(cps))
    return [runs[k] for k in ids]
