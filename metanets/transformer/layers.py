"""Transformer-NFN layers: TransformerWeightSpace (C_in channels) -> TransformerWeightSpace (C_out channels).

Why these terms. Per layer and head the group multiplies W~_Q = [W_Q; b_Q] ((d+1) x d_h) on the right by
A_h, W~_K by A_h^{-T}, W~_V by B_h, and W_O (d_h x d) on the left by B_h^{-1}; the A_h, B_h of different
heads and layers are independent, and the row axis of W~_Q/K/V (the residual stream plus the bias row) and
the column axis of W_O are fixed. A linear map R^{(d+1) x d_h} -> R^{(d+1) x d_h} commuting with every
right multiplication X -> X A is X -> M X, so the only linear terms are mixing along the fixed axis and
across channels (a channel-mixing C_out x C_in matrix commutes with A because every channel gets the same
A); mixing across heads or layers, or between W_Q and W_K, is not equivariant. The same holds for the FFN:
W~_A = [W_A; b_A] columns and W_B rows move with a monomial element, so they mix along their fixed axis
only. Cross-tensor information flows through invariants: diag(W_Q^h W_K^hT), diag(W_V^h W_O^h) and
diag(W_A W_B) (each (d,), summed over heads) feed the invariant outputs b_O and b_B, and the gated
nonlinearity scales each head by a function of tr(W~_Q W~_K^T) and tr(W_V W_O).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanets.layers.common import ChannelLinear, relu
from metanets.spec import PERM_SIGN, SpecError
from metanets.transformer.spec import TransformerSpec
from metanets.transformer.weight_space import TransformerWeightSpace


def augment(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[W; b]: (..., d, d_h) and (..., d_h) -> (..., d+1, d_h); the bias row moves like the weight rows."""
    return torch.cat([w, b.unsqueeze(-2)], dim=-2)


