"""The quasi-equivariant layer F(theta) = alpha(theta) . beta(theta) for transformer encoders.

alpha reads the 7 statistics (metanets.layers.stats) of every group-carrying tensor of every encoder layer
of the input network theta (W_Q, W_K, W_V, W_O, W_A, b_A, W_B, b_B, and the attention biases when the
network has them), passes their signed logarithm through a small MLP, and projects its output gamma into
the continuous part of the group, per encoder layer and head:
    A_h = I + eps sin(gamma_A),  B_h = I + eps sin(gamma_B)   (d_h x d_h)
and, for ReLU feed-forward blocks, the units' positive scales 1 + eps sin(gamma_s). Every entry of
eps sin(.) is at most eps, so its spectral norm is at most eps d_h < 1 (enforced) and I + eps sin(.) is
invertible (a Neumann series). The element acts as the group does (`symmetry.apply_continuous`):
W_Q A, W_K A^{-T}, W_V B, B^{-1} W_O (DESIGN.md fact 3), FFN columns of W_A times s, rows of W_B over s.

`alpha_mode="shared"`: one element per network. `"per_channel"` (the published configuration): one per
channel, gamma_c = U (z(theta) * v_c) + u0 with a learned code v_c per channel on the MLP's hidden features
z, which keeps the overhead small (hidden x (outputs + C) instead of hidden x outputs x C).
"""

from __future__ import annotations

import torch
from torch import nn

from metanets.layers.stats import NUM_STATS, tensor_stats
from metanets.spec import PERM_SCALE
from metanets.transformer.layers import signed_log
from metanets.transformer.spec import TransformerSpec
from metanets.transformer.symmetry import apply_continuous
from metanets.transformer.weight_space import TransformerWeightSpace

ALPHA_MODES = ("per_channel", "shared")
_HALF = (torch.float16, torch.bfloat16)


def default_eps(spec: TransformerSpec) -> float:
    return 0.5 / spec.head_dim


def _stat_fields(spec: TransformerSpec) -> tuple[str, ...]:
    fields = ("wq", "wk", "wv", "wo", "wa", "ba", "wb", "bb")
    return fields + (("bq", "bk", "bv", "bo") if spec.has_attention_bias else ())


def _inverse(m: torch.Tensor) -> torch.Tensor:
    """Batched exact inverse; half-precision inputs (bf16 training) are inverted in float32."""
    if m.dtype in _HALF:
        return torch.linalg.inv_ex(m.float()).inverse.to(m.dtype)
    return torch.linalg.inv_ex(m).inverse  # no error check: eps * d_h < 1 guarantees invertibility


class TransformerAlpha(nn.Module):
    """theta -> dict(qk, qk_inv, vo, vo_inv: (B, C', L, H, d_h, d_h), ffn_scale: (B, C', L, f) or None),
    C' = channels (per_channel) or 1 (shared)."""

    def __init__(self, spec: TransformerSpec, channels: int, eps: float | None, alpha_mode: str, hidden: int = 16):
        super().__init__()
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {alpha_mode!r}")
        eps = default_eps(spec) if eps is None else float(eps)
        if not 0.0 <= eps or eps * spec.head_dim >= 1.0:
            raise ValueError(
                f"eps must satisfy 0 <= eps and eps * d_h < 1 so that I + eps*sin(.) is invertible; got eps={eps} "
                f"with head width d_h={spec.head_dim} (eps < {1.0 / spec.head_dim:.4g})"
            )
        self.spec, self.eps, self.alpha_mode = spec, eps, alpha_mode
        L, H, dh = spec.num_layers, spec.num_heads, spec.head_dim
        self.scales = spec.ffn_group == PERM_SCALE  # the FFN's continuous part: positive scalings
        self.sizes = [L * H * dh * dh, L * H * dh * dh] + ([L * spec.d_ff] if self.scales else [])
        n_in = NUM_STATS * len(_stat_fields(spec)) * L
        self.encode = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, sum(self.sizes))
        self.codes = nn.Parameter(1.0 + 0.5 * torch.randn(channels, hidden)) if alpha_mode == "per_channel" else None

    def stats(self, theta: TransformerWeightSpace) -> torch.Tensor:
        """(B, L * T * 7): statistics of channel 0 of every group-carrying tensor of every layer, ordered by
        layer, then tensor (`_stat_fields`). Tensors of equal size share one `tensor_stats` call."""
        B, L = theta.batch_size, self.spec.num_layers
        names = _stat_fields(self.spec)
        flat = {n: getattr(theta, n)[:, 0].reshape(B, L, -1) for n in names}
        out = {}
        for size in sorted({t.shape[-1] for t in flat.values()}):
            group = [n for n in names if flat[n].shape[-1] == size]
            stacked = torch.stack([flat[n] for n in group], dim=2)  # (B, L, G, size)
            rows = stacked.reshape(-1, size)
            # (tensor_stats computes low-precision rows in float32)
            stats = tensor_stats(rows).to(stacked.dtype).reshape(B, L, len(group), NUM_STATS)
            out.update({n: stats[:, :, i] for i, n in enumerate(group)})
        return torch.stack([out[n] for n in names], dim=2).reshape(B, -1)

    def forward(self, theta: TransformerWeightSpace) -> dict:
        z = self.encode(signed_log(self.stats(theta)))  # (B, hidden)
        if self.codes is None:
            gamma = self.out(z).unsqueeze(1)  # (B, 1, n)
        else:
            gamma = self.out(z.unsqueeze(1) * self.codes)  # (B, C, n)
        B, C = gamma.shape[:2]
        L, H, dh = self.spec.num_layers, self.spec.num_heads, self.spec.head_dim
        eye = torch.eye(dh, dtype=gamma.dtype, device=gamma.device)
        parts = gamma.split(self.sizes, dim=-1)
        qk = eye + self.eps * torch.sin(parts[0].reshape(B, C, L, H, dh, dh))
        vo = eye + self.eps * torch.sin(parts[1].reshape(B, C, L, H, dh, dh))
        scale = 1.0 + self.eps * torch.sin(parts[2].reshape(B, C, L, -1)) if self.scales else None
        return dict(qk=qk, qk_inv=_inverse(qk), vo=vo, vo_inv=_inverse(vo), ffn_scale=scale)


class TransformerQuasi(nn.Module):
    """Act on a feature (B, C, ...) with alpha(theta): a (per-channel) element of the continuous group."""

    def __init__(self, spec: TransformerSpec, channels: int, eps: float | None, alpha_mode: str, hidden: int = 16):
        super().__init__()
        self.alpha = TransformerAlpha(spec, channels, eps, alpha_mode, hidden)

    def forward(self, feature: TransformerWeightSpace, theta: TransformerWeightSpace) -> TransformerWeightSpace:
        return apply_continuous(feature, **self.alpha(theta))
