"""Per-tensor weight statistics: the features of STATNet and of the quasi layer's alpha network."""

from __future__ import annotations

import torch

from metanets.weight_space import WeightSpace

STAT_NAMES = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
NUM_STATS = len(STAT_NAMES)
_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def tensor_stats(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, 7): mean, variance and the 0, .25, .5, .75, 1 quantiles of each row.

    Quantiles interpolate linearly between order statistics (as `torch.quantile` does), from one sort.
    """
    flat = t.reshape(t.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # statistics of low-precision weights are computed in float32
    n = flat.shape[1]
    ordered = flat.sort(dim=1).values
    # positions in float64: in a low-precision dtype n - 1 may round past the last index
    pos = torch.tensor(_QUANTILES, dtype=torch.float64) * (n - 1)
    lo = pos.floor().long().to(flat.device)
    hi = pos.ceil().long().to(flat.device)
    frac = (pos - pos.floor()).to(dtype=flat.dtype, device=flat.device)
    q = ordered[:, lo] + (ordered[:, hi] - ordered[:, lo]) * frac
    var = flat.var(dim=1, unbiased=False)
    return torch.cat([flat.mean(dim=1, keepdim=True), var[:, None], q], dim=1)


def weight_stats(ws: WeightSpace) -> torch.Tensor:
    """Statistics of every weight and bias tensor of channel 0: (B, 2 L * 7), ordered W_1, b_1, W_2, ..."""
    parts = []
    for w, b in zip(ws.weights, ws.biases):
        parts += [tensor_stats(w[:, 0]), tensor_stats(b[:, 0])]
    return torch.cat(parts, dim=1)


def num_stat_features(num_layers: int) -> int:
    return 2 * num_layers * NUM_STATS
