"""Canonicalisation: a canonical member of each network's orbit under the continuous and sign parts of its group.

`canonicalize(ws)` maps a network theta to alpha(theta) . theta, where alpha(theta) is the data-dependent group
element (diagonal, no permutation) that puts every hidden neuron in a normal form. It works layer by layer,
from the first hidden layer to the last, so the factors moved out of layer i are already in the incoming
weights of layer i+1 when that layer is normalised:

- perm_scale (ReLU, leaky ReLU): neuron j of hidden layer i has incoming vector v_j = (W_i[j, ...], b_i[j])
  (its row of W_i with every kernel position, then its bias). It is divided by r_j = ||v_j||_2 and the
  outgoing weights W_{i+1}[:, j, ...] are multiplied by r_j. ReLU(x / r) = ReLU(x) / r for r > 0, so the
  function is unchanged; afterwards every neuron's incoming vector has unit norm.
- perm_sign (tanh, sine): neuron j is flipped (v_j -> -v_j, outgoing column -> minus itself) when the statistic
  s_j = sum(v_j), the sum of its incoming weights and bias, is negative; afterwards s_j >= 0. tanh and sin are
  odd, so the function is unchanged. The set of networks with some s_j = 0 has measure zero; there the neuron
  is left as it is, so canonical forms of such networks need not agree (documented, not an error).
- perm (other activations): the continuous part of the group is trivial; the network is returned unchanged.

Why it is canonical: if theta' = g . theta with g = D P, neuron j of theta' has incoming vector
d_j v_{P j} (after the previous layers are normalised, their factors have been absorbed), so its normal form
is the normal form of neuron P j of theta. Hence canonicalize(g . theta) = P . canonicalize(theta): equal up
to the permutation part of g, and any permutation-invariant function of the canonical form is invariant to
the whole group (DESIGN.md fact 4).

Dead neurons: a neuron whose incoming weights and bias are all zero has r_j = 0 (and s_j = 0). It is left as
it is (factor 1, no division by zero). Its outgoing weights then keep whatever scale or sign g gave them: the
neuron outputs act(0) = 0 for ReLU, tanh and sine, so those weights do not change the function, but they make
canonical forms of such networks differ in that column.

Transformer encoders (`TransformerWeightSpace`): the feed-forward hidden units are canonicalised the same way
(incoming: column j of W_A with b_A[j]; outgoing: row j of W_B), with the FFN's group (spec.ffn_group). The
attention part (GL(d_h) per head) is NOT canonicalised: it is returned unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from metanets.spec import PERM_SCALE, PERM_SIGN
from metanets.transformer.weight_space import TransformerWeightSpace
from metanets.weight_space import WeightSpace

STATISTIC = "sum of the neuron's incoming weights and bias"  # the sign-group statistic


def neuron_factors(incoming: torch.Tensor, group: str) -> torch.Tensor:
    """incoming (..., n, k): the incoming vectors of n neurons -> the factor (..., n) each is divided by.

    perm_scale: the Euclidean norm (computed after dividing by the largest |entry|, so it neither underflows
    nor overflows), 1 for an all-zero vector. perm_sign: -1 where the sum of the vector is negative, else 1.
    Other groups: 1.
    """
    if group == PERM_SCALE:
        top = incoming.abs().amax(dim=-1)
        alive = top > 0
        safe_top = torch.where(alive, top, torch.ones_like(top))
        norm = safe_top * (incoming / safe_top.unsqueeze(-1)).square().sum(dim=-1).sqrt()
        return torch.where(alive, norm, torch.ones_like(norm))
    if group == PERM_SIGN:
        s = incoming.sum(dim=-1)
        return torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
    return torch.ones(incoming.shape[:-1], dtype=incoming.dtype, device=incoming.device)


def canonicalize_layer(ws: WeightSpace, i: int) -> WeightSpace:
    """Normalise the neurons of hidden layer i + 1 (the outputs of layer i), moving the factors into layer i + 1.

    `canonicalize` applies this for i = 0 .. L-2 in order; a canonicalisation that skips one is not canonical
    (the tests show it)."""
    w, b, nxt = ws.weights[i], ws.biases[i], ws.weights[i + 1]
    B, C, n = b.shape
    incoming = torch.cat([w.reshape(B, C, n, -1), b.unsqueeze(-1)], dim=-1)
    f = neuron_factors(incoming, ws.spec.group)  # (B, C, n)
    weights, biases = list(ws.weights), list(ws.biases)
    weights[i] = w / f.reshape(B, C, n, *([1] * (w.ndim - 3)))
    biases[i] = b / f
    weights[i + 1] = nxt * f.reshape(B, C, 1, n, *([1] * (nxt.ndim - 4)))
    return WeightSpace(ws.spec, tuple(weights), tuple(biases))


def canonical_form(ws):
    """`canonicalize` without the input checks (for use inside models; traceable by torch.export)."""
    if isinstance(ws, TransformerWeightSpace):
        return _canonical_transformer(ws)
    if ws.spec.group not in (PERM_SCALE, PERM_SIGN):
        return ws
    for i in range(ws.spec.num_layers - 1):
        ws = canonicalize_layer(ws, i)
    return ws


def _canonical_transformer(ws: TransformerWeightSpace) -> TransformerWeightSpace:
    """FFN units: incoming (W_A[:, j], b_A[j]), outgoing W_B[j, :]; wa (B, C, L, d, f), ba (B, C, L, f),
    wb (B, C, L, f, d)."""
    group = ws.spec.ffn_group
    if group not in (PERM_SCALE, PERM_SIGN):
        return ws
    incoming = torch.cat([ws.wa.transpose(-1, -2), ws.ba.unsqueeze(-1)], dim=-1)  # (B, C, L, f, d + 1)
    f = neuron_factors(incoming, group)  # (B, C, L, f)
    return ws.replace(wa=ws.wa / f.unsqueeze(-2), ba=ws.ba / f, wb=ws.wb * f.unsqueeze(-1))


def canonicalize(ws):
    """The canonical member of each network's orbit under the continuous and sign parts of its group.

    ws: a `WeightSpace` (B, C, ...) or `TransformerWeightSpace`; every batch entry and channel is canonicalised
    on its own. The result computes the same function, and canonicalize(g . ws) == P . canonicalize(ws) for
    every group element g with permutation part P (see the module docstring for the normal form, the
    measure-zero ties and dead neurons). Non-finite weights raise ValueError naming the key and batch rows.
    """
    return canonical_form(ws.check_finite())


class Canonicalize(nn.Module):
    """The first layer of the canonicalised models: theta -> canonicalize(theta) (no parameters)."""

    def forward(self, ws):
        return canonical_form(ws)
