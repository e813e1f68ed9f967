"""digits-siren: SIRENs 2 -> 32 -> 32 -> 1, each fitted to one digits image.

omega_0 = 30 lives in the forward function, never in the stored weights: a sine layer computes
`sin(omega_0 * (W x + b))`, as in the SIREN paper (Sitzmann et al., 2020). The stored weights use the
paper's initialisation: first layer W ~ U(-1/2, 1/2) (1 / fan_in), the other layers
W ~ U(-sqrt(6 / fan_in) / omega_0, +sqrt(6 / fan_in) / omega_0), biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
The last layer is linear. Inputs are pixel coordinates in [-1, 1], outputs pixel intensities in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from zoo_ingest.generators.classifier import Checkpoint, NetworkRun
from zoo_ingest.generators.digits import NUM_IMAGES, all_images
from zoo_ingest.generators.sampling import network_rng, split_of_rank, torch_generator

ZOO = "digits-siren"
OMEGA_0 = 30.0
HIDDEN = 32
STEPS = 100
LEARNING_RATE = 1e-3
PSNR_TARGET = 40.0  # dB over the 64 pixels, peak value 1 (RMS error 1% of the range)


class Siren(nn.Module):
    """Coordinates `(P, 2)` in [-1, 1] -> intensities `(P, 1)`. Keys `layers.{0,1,2}.{weight,bias}`."""

    def __init__(self, hidden: int = HIDDEN, omega_0: float = OMEGA_0):
        super().__init__()
        self.omega_0 = omega_0
        self.layers = nn.ModuleList([nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)])

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        x = coords
        for layer in self.layers[:-1]:
            x = torch.sin(self.omega_0 * layer(x))
        return self.layers[-1](x)


def build_siren(hidden: int = HIDDEN, omega_0: float = OMEGA_0) -> Siren:
    """An untrained SIREN; load a generated checkpoint with `load_state_dict`."""
    return Siren(hidden, omega_0)


def init_siren(model: Siren, generator: torch.Generator) -> None:
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            fan_in = layer.in_features
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / model.omega_0
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in), generator=generator)


def pixel_coordinates(size: int = 8) -> torch.Tensor:
    """`(size * size, 2)`: (row, column) coordinates in [-1, 1] of the pixels in row-major order."""
    axis = torch.linspace(-1.0, 1.0, size)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for intensities with peak value 1."""
    mse = torch.mean((prediction - target) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def image_order(seed: int) -> np.ndarray:
    """The zoo's order of the 1,797 digits images (network k fits image `image_order(seed)[k // copies]`)."""
    return np.random.default_rng([0x5152, int(seed)]).permutation(NUM_IMAGES)


def fit(image: torch.Tensor, generator: torch.Generator, steps: int = STEPS) -> tuple[Siren, float]:
    """Fit a fresh SIREN to `image` `(8, 8)` with full-batch Adam; returns (model, PSNR in dB)."""
    model = Siren()
    init_siren(model, generator)
    coords, target = pixel_coordinates(image.shape[0]), image.reshape(-1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, foreach=False)
    for _ in range(steps):
        loss = torch.mean((model(coords) - target) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model, psnr(model(coords), target)


def train_network(k: int, seed: int, options: dict) -> NetworkRun:
    """Network k: copy `k % copies` of the fit to image `image_order(seed)[k // copies]`.

    The split belongs to the image (its position in the zoo's image order), so all copies of an image
    share it.
    """
    copies = int(options.get("copies", 1))
    rank = k // copies
    if rank >= NUM_IMAGES:
        raise ValueError(f"network {k}: digits has {NUM_IMAGES} images, so at most {NUM_IMAGES * copies} networks")
    image_index = int(image_order(seed)[rank])
    images, labels = all_images()
    hparams = dict(image_index=image_index, copy=k % copies, steps=STEPS, learning_rate=LEARNING_RATE, omega_0=OMEGA_0)

    def checkpoints() -> Iterator[Checkpoint]:
        generator = torch_generator(network_rng(ZOO, seed, k))
        model, value = fit(images[image_index], generator)
        state = {key: v.detach().clone().contiguous() for key, v in model.state_dict().items()}
        yield Checkpoint(STEPS, state, dict(psnr=value))

    return NetworkRun(hparams, "sine", split_of_rank(rank), checkpoints(), label=int(labels[image_index]))
