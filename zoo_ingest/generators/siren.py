"""digits-siren: SIRENs 2 -> 32 -> 32 -> 1, each fitted to one digits image, in one of two recipes.

Recipes (option `init`):
- `shared` (default): one initialisation drawn per (zoo, seed) and used by every network, then 100
  Adam steps on the 8x8 image. The label then sits in the weights, and only a model invariant to the
  sine group keeps it once each network is moved within its orbit: the setting where symmetry decides.
- `independent`: the literature's setting. A fresh initialisation per network, images upsampled to
  `size` x `size` (default 28), and copy c >= 1 of an image (`copies`) fitted to a randomly shifted,
  rotated and scaled version of it (`augment`); fitting stops at the PSNR target or after `steps`.
Network k fits image `image_order(seed)[k // copies]`, and its split is that image's, so copies and
augmentations of one image never straddle splits. Every network records its PSNR; one below
`psnr_floor` keeps its digit in `hparams` but gets no label, so classification skips it.

omega_0 = 30 lives in the forward function, never in the stored weights: a sine layer computes
`sin(omega_0 * (W x + b))`, as in the SIREN paper (Sitzmann et al., 2020). The stored weights use the
paper's initialisation: first layer W ~ U(-1/2, 1/2) (1 / fan_in), the other layers
W ~ U(-sqrt(6 / fan_in) / omega_0, +sqrt(6 / fan_in) / omega_0), biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
The last layer is linear. Inputs are pixel coordinates in [-1, 1], outputs pixel intensities in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo_ingest.generators.classifier import Checkpoint, NetworkRun
from zoo_ingest.generators.digits import NUM_IMAGES, all_images
from zoo_ingest.generators.inr_fit import apply_affine, fit_block, init_state, random_affine, stack_states, upsample
from zoo_ingest.generators.sampling import network_rng, split_of_rank, torch_generator
from zoo_ingest.generators.store import GenerateError

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


RECIPES = ("shared", "independent")
MIN_SIZE = 8
# Options the zoo takes (None: the recipe's default, RECIPE_DEFAULTS); the manifest records them as given.
OPTIONS: dict[str, Any] = {"copies": 1, "init": "shared", "size": None, "steps": None, "augment": None,
                           "psnr_floor": None}
RECIPE_DEFAULTS = {
    "shared": dict(size=8, steps=STEPS, augment=False, stop_psnr=None),
    "independent": dict(size=28, steps=500, augment=True, stop_psnr=PSNR_TARGET),
}


def resolve_options(options: dict) -> dict:
    """The recipe `options` describe, with every default filled in; errors name the option."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise GenerateError(f"{ZOO}: unknown option(s) {unknown}; known: {sorted(OPTIONS)}")
    given = {**OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    init = given["init"]
    if init not in RECIPES:
        raise GenerateError(f"--init must be one of {', '.join(RECIPES)}, got {init!r}")
    recipe = {**RECIPE_DEFAULTS[init], **{k: given[k] for k in ("size", "steps", "augment") if given[k] is not None}}
    copies = given["copies"]
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise GenerateError(f"--copies must be a positive integer, got {copies!r}")
    size = recipe["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise GenerateError(f"--image-size must be an integer >= {MIN_SIZE} (the digits are 8x8; no "
                            f"downsampling), got {size!r}")
    steps = recipe["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise GenerateError(f"--steps must be an integer >= 0, got {steps!r}")
    floor = given["psnr_floor"]
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))):
        raise GenerateError(f"--psnr-floor must be a number of dB, got {floor!r}")
    return dict(init=init, copies=copies, size=size, steps=steps, augment=bool(recipe["augment"]),
                stop_psnr=recipe["stop_psnr"], psnr_floor=None if floor is None else float(floor))


def max_networks(options: dict) -> int:
    """How many networks the options allow (images x copies); checks the options first."""
    return NUM_IMAGES * resolve_options(options)["copies"]


