"""The symmetry groups of weight spaces, as pure functions over tensors.

For an L-layer MLP/CNN the group acts on the hidden layers 1..L-1 with g_i = D_i P_i:
    W_i -> g_i W_i g_{i-1}^{-1},   b_i -> g_i b_i,   g_0 = g_L = identity (inputs, outputs fixed).
An element stores, per hidden layer, a permutation `perm` (B, n_i) and a diagonal `scale` (B, n_i):
unit j of the transformed network is unit perm[j] of the original, multiplied by scale[j], i.e.
    W_i'[j, k] = scale_i[j] * W_i[perm_i[j], perm_{i-1}[k]] / scale_{i-1}[k].
Scales are positive for positively homogeneous activations (ReLU), +-1 for odd ones (tanh, sine) and
1 for the permutation-only group. The same functions serve the tests, data augmentation and the
invariance audit. A weight space with C channels is acted on with the same g in every channel.

`sample`, `act`, `compose`, `inverse` and `identity` also take a `TransformerSpec` / `TransformerElement`
and then use the transformer encoder's group (`metanets.transformer.symmetry`: GL(d_h) per head, head
permutations, the feed-forward units' monomial group), with the same signatures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metanets.canonical import canonicalize  # noqa: F401  (part of the public API: metanets.symmetry.canonicalize)
from metanets.spec import PERM, PERM_SCALE, PERM_SIGN, NetworkSpec
from metanets.transformer import symmetry as transformer_group
from metanets.transformer.spec import TransformerSpec
from metanets.transformer.symmetry import TransformerElement
from metanets.weight_space import WeightSpace


@dataclass(frozen=True)
class MonomialElement:
    """A batch of group elements g = (D_i P_i) for the hidden layers i = 1..L-1."""

    perms: tuple[torch.Tensor, ...]  # (B, n_i) long
    scales: tuple[torch.Tensor, ...]  # (B, n_i) float

    @property
    def batch_size(self) -> int:
        return self.perms[0].shape[0] if self.perms else 0

    def to(self, *args, **kwargs) -> MonomialElement:
        return MonomialElement(
            tuple(p.to(device=kwargs.get("device", p.device)) for p in self.perms),
            tuple(s.to(*args, **kwargs) for s in self.scales),
        )


def identity(spec: NetworkSpec, batch: int, dtype=torch.float64, device=None) -> MonomialElement:
    if isinstance(spec, TransformerSpec):
        return transformer_group.identity(spec, batch, dtype=dtype, device=device)
    return MonomialElement(
        tuple(torch.arange(n, device=device).expand(batch, n).clone() for n in spec.hidden_sizes),
        tuple(torch.ones(batch, n, dtype=dtype, device=device) for n in spec.hidden_sizes),
    )


def sample(
    spec: NetworkSpec,
    batch: int,
    scale: tuple[float, float] | None = (1.0, 1.0),
    generator: torch.Generator | None = None,
    permute: bool = True,
    group: str | None = None,
    dtype=torch.float64,
    device=None,
) -> MonomialElement:
    """Draw `batch` random elements of the spec's group (or of `group`, a subgroup name).

    Permutations are uniform (when `permute`); perm_scale draws each scale from U[lo, hi]
    (`scale=(lo, hi)`, lo > 0); perm_sign draws uniform signs; perm draws no scaling. For a
    TransformerSpec see `metanets.transformer.symmetry.sample` (same arguments).
    """
    if isinstance(spec, TransformerSpec):
        return transformer_group.sample(spec, batch, scale=scale, generator=generator, permute=permute, group=group,
                                        dtype=dtype, device=device)
    group = group or spec.group
    perms, scales = [], []
    for n in spec.hidden_sizes:
        if permute:
            perms.append(torch.argsort(torch.rand(batch, n, generator=generator), dim=1).to(device))
        else:
            perms.append(torch.arange(n, device=device).expand(batch, n).clone())
        if group == PERM_SCALE and scale is not None:
            lo, hi = scale
            if not 0 < lo <= hi:
                raise ValueError(f"scale range must satisfy 0 < lo <= hi, got {scale}")
            s = lo + (hi - lo) * torch.rand(batch, n, generator=generator, dtype=torch.float64)
        elif group == PERM_SIGN:
            s = torch.randint(0, 2, (batch, n), generator=generator).to(torch.float64) * 2 - 1
        elif group in (PERM, PERM_SCALE):
            s = torch.ones(batch, n, dtype=torch.float64)
        else:
            raise ValueError(f"unknown group {group!r}")
        scales.append(s.to(dtype=dtype, device=device))
    return MonomialElement(tuple(perms), tuple(scales))


def compose(g: MonomialElement, h: MonomialElement) -> MonomialElement:
    """The element `g h`: act(compose(g, h), ws) == act(g, act(h, ws))."""
    if isinstance(g, TransformerElement):
        return transformer_group.compose(g, h)
    perms = tuple(torch.gather(ph, 1, pg) for pg, ph in zip(g.perms, h.perms))
    scales = tuple(sg * torch.gather(sh, 1, pg) for pg, sg, sh in zip(g.perms, g.scales, h.scales))
    return MonomialElement(perms, scales)


def inverse(g: MonomialElement) -> MonomialElement:
    if isinstance(g, TransformerElement):
        return transformer_group.inverse(g)
    inv_perms = tuple(torch.argsort(p, dim=1) for p in g.perms)
    scales = tuple(1.0 / torch.gather(s, 1, ip) for s, ip in zip(g.scales, inv_perms))
    return MonomialElement(inv_perms, scales)


def _rows(t: torch.Tensor, perm: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """Permute axis `axis` of t (B, C, ...) by perm (B, n) and multiply it by scale (B, n)."""
    shape = [1] * t.ndim
    shape[0], shape[axis] = t.shape[0], t.shape[axis]
    idx = perm.reshape(shape).expand(*[t.shape[d] if d != axis else -1 for d in range(t.ndim)])
    return torch.gather(t, axis, idx) * scale.to(t.dtype).reshape(shape)


def act_rows_cols(
    row_g: MonomialElement, col_g: MonomialElement, ws: WeightSpace
) -> WeightSpace:
    """Transform rows (output units) of each layer with `row_g` and columns with `col_g`.

    `act(g, ws)` is `act_rows_cols(g, g, ws)`. With two different elements this is the *uncoupled*
    action used by the tests to show a layer is not trivially equivariant.
    """
    L = ws.spec.num_layers
    weights, biases = [], []
    for i, (w, b) in enumerate(zip(ws.weights, ws.biases)):
        if i < L - 1:  # output units of layer i are hidden layer i+1 in 1-based terms
            w = _rows(w, row_g.perms[i], row_g.scales[i], 2)
            b = _rows(b, row_g.perms[i], row_g.scales[i], 2)
        if i > 0:
            w = _rows(w, col_g.perms[i - 1], 1.0 / col_g.scales[i - 1], 3)
        weights.append(w)
        biases.append(b)
    return WeightSpace(ws.spec, tuple(weights), tuple(biases))


def act(g: MonomialElement, ws: WeightSpace) -> WeightSpace:
    """Apply g to every network (and every channel) of the batch: W_i -> g_i W_i g_{i-1}^{-1}."""
    if isinstance(g, TransformerElement):
        return transformer_group.act(g, ws)
    if len(g.perms) != len(ws.spec.hidden_sizes):
        raise ValueError(
            f"group element has {len(g.perms)} hidden layers, the weight space {len(ws.spec.hidden_sizes)}"
        )
    if g.batch_size not in (ws.batch_size, 0) and ws.spec.hidden_sizes:
        raise ValueError(f"group element batch {g.batch_size} != weight-space batch {ws.batch_size}")
    return act_rows_cols(g, g, ws)


def scale_hidden(ws: WeightSpace, scales: tuple[torch.Tensor, ...]) -> WeightSpace:
    """Act with per-channel positive diagonal elements: scales[i] is (B, C, n_i) or (B, 1, n_i).

    W_i[c] -> diag(a_i[c]) W_i[c] diag(a_{i-1}[c])^{-1}, b_i[c] -> a_i[c] * b_i[c]. This is the
    action of G^C (one element per channel) restricted to the continuous diagonal part; the quasi
    layer uses it to apply alpha(theta).
    """
    L = ws.spec.num_layers
    weights, biases = [], []
    # one (B, C, n, m) factor per layer, so the large tensor is touched once
    for i, (w, b, factor) in enumerate(zip(ws.weights, ws.biases, hidden_scale_factors(L, scales))):
        w = w * factor.reshape(*factor.shape, *([1] * (w.ndim - 4)))
        if i < L - 1:
            b = b * scales[i]
        weights.append(w)
        biases.append(b)
    return WeightSpace(ws.spec, tuple(weights), tuple(biases))


def hidden_scale_factors(num_layers: int, scales: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Per layer i, the factor `scale_hidden` multiplies W_i by: a_i[c] (rows) over a_{i-1}[c] (columns),
    (B, C or 1, n_i or 1, n_{i-1} or 1): the first layer's input axis and the last's output axis are fixed."""
    out = []
    for i in range(num_layers):
        rows = scales[i][..., :, None] if i < num_layers - 1 else None
        cols = 1.0 / scales[i - 1][..., None, :] if i > 0 else None
        out.append(rows * cols if rows is not None and cols is not None else (rows if cols is None else cols))
    return out
