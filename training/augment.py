"""On-the-fly data augmentation by random group actions (the same `metanets.symmetry` functions the
tests and the invariance audit use)."""

from __future__ import annotations

import torch

from metanets import WeightSpace, symmetry
from metanets.spec import PERM, PERM_SCALE, PERM_SIGN
from training.config import AugmentConfig


def augment(ws: WeightSpace, cfg: AugmentConfig, generator: torch.Generator) -> WeightSpace:
    """Replace every network of the batch by a random member of its orbit.

    Permutations when `cfg.permute`; positive scales U[1, 10^k] (k = `cfg.scale_log10_max`) for
    perm_scale zoos; random signs for perm_sign zoos when `cfg.signs`.
    """
    if not cfg.enabled:
        return ws
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
