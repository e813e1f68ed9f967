"""Per-tensor weight statistics: the features of STATNet and of the quasi layers' alpha networks."""

from __future__ import annotations

import math

import numpy as np
import torch

from metanets.weight_space import WeightSpace

STAT_NAMES = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
NUM_STATS = len(STAT_NAMES)
_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
ORDER_METHODS = ("auto", "numpy", "sort")


def exporting(t: torch.Tensor) -> bool:
    """True while torch.compile or torch.export (MLflow's pt2 format) traces `t`: numpy cannot run there."""
    return torch.compiler.is_compiling() or type(t) is not torch.Tensor


def _order_statistics(flat: torch.Tensor, ks: list[int], method: str) -> torch.Tensor:
    """(N, n) -> (N, len(ks)): the ks-th smallest entry of each row, differentiable."""
    if method == "auto":
        method = "numpy" if flat.device.type == "cpu" and not exporting(flat) else "sort"
    if method == "numpy":
        rows = flat.detach().cpu().numpy()
        if not flat.requires_grad:  # numpy's vectorised sort: ~6x faster than torch's CPU sort of these rows
            return torch.from_numpy(np.ascontiguousarray(np.sort(rows, axis=1)[:, ks])).to(flat.device)
        # a gradient needs the positions: argpartition (introselect, O(n) per row), then a gather
        idx = np.argpartition(rows, ks, axis=1)[:, ks]
        return torch.gather(flat, 1, torch.from_numpy(np.ascontiguousarray(idx)).to(flat.device))
    if method == "sort":
        return flat.sort(dim=1).values[:, ks]
    raise ValueError(f"method must be one of {ORDER_METHODS}, got {method!r}")


def tensor_stats(t: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """(B, ...) -> (B, 7): mean, variance (population) and the 0, .25, .5, .75, 1 quantiles of each row.

    Quantiles interpolate linearly between order statistics, as `torch.quantile` does. The order statistics
    are located by `method`: "numpy" (CPU only: numpy's sort when `t` needs no gradient, else argpartition
    and a gather), "sort" (torch's sort: any device, and traceable by torch.compile and torch.export) or
    "auto" (numpy on CPU, except while tracing). All give the same values and, without ties, the same
    gradients.
    """
    flat = t.reshape(t.shape[0], math.prod(t.shape[1:]))  # explicit size: a symbolic batch under export
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()  # statistics of low-precision weights are computed in float32
    n = flat.shape[1]
    # positions as Python floats (float64, exact for any n here), not tensors: under torch.export a traced
    # tensor's values cannot index
    pos = [q * (n - 1) for q in _QUANTILES]
    lo, hi = [math.floor(p) for p in pos], [math.ceil(p) for p in pos]
    ks = sorted(set(lo) | set(hi))
    picked = _order_statistics(flat, ks, method)
    col = {k: j for j, k in enumerate(ks)}
    q_lo, q_hi = picked[:, [col[k] for k in lo]], picked[:, [col[k] for k in hi]]
    frac = torch.tensor([p - math.floor(p) for p in pos], dtype=flat.dtype, device=flat.device)
    q = q_lo + (q_hi - q_lo) * frac
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
