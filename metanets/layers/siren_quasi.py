"""The authors' SIREN quasi layer, as published: approximate by construction (docs/metanets.md).

The seed paper's code classifies SIRENs with sign-equivariant hidden-neuron layers (in metazoo: the
Monomial-NFN layers on a perm_sign spec) and, in the last of them, a quasi step. Per hidden layer i it reads
the feature x entering that layer (C_in channels):
1. a learned channel projection P_i: C_in -> C_out (linear with bias over channels), one map for both P_i W_i
   and P_i b_i;
2. per projected channel the 7 statistics (mean, variance, quantiles 0/.25/.5/.75/1) of P_i W_i and of P_i b_i:
   14 numbers, LayerNorm-ed (no affine) over those 14;
3. per hidden layer its own gated MLP of width 32 on that layer's 14 numbers (Linear -> LayerNorm -> GELU ->
   h * sigmoid(Linear(h)) -> Linear to n_i outputs), giving gamma_i (B, C_out, n_i);
4. alpha_i = 1 + s_i sin(gamma_i) with s_i learnable, initialised at 0.1 and not clamped.
The layer's output is then acted on by alpha as by a positive diagonal rescaling: rows of W_i and b_i times
alpha_i, columns of W_{i+1} divided by alpha_i (`symmetry.scale_hidden`), before the invariant pool.

Why it is only approximately invariant, even to the group it is trained on:
- alpha is a positive rescaling of hidden neurons. That is a symmetry of ReLU networks (ReLU(a z) = a ReLU(z)
  for a > 0), not of sine networks: sin is not positively homogeneous, so this alpha does not lie in the sine
  network's group (permutations x signs x bias shifts by multiples of pi / omega_0), and an invariant pool that
  cancels signs (odd activation, then abs) does not cancel it.
- gamma_i comes from an MLP over pooled statistics with one output per neuron *position*: when the input's
  hidden neurons are permuted, the feature's are too, alpha's are not. And the statistics change under sign
  flips (the feature is sign-equivariant, its mean and quantiles are not sign-invariant).
- s_i is not clamped: once |s_i| >= 1 an alpha entry can reach 0 and the division by it is unbounded.
With every s_i = 0 alpha is the identity and the model is exactly Monomial-NFN; the invariance audit (`eval`)
measures the error otherwise. The statistics here use the population variance (metazoo's `tensor_stats`); the
published code uses the unbiased one, a constant factor n / (n - 1) per row before the LayerNorm.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from metanets.layers.common import ChannelLinear
from metanets.layers.quasi_feature import GatedMLP
from metanets.layers.stats import NUM_STATS, tensor_stats
from metanets.spec import PERM_SIGN, NetworkSpec, SpecError
from metanets.symmetry import scale_hidden
from metanets.weight_space import WeightSpace


def channel_stats(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """W_i (B, K, ...) and b_i (B, K, n_i) -> (B, K, 14): 7 statistics of each, LayerNorm-ed over the 14."""
    B, K = b.shape[:2]
    entries = math.prod(w.shape[2:])  # explicit, never -1: torch.export traces with a symbolic batch
    w_stats = tensor_stats(w.reshape(B * K, entries)).reshape(B, K, NUM_STATS)
    b_stats = tensor_stats(b.reshape(B * K, b.shape[2])).reshape(B, K, NUM_STATS)
    feats = torch.cat([w_stats, b_stats], dim=-1)
    return F.layer_norm(feats, feats.shape[-1:])


class SirenAlpha(nn.Module):
    """feature x (B, C_in, ...) -> per hidden layer alpha_i = 1 + s_i sin(gamma_i) (B, C_out, n_i)."""

    def __init__(self, spec: NetworkSpec, c_in: int, c_out: int, s: float = 0.1, hidden: int = 32):
        super().__init__()
        self.sizes = spec.hidden_sizes
        self.proj = nn.ModuleList(ChannelLinear(c_in, c_out) for _ in self.sizes)
        self.mlps = nn.ModuleList(GatedMLP(2 * NUM_STATS, hidden, n) for n in self.sizes)
        self.s = nn.Parameter(torch.full((len(self.sizes),), float(s)))  # unclamped, as published

    def forward(self, x: WeightSpace) -> tuple[torch.Tensor, ...]:
        out = []
        for i, (p, mlp) in enumerate(zip(self.proj, self.mlps)):
            gamma = mlp(channel_stats(p(x.weights[i]), p(x.biases[i])))
            out.append(1.0 + self.s[i].to(gamma.dtype) * torch.sin(gamma))
        return tuple(out)


class SirenQuasiLayer(nn.Module):
    """The last equivariant layer with the published SIREN quasi step: x -> alpha(x) . last(x)."""

    def __init__(self, last: nn.Module, alpha: SirenAlpha):
        super().__init__()
        self.last, self.alpha = last, alpha

    def forward(self, feature: WeightSpace, theta: WeightSpace) -> WeightSpace:
        return scale_hidden(self.last(feature), self.alpha(feature))


def require_sign_group(spec: NetworkSpec) -> None:
    if spec.group != PERM_SIGN:
        raise SpecError(f"the SIREN quasi layer is for sign-symmetric (sine, tanh) networks, whose group is "
                        f"{PERM_SIGN}; this spec's group is {spec.group}")