def image_order(seed: int) -> np.ndarray:
    """The zoo's order of the 1,797 digits images (network k fits image `image_order(seed)[k // copies]`)."""
    return np.random.default_rng([0x5152, int(seed)]).permutation(NUM_IMAGES)


def shared_init(seed: int, hidden: int = HIDDEN, omega_0: float = OMEGA_0) -> dict[str, torch.Tensor]:
    """The one initialisation every network of the shared recipe starts from: a function of the seed only."""
    rng = np.random.default_rng([0x5152, int(seed), 0x5EED])
    return init_state(torch_generator(rng), hidden, omega_0)


def fit(image: torch.Tensor, generator: torch.Generator, steps: int = STEPS) -> tuple[Siren, float]:
    """Reference fit of one fresh SIREN to `image` `(8, 8)` with full-batch Adam; returns (model, PSNR in dB)."""
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


def target_images(ids: list[int], seed: int, recipe: dict) -> tuple[torch.Tensor, list[int], list[int]]:
    """The images networks `ids` fit `(B, size, size)`, their image indices and ranks in the image order."""
    copies = recipe["copies"]
    for k in ids:
        if k < 0 or k // copies >= NUM_IMAGES:
            raise GenerateError(f"network {k}: digits has {NUM_IMAGES} images, so with --copies {copies} at most "
                                f"{NUM_IMAGES * copies} networks")
    order = image_order(seed)
    ranks = [k // copies for k in ids]
    indices = [int(order[r]) for r in ranks]
    images, _ = all_images()
    targets = upsample(images[indices], recipe["size"])
    moved = [b for b, k in enumerate(ids) if recipe["augment"] and k % copies > 0]
    if moved:
        # a generator of its own per network, apart from the one that draws its initialisation
        thetas = [random_affine(np.random.default_rng([0x5152, seed, ids[b], 0xAFF])) for b in moved]
        targets[moved] = apply_affine(targets[moved], torch.tensor(np.stack(thetas)))
    return targets, indices, ranks


def train_block(ids: list[int], seed: int, options: dict) -> list[NetworkRun]:
    """Networks `ids`, fitted together (one NetworkRun per id, same order); each equals `train_network`."""
    recipe = resolve_options(options)
    targets, indices, ranks = target_images(ids, seed, recipe)
    if recipe["init"] == "shared":
        one = shared_init(seed)
        init = {k: v.expand(len(ids), *v.shape).clone() for k, v in one.items()}
    else:
        init = stack_states([init_state(torch_generator(network_rng(ZOO, seed, k)), HIDDEN, OMEGA_0) for k in ids])
    coords = pixel_coordinates(recipe["size"])
    weights, taken = fit_block(init, targets.reshape(len(ids), -1), coords, recipe["steps"], LEARNING_RATE, OMEGA_0,
                               recipe["stop_psnr"])
    _, labels = all_images()
    runs, model = [], Siren()
    for b, k in enumerate(ids):
        state = {key: weights[key][b].clone().contiguous() for key in weights}
        model.load_state_dict(state)
        with torch.no_grad():  # the metric as a user recomputes it from the stored file
            value = psnr(model(coords), targets[b].reshape(-1, 1))
        digit = int(labels[indices[b]])
        floor = recipe["psnr_floor"]
        label = digit if floor is None or value >= floor else None
        hparams = dict(image_index=indices[b], copy=k % recipe["copies"], digit=digit, init=recipe["init"],
                       size=recipe["size"], steps=recipe["steps"], steps_taken=int(taken[b]),
                       learning_rate=LEARNING_RATE, omega_0=OMEGA_0)
        checkpoint = Checkpoint(recipe["steps"], state, dict(psnr=value))
        runs.append(NetworkRun(hparams, "sine", split_of_rank(ranks[b]), iter([checkpoint]), label=label))
    return runs


def train_network(k: int, seed: int, options: dict) -> NetworkRun:
    """Network k: copy `k % copies` of the fit to image `image_order(seed)[k // copies]` (`train_block([k])`)."""
    return train_block([k], seed, options)[0]
