"""Fit many SIRENs at once, and prepare the images they fit.

`fit_block` holds B SIRENs as stacked tensors (`layers.i.weight` `(B, n_i, n_{i-1})`, `layers.i.bias`
`(B, n_i)`), runs them with batched matrix products and updates them with one Adam over the stacked
parameters. The loss is the *sum* over networks of each network's mean squared error, so network b's
gradient is exactly the gradient of its own loss, and Adam is element-wise: a network's trajectory does
not depend on the other networks of its block (tests check it bit for bit against a block of one).

Images: scikit-learn's 8x8 digits, optionally upsampled (bilinear) to `size` x `size` and moved by a
label-preserving affine map (small shift, rotation, scaling) before fitting.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MAX_SHIFT = 0.1  # of the half-width of the image, i.e. +-1.4 pixels at 28x28
MAX_ROTATION = 15.0  # degrees
SCALE_RANGE = (0.9, 1.1)
PARAM_KEYS = tuple(f"layers.{i}.{kind}" for i in range(3) for kind in ("weight", "bias"))


def init_state(generator: torch.Generator, hidden: int, omega_0: float) -> dict[str, torch.Tensor]:
    """One SIREN initialisation (Sitzmann et al.), drawn layer by layer, weight then bias."""
    sizes = [(hidden, 2), (hidden, hidden), (1, hidden)]
    state = {}
    for i, (n_out, n_in) in enumerate(sizes):
        bound = 1.0 / n_in if i == 0 else math.sqrt(6.0 / n_in) / omega_0
        state[f"layers.{i}.weight"] = torch.empty(n_out, n_in).uniform_(-bound, bound, generator=generator)
        b = 1.0 / math.sqrt(n_in)
        state[f"layers.{i}.bias"] = torch.empty(n_out).uniform_(-b, b, generator=generator)
    return state


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([s[key] for s in states]) for key in PARAM_KEYS}


def forward_block(params: dict[str, torch.Tensor], coords: torch.Tensor, omega_0: float) -> torch.Tensor:
    """Stacked SIRENs on shared coordinates `(P, 2)` -> intensities `(B, P)`."""
    x = coords.expand(params["layers.0.weight"].shape[0], *coords.shape)  # (B, P, 2)
    for i in range(3):
        w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        if i < 2:
            x = torch.sin(omega_0 * torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)))  # (B, P, n_i)
    # The one-output layer as a product and a sum: bmm takes a matrix-vector path for it whose
    # rounding depends on the batch size, and a network must not depend on its block.
    return (x * w[:, 0, None, :]).sum(-1) + b  # (B, P)


def fit_block(
    init: dict[str, torch.Tensor],
    targets: torch.Tensor,
    coords: torch.Tensor,
    steps: int,
    lr: float,
    omega_0: float,
    stop_psnr: float | None = None,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Fit stacked SIRENs `init` to `targets` `(B, P)` with full-batch Adam for `steps` steps.

    With `stop_psnr`, network b's result is its weights at the first step where its PSNR reaches
    `stop_psnr` (later steps do not change it). Returns (stacked weights, steps taken per network `(B,)`).
    """
    params = {k: v.detach().clone().requires_grad_(True) for k, v in init.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, foreach=False)
    result = {k: v.detach().clone() for k, v in params.items()}
    taken = np.full(targets.shape[0], steps, dtype=np.int64)
    done = torch.zeros(targets.shape[0], dtype=torch.bool)
    for step in range(steps + 1):
        mse = torch.mean((forward_block(params, coords, omega_0) - targets) ** 2, dim=1)  # (B,)
        if stop_psnr is not None:
            reached = (mse.detach() <= 10.0 ** (-stop_psnr / 10.0)) & ~done
            if reached.any():
                for k, v in params.items():
                    result[k][reached] = v.detach()[reached]
                taken[reached.numpy()] = step
                done |= reached
            if bool(done.all()):
                break
        if step == steps:
            break
        optimizer.zero_grad(set_to_none=True)
        mse.sum().backward()
        optimizer.step()
    with torch.no_grad():
        for k, v in params.items():
            result[k][~done] = v.detach()[~done]
    return result, taken


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images `(B, 8, 8)` -> `(B, size, size)`, bilinear with aligned corners (the identity at size 8)."""
    if size == images.shape[-1]:
        return images.clone()
    return F.interpolate(images.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=True).squeeze(1)


def random_affine(rng: np.random.Generator) -> np.ndarray:
    """A label-preserving affine map `(2, 3)` on [-1, 1]^2: scaling, rotation, then a shift."""
    angle = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    scale = rng.uniform(*SCALE_RANGE)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def apply_affine(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Resample images `(B, H, W)` at `theta @ (x, y, 1)` (`thetas` `(B, 2, 3)`), zeros outside."""
    grid = F.affine_grid(thetas.to(images.dtype), [images.shape[0], 1, *images.shape[1:]], align_corners=True)
    return F.grid_sample(images.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True).squeeze(1).clamp(0.0, 1.0)