def signed_log(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.log1p(t.abs())


def diag_invariants(ws: TransformerWeightSpace) -> torch.Tensor:
    """(B, 3C, L, d): diag(sum_h W_Q^h W_K^hT), diag(sum_h W_V^h W_O^h), diag(W_A W_B), each a mean over its
    summands. Invariant to the whole group (A A^{-1}, B^{-1} B and s / s cancel)."""
    H, dh, f = ws.spec.num_heads, ws.spec.head_dim, ws.spec.d_ff
    qk = (ws.wq * ws.wk).sum(dim=(3, 5)) / (H * dh)
    vo = (ws.wv * ws.wo.transpose(-1, -2)).sum(dim=(3, 5)) / (H * dh)
    ff = (ws.wa * ws.wb.transpose(-1, -2)).sum(dim=-1) / f
    return torch.cat([qk, vo, ff], dim=1)


class FixedAxisMix(nn.Module):
    """x (B, C_in, L, ..., n at `axis` (-2 or -1)) -> (B, C_out, L, ...):
    y[:, o, l] = sum_c Lam0[l, o, c] x[:, c, l] + M[l] applied along the fixed axis to sum_c Lam1[l, o, c] x[:, c, l].

    Encoder layer l has its own Lam0, Lam1 (C_out x C_in) and M (n x n). Homogeneous unless `bias` (only for
    invariant outputs), so it commutes with any transformation of the other axes that is the same in every
    channel.
    """

    def __init__(self, num_layers: int, c_in: int, c_out: int, n: int, bias: bool = False):
        super().__init__()
        # He-style scale: keeps the features' size through the gates (which roughly halve it) and ReLUs
        self.lam = nn.Parameter(torch.randn(num_layers, 2 * c_out, c_in) / math.sqrt(c_in))
        self.mix = nn.Parameter(torch.randn(num_layers, n, n) / math.sqrt(n))
        self.bias = nn.Parameter(torch.zeros(num_layers, c_out)) if bias else None

    def forward(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        B, _, L = x.shape[:3]
        rest = x.shape[3:]
        z = torch.einsum("loc,bclx->bolx", self.lam, x.reshape(B, -1, L, math.prod(rest)))
        plain, mixed = z.reshape(B, -1, L, *rest).chunk(2, dim=1)
        n = rest[axis]
        if axis == -1:
            mixed = torch.einsum("bclgn,lkn->bclgk", mixed.reshape(B, -1, L, math.prod(rest[:-1]), n), self.mix)
        else:
            mixed = torch.einsum("bclgnm,lkn->bclgkm", mixed.reshape(B, -1, L, math.prod(rest[:-2]), n, rest[-1]),
                                 self.mix)
        out = plain + mixed.reshape(plain.shape)
        if self.bias is not None:
            out = out + self.bias.transpose(0, 1).reshape(1, -1, L, *([1] * len(rest)))
        return out


class TransformerNFNLayer(nn.Module):
    """One equivariant layer (see the module docstring for the terms and why they are the allowed ones)."""

    def __init__(self, spec: TransformerSpec, c_in: int, c_out: int):
        super().__init__()
        if not isinstance(spec, TransformerSpec):
            raise SpecError(f"Transformer-NFN layers need a TransformerSpec, got {type(spec).__name__}")
        self.spec = spec
        L, d = spec.num_layers, spec.d_model
        self.q, self.k, self.v, self.a = (FixedAxisMix(L, c_in, c_out, d + 1) for _ in range(4))
        self.o, self.b = FixedAxisMix(L, c_in, c_out, d), FixedAxisMix(L, c_in, c_out, d)
        # invariant outputs read b_O, b_B and the three diagonal invariants
        self.to_bo = FixedAxisMix(L, 5 * c_in, c_out, d, bias=True)
        self.to_bb = FixedAxisMix(L, 5 * c_in, c_out, d, bias=True)
        self.extras = nn.ModuleList(ChannelLinear(c_in, c_out) for _ in spec.extras)

    def forward(self, ws: TransformerWeightSpace) -> TransformerWeightSpace:
        d = self.spec.d_model
        q = self.q(augment(ws.wq, ws.bq), -2)
        k = self.k(augment(ws.wk, ws.bk), -2)
        v = self.v(augment(ws.wv, ws.bv), -2)
        a = self.a(torch.cat([ws.wa, ws.ba.unsqueeze(-2)], dim=-2), -2)
        invariants = torch.cat([ws.bo, ws.bb, diag_invariants(ws)], dim=1)
        return ws.replace(
            wq=q[..., :d, :], bq=q[..., d, :], wk=k[..., :d, :], bk=k[..., d, :], wv=v[..., :d, :], bv=v[..., d, :],
            wo=self.o(ws.wo, -1), bo=self.to_bo(invariants, -1),
            wa=a[..., :d, :], ba=a[..., d, :], wb=self.b(ws.wb, -1), bb=self.to_bb(invariants, -1),
            extras=tuple(mix(t) for mix, t in zip(self.extras, ws.extras)),
        )


class TransformerGate(nn.Module):
    """Equivariant nonlinearity. Elementwise functions do not commute with GL(d_h), so each head's
    W~_Q, W~_K, W~_V, W_O (per channel) is multiplied by a sigmoid gate computed from the invariants
    tr(W~_Q W~_K^T) and tr(W_V W_O) of all channels of that head; FFN entries get ReLU (positively
    homogeneous, for perm_scale and perm) or tanh (odd, for perm_sign); invariant tensors get ReLU.
    """

    def __init__(self, spec: TransformerSpec, channels: int):
        super().__init__()
        self.spec = spec
        L = spec.num_layers
        self.weight = nn.Parameter(torch.empty(L, 4 * channels, 2 * channels).uniform_(-1, 1) / math.sqrt(2 * channels))
        self.bias = nn.Parameter(torch.zeros(L, 4 * channels))
        self.ffn = torch.tanh if spec.ffn_group == PERM_SIGN else relu

    def forward(self, ws: TransformerWeightSpace) -> TransformerWeightSpace:
        t_qk = (ws.wq * ws.wk).sum(dim=(-2, -1)) + (ws.bq * ws.bk).sum(dim=-1)  # (B, C, L, H)
        t_vo = (ws.wv * ws.wo.transpose(-1, -2)).sum(dim=(-2, -1))
        t = signed_log(torch.cat([t_qk, t_vo], dim=1))
        logits = torch.einsum("lgc,bclh->bglh", self.weight, t) + self.bias.transpose(0, 1)[None, :, :, None]
        gates = torch.sigmoid(logits)
        gq, gk, gv, go = gates.unsqueeze(-1).chunk(4, dim=1)  # each (B, C, L, H, 1)
        return ws.replace(
            wq=ws.wq * gq.unsqueeze(-1), bq=ws.bq * gq, wk=ws.wk * gk.unsqueeze(-1), bk=ws.bk * gk,
            wv=ws.wv * gv.unsqueeze(-1), bv=ws.bv * gv, wo=ws.wo * go.unsqueeze(-1),
            wa=self.ffn(ws.wa), ba=self.ffn(ws.ba), wb=self.ffn(ws.wb),
            bo=relu(ws.bo), bb=relu(ws.bb), extras=tuple(relu(e) for e in ws.extras),
        )
