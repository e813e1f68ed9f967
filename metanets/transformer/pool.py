"""Invariant pooling of a Transformer-NFN feature into (B, D) features for the head MLP.

Each encoder layer's group-carrying tensors are first read through learned channel projections
C -> k (`pool_channels`), which commute with any element shared by all channels, then turned into
invariants:
    P  = sum_h  W~_Q^h W~_K^hT        ((d+1) x (d+1); A_h A_h^{-1} cancels, the head sum removes tau)
    R  = sum_h  W~_V^h W_O^h          ((d+1) x d;     B_h B_h^{-1} cancels)
    F  = W~_A W_B                     ((d+1) x d;     s / s cancels, the unit sum removes pi)
plus the FFN entries normalised across channels (positive scales cancel; tanh then abs for signs) and
averaged over units, and the invariant tensors b_O, b_B and the extras (embeddings, norms, classifier).
Projecting *before* the products keeps cross-channel terms, so a per-channel element (the quasi layer's
per-channel alpha) is not removed, while one shared by all channels (the group, or a shared alpha) is
removed exactly. Every feature then goes through a signed log (elementwise, so still invariant).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanets.layers.common import ChannelLinear, normalise_channels
from metanets.spec import PERM_SCALE
from metanets.transformer.layers import augment, signed_log
from metanets.transformer.spec import TransformerSpec
from metanets.transformer.weight_space import TransformerWeightSpace

_PROJECTED = ("q", "k", "v", "o", "a", "b", "ffn", "bias")


class TransformerInvariantPool(nn.Module):
    """A C-channel TransformerWeightSpace -> (B, out_dim) features invariant to the spec's whole group."""

    def __init__(self, spec: TransformerSpec, channels: int, pool_channels: int = 2):
        super().__init__()
        self.spec, self.k = spec, pool_channels
        L, d = spec.num_layers, spec.d_model
        self.proj = nn.ParameterDict({
            name: nn.Parameter(torch.randn(L, pool_channels, channels) / math.sqrt(channels)) for name in _PROJECTED
        })
        self.extras = nn.ModuleList(ChannelLinear(channels, 1, bias=False) for _ in spec.extras)
        per_layer = (d + 1) ** 2 + 2 * (d + 1) * d + (2 * d + 1) + 2 * d
        self.out_dim = L * pool_channels * per_layer + sum(math.prod(e.shape) for e in spec.extras)

    def _cancel(self, t: torch.Tensor) -> torch.Tensor:
        """Remove the FFN units' scales (perm_scale) or signs (perm_sign) entry by entry, across channels."""
        if self.spec.ffn_group == PERM_SCALE:
            return normalise_channels(t)
        return torch.tanh(t).abs()

    def _p(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Project channels: (B, C, L, ...) -> (B, k, L, ...)."""
        flat = t.reshape(*t.shape[:3], -1)
        return torch.einsum("lkc,bclx->bklx", self.proj[name], flat).reshape(t.shape[0], self.k, *t.shape[2:])

    def forward(self, ws: TransformerWeightSpace) -> torch.Tensor:
        B, spec = ws.batch_size, self.spec
        H, dh, f = spec.num_heads, spec.head_dim, spec.d_ff
        q, k = self._p("q", augment(ws.wq, ws.bq)), self._p("k", augment(ws.wk, ws.bk))
        v, o = self._p("v", augment(ws.wv, ws.bv)), self._p("o", ws.wo)
        a, b = self._p("a", torch.cat([ws.wa, ws.ba.unsqueeze(-2)], dim=-2)), self._p("b", ws.wb)
        parts = [
            torch.einsum("bklhij,bklhmj->bklim", q, k) / (H * dh),
            torch.einsum("bklhij,bklhjm->bklim", v, o) / (H * dh),
            (a @ b) / f,
        ]
        ffn = torch.cat([self._cancel(ws.wa).mean(dim=-1), self._cancel(ws.ba).mean(dim=-1, keepdim=True),
                         self._cancel(ws.wb).mean(dim=-2)], dim=-1)  # (B, C, L, 2d+1): unit means of W_A, b_A, W_B
        parts += [self._p("ffn", ffn), self._p("bias", torch.cat([ws.bo, ws.bb], dim=-1))]
        feats = [signed_log(p.reshape(B, -1)) for p in parts]
        feats += [signed_log(mix(t).reshape(B, -1)) for mix, t in zip(self.extras, ws.extras)]
        return torch.cat(feats, dim=1)
