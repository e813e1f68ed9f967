"""On-the-fly data augmentation: random group actions (the same `metanets.symmetry` / `metanets.sine` functions
the tests and the invariance audit use), and, for INR zoos, DWSNets' label-preserving weight augmentations.

Order per batch: INR input transforms (translation, rotation, scaling, through the first layer), weight
dropout, then a random group element (permutation, scales or signs), then pi phase shifts (sine zoos).
"""

from __future__ import annotations

import math

import torch

from metanets import WeightSpace, sine, symmetry
from metanets.spec import PERM, PERM_SCALE, PERM_SIGN
from training.config import AugmentConfig


def augment(ws: WeightSpace, cfg: AugmentConfig, generator: torch.Generator) -> WeightSpace:
    """Replace every network of the batch by an augmented network.

    Permutations when `cfg.permute`; positive scales U[1, 10^k] (k = `cfg.scale_log10_max`) for
    perm_scale zoos; random signs for perm_sign zoos when `cfg.signs`; pi phase shifts for sine zoos when
    `cfg.phase`; the INR options (`inr_translate`, `inr_rotate_degrees`, `inr_scale`, `weight_dropout`)
    before those.
    """
    if not cfg.enabled:
        return ws
    if getattr(ws.spec, "type", None) != "transformer":
        ws = inr_augment(ws, cfg, generator)
    ws = _group_augment(ws, cfg, generator)
    if cfg.phase and getattr(ws.spec, "activation", None) == "sine":
        g = sine.sample_phase(ws.spec, ws.batch_size, 1, generator)
        ws = sine.act_phase(sine.PhaseShift(tuple(k.to(ws.device) for k in g.shifts)), ws, cfg.omega_0)
    return ws


def _group_augment(ws: WeightSpace, cfg: AugmentConfig, generator: torch.Generator) -> WeightSpace:
    # transformer groups are "transformer_<FFN group>": GL(d_h) per head always, the FFN part as for MLPs
    prefix = "transformer_" if ws.spec.group.startswith("transformer_") else ""
    group = ws.spec.group.removeprefix(prefix)
    scale = (1.0, 10.0 ** cfg.scale_log10_max) if group == PERM_SCALE and cfg.scale_log10_max > 0 else None
    if (group == PERM_SIGN and not cfg.signs) or (group == PERM_SCALE and scale is None):
        group = PERM
    if not cfg.permute and group == PERM and not prefix:
        return ws
    group = prefix + group
    g = symmetry.sample(
        ws.spec, ws.batch_size, scale=scale, group=group, permute=cfg.permute, generator=generator,
        dtype=ws.dtype,
    )
    return symmetry.act(g.to(device=ws.device), ws)


def _uniform(generator, shape, lo, hi, dtype) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)


def input_transform(ws: WeightSpace, matrix: torch.Tensor | None, shift: torch.Tensor | None) -> WeightSpace:
    """The network computing x -> f(A x + t) from f, for MLPs: W_1 -> W_1 A, b_1 -> b_1 + W_1 t.

    matrix A (B, n_0, n_0) or None (identity), shift t (B, n_0) or None (zero); every channel alike. Exact
    for any first layer `act(W_1 x + b_1)` (a SIREN's omega_0 multiplies the sum, so it is unaffected).
    """
    if ws.spec.layers[0].kernel:
        raise ValueError("INR input augmentations need an MLP (a Linear first layer), not a convolution")
    w, b = ws.weights[0], ws.biases[0]  # (B, C, n_1, n_0), (B, C, n_1)
    weights, biases = list(ws.weights), list(ws.biases)
    if shift is not None:
        biases[0] = b + torch.einsum("bcij,bj->bci", w, shift.to(device=w.device, dtype=w.dtype))
    if matrix is not None:
        weights[0] = torch.einsum("bcij,bjk->bcik", w, matrix.to(device=w.device, dtype=w.dtype))
    return WeightSpace(ws.spec, tuple(weights), tuple(biases))


def inr_augment(ws: WeightSpace, cfg: AugmentConfig, generator: torch.Generator) -> WeightSpace:
    """DWSNets' INR augmentations: f'(x) = f(s R x + t) through the first layer, then weight dropout.

    t ~ U[-inr_translate, inr_translate] per input coordinate, R a rotation by U[-k, k] degrees
    (k = inr_rotate_degrees; 2-d inputs only), s ~ U[1 - inr_scale, 1 + inr_scale]. They are not symmetries:
    the INR draws a shifted, rotated or rescaled image, which keeps its digit for small values. Weight dropout
    zeroes each weight entry (not the biases) with probability `weight_dropout`, without rescaling the rest.
    """
    B, n0 = ws.batch_size, ws.spec.layers[0].n_in
    dtype = ws.dtype
    matrix = None
    if cfg.inr_rotate_degrees > 0:
        if n0 != 2:
            raise ValueError(f"augment.inr_rotate_degrees rotates 2-d input coordinates; these networks have "
                             f"{n0} inputs")
        angle = _uniform(generator, (B,), -cfg.inr_rotate_degrees, cfg.inr_rotate_degrees, torch.float64)
        angle = angle * (math.pi / 180)
        c, s = torch.cos(angle), torch.sin(angle)
        matrix = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2).to(dtype)
    if cfg.inr_scale > 0:
        factor = _uniform(generator, (B,), 1 - cfg.inr_scale, 1 + cfg.inr_scale, dtype)
        eye = torch.eye(n0, dtype=dtype).expand(B, n0, n0)
        matrix = (eye if matrix is None else matrix) * factor[:, None, None]
    shift = None
    if cfg.inr_translate > 0:
        shift = _uniform(generator, (B, n0), -cfg.inr_translate, cfg.inr_translate, dtype)
    if matrix is not None or shift is not None:
        ws = input_transform(ws, matrix, shift)
    if cfg.weight_dropout > 0:
        p = cfg.weight_dropout
        weights = tuple(w * (torch.rand(w.shape, generator=generator) >= p).to(device=w.device, dtype=w.dtype)
                        for w in ws.weights)
        ws = WeightSpace(ws.spec, weights, ws.biases)
    return ws
