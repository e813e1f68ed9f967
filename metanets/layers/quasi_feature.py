"""The published quasi layer (`alpha_source="feature"`): alpha computed from the feature entering the last
equivariant layer, applied to that layer's output, then ReLU, then the invariant pool.

Per hidden layer i (i = 1..L-1, the layers whose outputs the group scales), alpha reads the feature x that
enters the last equivariant layer (C_in channels):
1. a learned channel projection P_i: C_in -> K (a linear map with bias over channels; K = C_out with
   `alpha_mode="per_channel"`, K = 1 with `"shared"`) applied to x's W_i and b_i;
2. per projected channel, the 7 statistics (mean, variance, quantiles 0/.25/.5/.75/1) of P_i W_i and of
   P_i b_i, plus two global statistics shared by the channels: the mean of P_i W_i over channels and entries,
   and the median absolute deviation over entries of its channel mean: 16 numbers;
3. LayerNorm (no affine) over those 16; the 16 (L-1) numbers of all hidden layers are concatenated;
4. per hidden layer a gated MLP of width 32 (Linear -> LayerNorm -> GELU -> h * sigmoid(Linear(h)) ->
   Linear to n_i outputs), giving gamma_i of shape (B, K, n_i), and alpha_i = 1 + eps_i sin(gamma_i).

eps_i is learnable and stays in (-eps_max, eps_max) with eps_max < 1: eps_i = eps_max * tanh(p_i / eps_max),
p_i initialised so that eps_i = `eps` (0.01 by default). So every alpha_i >= 1 - eps_max > 0 is in the group
(the published eps is unclamped). A negative eps_i gives no new elements (1 - e sin(g) = 1 + e sin(g + pi)).
Near 0, d eps_i / d p_i = 1, so the optimiser moves eps_i as fast as the published unclamped eps; a
sigmoid (eps_max * sigmoid(p_i)) would move it about 1/eps times more slowly from eps = 0.01 (measured: a
sigmoid-bounded eps stayed at 0.016 after 10 epochs). `eps=0` makes alpha the identity (held fixed: a control).

Invariance. Every statistic is a symmetric function of a tensor's entries, so alpha does not depend on the
order of the hidden neurons; it does depend on their scale (the feature is equivariant, not invariant), so
alpha(g theta) != alpha(theta) in general. With a shared alpha that does not matter: alpha and ReLU commute
with the invariant pool's per-entry channel normalisation, so the model's output is exactly the backbone's
(DESIGN.md fact 1). With a per-channel alpha the output changes and invariance is approximate (fact 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from metanets.layers.common import ChannelLinear, relu
from metanets.layers.quasi import ALPHA_MODES, require_scaling_group
from metanets.layers.stats import NUM_STATS, tensor_stats
from metanets.spec import NetworkSpec
from metanets.symmetry import scale_hidden
from metanets.weight_space import WeightSpace

NUM_FEATURES = 2 * NUM_STATS + 2  # statistics of W_i and b_i, plus two global ones


def _median(t: torch.Tensor) -> torch.Tensor:
    """(N, n) -> (N,): the median of each row, interpolated (the 0.5 quantile of `tensor_stats`)."""
    return tensor_stats(t)[:, 4]


def layer_features(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Projected W_i (B, K, ...) and b_i (B, K, n_i) -> (B, K, 16), LayerNorm-ed over the last axis."""
    B, K = b.shape[:2]
    # explicit entry counts (never -1): while torch.export traces with a symbolic batch B, a -1 here would
    # make the row length symbolic too, and the quantile positions must be plain ints
    entries = math.prod(w.shape[2:])
    w_flat = w.reshape(B, K, entries)
    w_stats = tensor_stats(w_flat.reshape(B * K, entries)).reshape(B, K, NUM_STATS)
    b_stats = tensor_stats(b.reshape(B * K, b.shape[2])).reshape(B, K, NUM_STATS)
    channel_mean = w_flat.mean(dim=1)  # (B, entries)
    g_mean = channel_mean.mean(dim=1)
    g_mad = _median((channel_mean - _median(channel_mean)[:, None]).abs())
    glob = torch.stack([g_mean, g_mad], dim=1).to(w_stats.dtype)[:, None, :].expand(B, K, 2)
    feats = torch.cat([w_stats, b_stats, glob], dim=-1)
    return F.layer_norm(feats, feats.shape[-1:])


