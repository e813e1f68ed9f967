"""The quasi-equivariant layer F(theta) = alpha(theta) . beta(theta) for monomial groups.

alpha reads the 7 statistics of every weight and bias tensor of the input network, passes them
through a small MLP and projects the result into the continuous part of the group, positive diagonal
scalings, as 1 + eps * sin(.): one scale per hidden neuron (`alpha_mode="shared"`) or one per hidden
neuron and channel (`alpha_mode="per_channel"`, the published configuration). Permutations and signs
are discrete, so a continuous alpha never outputs them.
"""

from __future__ import annotations

import torch
from torch import nn

from metanets.layers.stats import num_stat_features, weight_stats
from metanets.spec import PERM_SCALE, NetworkSpec, SpecError
from metanets.symmetry import scale_hidden
from metanets.weight_space import WeightSpace

ALPHA_MODES = ("per_channel", "shared")


def require_scaling_group(spec: NetworkSpec) -> None:
    if spec.group != PERM_SCALE:
        raise SpecError(
            f"the quasi layer scales hidden neurons by positive factors, which is in the group only for "
            f"perm_scale networks (ReLU); this network's activation {spec.activation!r} gives "
            f"{spec.group}, whose continuous part is trivial"
        )


class AlphaNetwork(nn.Module):
    """theta -> per-hidden-layer scales 1 + eps*sin(gamma(stats(theta))), each (B, C or 1, n_i)."""

    def __init__(self, spec: NetworkSpec, channels: int, eps: float, alpha_mode: str, hidden: int = 16):
        super().__init__()
        require_scaling_group(spec)
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1) so that 1 + eps*sin(.) > 0, got {eps}")
        self.spec, self.eps, self.alpha_mode = spec, float(eps), alpha_mode
        self.out_channels = channels if alpha_mode == "per_channel" else 1
        self.sizes = spec.hidden_sizes
        self.net = nn.Sequential(
            nn.Linear(num_stat_features(spec.num_layers), hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.out_channels * sum(self.sizes)),
        )

    def forward(self, ws: WeightSpace) -> tuple[torch.Tensor, ...]:
        stats = weight_stats(ws)
        # signed log keeps the MLP's input bounded whatever the weights' scale
        features = torch.sign(stats) * torch.log1p(stats.abs())
        gamma = self.net(features.to(self.net[0].weight.dtype))
        scales = 1.0 + self.eps * torch.sin(gamma)
        B, C = ws.batch_size, self.out_channels
        return tuple(s.reshape(B, C, n) for s, n in zip(scales.split([C * n for n in self.sizes], 1), self.sizes))


class QuasiScale(nn.Module):
    """Multiply a feature (B, C, ...) by alpha(theta): a (per-channel) element of the scaling group."""

    def __init__(self, spec: NetworkSpec, channels: int, eps: float, alpha_mode: str, hidden: int = 16):
        super().__init__()
        self.alpha = AlphaNetwork(spec, channels, eps, alpha_mode, hidden)

    def unscaled_and_scales(self, feature: WeightSpace, theta: WeightSpace):
        """(feature, alpha(theta)): `forward` is `scale_hidden` of the two (`Metanetwork.pooled` folds it)."""
        return feature, self.alpha(theta)

    def forward(self, feature: WeightSpace, theta: WeightSpace) -> WeightSpace:
        return scale_hidden(*self.unscaled_and_scales(feature, theta))
