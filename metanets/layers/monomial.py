"""Monomial-NFN: layers equivariant to hidden permutations with positive scaling or sign flips.

Under W_i[j, k] -> d_j W_i[p(j), p'(k)] / d'_k only terms that scale like the entry they replace
survive. Hence hidden layers mix channels (and kernel positions) entry by entry; the first layer,
whose input axis is fixed, also mixes along that axis and with its bias (both scale with d_j); the
last layer mixes along its fixed output axis; the output bias is invariant and mixes freely. Maps are
homogeneous (no additive constants) so they commute with every scale and sign.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanets.layers.common import (
    ChannelLinear,
    flat_kernel,
    normalise_channels,
    normalise_scaled_channels,
    unflat_kernel,
)
from metanets.spec import PERM_SCALE, PERM_SIGN, NetworkSpec, SpecError
from metanets.symmetry import hidden_scale_factors
from metanets.weight_space import WeightSpace


class MonomialLinear(nn.Module):
    """One Monomial-NFN layer WeightSpace(C_in) -> WeightSpace(C_out)."""

    def __init__(self, spec: NetworkSpec, c_in: int, c_out: int):
        super().__init__()
        if spec.num_layers < 2:
            raise SpecError("Monomial-NFN layers need a network with at least one hidden layer")
        self.spec = spec
        L, layers = spec.num_layers, spec.layers
        s = [layer.kernel_size for layer in layers]
        first, last = layers[0], layers[-1]
        # first layer: mix (channel, kernel, input) per output neuron j, together with b_1[j]
        self.first_w = ChannelLinear(c_in * s[0] * first.n_in + c_in, c_out * s[0] * first.n_in, bias=False)
        self.first_b = ChannelLinear(c_in * s[0] * first.n_in + c_in, c_out, bias=False)
        self.hidden_w = nn.ModuleList(
            ChannelLinear(c_in * s[i], c_out * s[i], bias=False) for i in range(1, L - 1)
        )
        self.hidden_b = nn.ModuleList(ChannelLinear(c_in, c_out, bias=False) for _ in range(1, L - 1))
        # last layer: mix (channel, kernel, output) per input neuron k; the output bias is invariant
        self.last_w = ChannelLinear(c_in * s[-1] * last.n_out, c_out * s[-1] * last.n_out, bias=False)
        self.last_b = ChannelLinear(c_in * last.n_out, c_out * last.n_out, bias=True)

    def forward(self, ws: WeightSpace) -> WeightSpace:
        B, L, layers = ws.batch_size, self.spec.num_layers, self.spec.layers
        out_w, out_b = [], []
        # first layer
        w0 = flat_kernel(ws.weights[0])  # (B, C*s, n_1, n_0)
        n1, n0 = w0.shape[2:]
        x = torch.cat([w0.movedim(3, 2).reshape(B, -1, n1), ws.biases[0]], dim=1)
        out_w.append(unflat_kernel(self.first_w(x).reshape(B, -1, n0, n1).movedim(2, 3), layers[0].kernel))
        out_b.append(self.first_b(x))
        for i in range(1, L - 1):
            out_w.append(unflat_kernel(self.hidden_w[i - 1](flat_kernel(ws.weights[i])), layers[i].kernel))
            out_b.append(self.hidden_b[i - 1](ws.biases[i]))
        wl = flat_kernel(ws.weights[-1])  # (B, C*s, n_L, n_{L-1})
        nL, m = wl.shape[2:]
        out_w.append(unflat_kernel(self.last_w(wl.reshape(B, -1, m)).reshape(B, -1, nL, m), layers[-1].kernel))
        out_b.append(self.last_b(ws.biases[-1].reshape(B, -1, 1)).reshape(B, -1, nL))
        return WeightSpace(self.spec, tuple(out_w), tuple(out_b))


class MonomialInvariantPool(nn.Module):
    """Pool a Monomial-NFN feature into (B, D) features invariant to the spec's group.

    perm_scale: each entry's channel vector is normalised (positive scales cancel); perm_sign: an odd
    activation then `abs` (signs cancel). Then means over hidden axes, keeping the fixed input axis of
    the first layer and output axis of the last; the output bias is invariant and kept as is.
    """

    def __init__(self, spec: NetworkSpec, channels: int):
        super().__init__()
        if spec.group not in (PERM_SCALE, PERM_SIGN):
            raise SpecError(f"Monomial-NFN pooling needs a perm_scale or perm_sign group, not {spec.group}")
        self.spec, self.channels = spec, channels
        self.accepts_scales = spec.group == PERM_SCALE  # forward(ws, scales): the quasi scaling folded in
        first, last = spec.layers[0], spec.layers[-1]
        self.out_dim = (
            channels * first.kernel_size * first.n_in
            + sum(channels * layer.kernel_size for layer in spec.layers[1:-1])
            + channels * last.kernel_size * last.n_out
            + channels * (spec.num_layers - 1)
            + channels * last.n_out
        )

    def _cancel(self, t: torch.Tensor, factor: torch.Tensor | None = None, k: int = 1) -> torch.Tensor:
        if factor is not None:  # only with scales, which perm_scale alone accepts (forward)
            return normalise_scaled_channels(t, factor, k)
        if self.spec.group == PERM_SCALE:
            return normalise_channels(t)
        return torch.tanh(t).abs()

    def forward(self, ws: WeightSpace, scales: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """`scales`: pool `scale_hidden(ws, scales)` instead (the quasi layer's alpha, each (B, C or 1, n_i)),
        with the scaling folded into the channel normalisation, so the scaled feature is never formed."""
        B, L = ws.batch_size, self.spec.num_layers
        if scales is not None and self.spec.group != PERM_SCALE:
            raise SpecError(f"pooling with scales needs the perm_scale group, not {self.spec.group}")
        factors = [None] * L if scales is None else [
            f.expand(*w.shape[:4]) for f, w in zip(hidden_scale_factors(L, scales), ws.weights)]

        def cancel(w, i):  # kernel positions ride along as channels (flat_kernel): k per hidden channel
            return self._cancel(flat_kernel(w), factors[i], math.prod(w.shape[4:]))

        parts = [cancel(ws.weights[0], 0).mean(dim=2).reshape(B, -1)]
        for i in range(1, L - 1):
            parts.append(cancel(ws.weights[i], i).mean(dim=(2, 3)))
        parts.append(cancel(ws.weights[-1], L - 1).mean(dim=3).reshape(B, -1))
        for i, b in enumerate(ws.biases[:-1]):
            parts.append(self._cancel(b, None if scales is None else scales[i].expand_as(b)).mean(dim=2))
        parts.append(ws.biases[-1].reshape(B, -1))
        return torch.cat(parts, dim=1)