class GatedMLP(nn.Module):
    """x -> Linear -> LayerNorm -> GELU -> h * sigmoid(Linear(h)) -> Linear."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.fc1, self.norm = nn.Linear(d_in, hidden), nn.LayerNorm(hidden)
        self.gate, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, d_out)
        for m in (self.fc1, self.gate, self.out):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm(self.fc1(x)))
        return self.out(h * torch.sigmoid(self.gate(h)))


class FeatureAlpha(nn.Module):
    """feature x (B, C_in, ...) -> per-hidden-layer scales alpha_i (B, K, n_i), K = C_out or 1."""

    def __init__(self, spec: NetworkSpec, c_in: int, c_out: int, eps: float = 0.01, alpha_mode: str = "per_channel",
                 hidden: int = 32, eps_max: float = 0.99):
        super().__init__()
        require_scaling_group(spec)
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
        if not 0.0 < eps_max < 1.0:
            raise ValueError(f"eps_max must be in (0, 1) so that 1 + eps*sin(.) > 0, got {eps_max}")
        if not 0.0 <= eps < eps_max:
            raise ValueError(f"eps (the initial value of the learnable eps) must be in [0, eps_max={eps_max}), "
                             f"got {eps}")
        self.spec, self.alpha_mode, self.eps_max = spec, alpha_mode, float(eps_max)
        self.out_channels = c_out if alpha_mode == "per_channel" else 1
        self.sizes = spec.hidden_sizes
        n_hidden = len(self.sizes)
        self.proj = nn.ModuleList(ChannelLinear(c_in, self.out_channels) for _ in self.sizes)
        self.mlps = nn.ModuleList(GatedMLP(NUM_FEATURES * n_hidden, hidden, n) for n in self.sizes)
        init = torch.full((n_hidden,), eps_max * math.atanh(eps / eps_max), dtype=torch.float32)
        if eps > 0:
            self.eps_param = nn.Parameter(init)
        else:  # alpha is the identity: a control, kept fixed (a buffer, so no optimiser ever moves it)
            self.register_buffer("eps_param", init)

    @property
    def eps(self) -> torch.Tensor:
        """(L-1,) the current eps_i, each in (-eps_max, eps_max)."""
        return self.eps_max * torch.tanh(self.eps_param / self.eps_max)

    def forward(self, x: WeightSpace) -> tuple[torch.Tensor, ...]:
        feats = torch.cat([layer_features(p(x.weights[i]), p(x.biases[i])) for i, p in enumerate(self.proj)], -1)
        eps = self.eps.to(feats.dtype)
        return tuple(1.0 + eps[i] * torch.sin(mlp(feats)) for i, mlp in enumerate(self.mlps))


class FeatureQuasiLayer(nn.Module):
    """The last equivariant layer with the published quasi step: x -> ReLU(alpha(x) . last(x))."""

    def __init__(self, last: nn.Module, alpha: FeatureAlpha):
        super().__init__()
        self.last, self.alpha = last, alpha

    def unscaled_and_scales(self, feature: WeightSpace, theta: WeightSpace):
        """(ReLU(last(x)), alpha(x)): a positive scale commutes with ReLU, so `forward` is `scale_hidden` of
        the two (`Metanetwork.pooled` folds it into the pool)."""
        return self.last(feature).map(relu), self.alpha(feature)

    def forward(self, feature: WeightSpace, theta: WeightSpace) -> WeightSpace:
        return scale_hidden(*self.unscaled_and_scales(feature, theta))
