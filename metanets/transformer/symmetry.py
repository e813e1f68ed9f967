"""The transformer encoder's symmetry group, as pure functions over tensors.

Per encoder layer l (design notation of weight_space.py), an element holds a head permutation tau,
per head A_h, B_h in GL(d_h) (with their inverses), and a monomial element (perm pi, scale s) of the
feed-forward hidden units. Head h of the transformed network is head tau(h) of the original:
    W_Q^h -> W_Q^{tau h} A_h,   b_Q^h -> b_Q^{tau h} A_h
    W_K^h -> W_K^{tau h} A_h^{-T}, b_K^h -> b_K^{tau h} A_h^{-T}
    W_V^h -> W_V^{tau h} B_h,   b_V^h -> b_V^{tau h} B_h
    W_O^h -> B_h^{-1} W_O^{tau h}          (b_O, the residual stream, norms, embeddings: fixed)
    W_A[:, j] -> s_j W_A[:, pi j], b_A[j] -> s_j b_A[pi j], W_B[j, :] -> W_B[pi j, :] / s_j
so every head keeps softmax((x W_Q)(x W_K)^T / sqrt(d_h)) and (x W_V) W_O, and every FFN unit its output.

Subgroups (`group=` of `sample`): `transformer_<perm_scale|perm_sign|perm>` is the full group with that FFN
part; plain `perm_scale`, `perm_sign`, `perm` drop GL(d_h) (A = B = I) and keep head and FFN permutations
with that FFN part, so the monomial names keep their meaning for transformer zoos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metanets.spec import PERM, PERM_SCALE, PERM_SIGN
from metanets.transformer.spec import TRANSFORMER, TransformerSpec
from metanets.transformer.weight_space import TransformerWeightSpace


@dataclass(frozen=True)
class TransformerElement:
    """A batch of elements. head_perm (B, L, H) long; qk, qk_inv, vo, vo_inv (B, L, H, d_h, d_h) hold A, A^{-1},
    B, B^{-1}; ffn_perm (B, L, f) long, ffn_scale (B, L, f)."""

    head_perm: torch.Tensor
    qk: torch.Tensor
    qk_inv: torch.Tensor
    vo: torch.Tensor
    vo_inv: torch.Tensor
    ffn_perm: torch.Tensor
    ffn_scale: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.head_perm.shape[0]

    def to(self, *args, **kwargs) -> TransformerElement:
        dev = kwargs.get("device")
        perms = {n: getattr(self, n).to(device=dev) for n in ("head_perm", "ffn_perm")}
        floats = {n: getattr(self, n).to(*args, **kwargs) for n in ("qk", "qk_inv", "vo", "vo_inv", "ffn_scale")}
        return TransformerElement(**perms, **floats)


def _arange(batch, L, n, device):
    return torch.arange(n, device=device).expand(batch, L, n).clone()


def identity(spec: TransformerSpec, batch: int, dtype=torch.float64, device=None) -> TransformerElement:
    L, H, dh, f = spec.num_layers, spec.num_heads, spec.head_dim, spec.d_ff
    eye = torch.eye(dh, dtype=dtype, device=device).expand(batch, L, H, dh, dh).clone()
    return TransformerElement(_arange(batch, L, H, device), eye, eye.clone(), eye.clone(), eye.clone(),
                              _arange(batch, L, f, device), torch.ones(batch, L, f, dtype=dtype, device=device))


def _orthogonal(shape, n, generator) -> torch.Tensor:
    """Haar-distributed orthogonal matrices (*shape, n, n): QR of a Gaussian with the signs of R's diagonal."""
    q, r = torch.linalg.qr(torch.randn(*shape, n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def _gl(shape, n, scale, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M^{-1}) with M = U diag(sigma) V^T, U, V Haar-orthogonal, sigma log-uniform in [lo, hi]: the
    singular values lie in [lo, hi], so the condition number is at most hi / lo."""
    u, v = _orthogonal(shape, n, generator), _orthogonal(shape, n, generator)
    if scale is None:
        sigma = torch.ones(*shape, n, dtype=torch.float64)
    else:
        lo, hi = (torch.tensor(float(x), dtype=torch.float64).log() for x in scale)
        sigma = (lo + (hi - lo) * torch.rand(*shape, n, generator=generator, dtype=torch.float64)).exp()
    m = (u * sigma.unsqueeze(-2)) @ v.transpose(-1, -2)
    m_inv = (v / sigma.unsqueeze(-2)) @ u.transpose(-1, -2)
    return m, m_inv


def sample(spec: TransformerSpec, batch: int, scale=(1.0, 1.0), generator=None, permute: bool = True,
           group: str | None = None, dtype=torch.float64, device=None) -> TransformerElement:
    """Draw `batch` random elements of the spec's group (or of subgroup `group`, see the module docstring).

    A_h, B_h = U diag(sigma) V^T with Haar-orthogonal U, V and singular values sigma log-uniform in
    `scale=(lo, hi)` (condition number <= hi/lo; `None` or (1, 1): orthogonal). FFN scales are U[lo, hi]
    for perm_scale (as for MLPs), uniform signs for perm_sign. Heads and FFN units are permuted uniformly
    when `permute`.
    """
    group = group or spec.group
    with_gl = group.startswith(TRANSFORMER + "_")
    ffn = group[len(TRANSFORMER) + 1:] if with_gl else group
    if ffn not in (PERM_SCALE, PERM_SIGN, PERM):
        raise ValueError(f"unknown transformer group {group!r}")
    if scale is not None and not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale range must satisfy 0 < lo <= hi, got {scale}")
    L, H, dh, f = spec.num_layers, spec.num_heads, spec.head_dim, spec.d_ff
    g = identity(spec, batch)
    if permute:
        heads = torch.argsort(torch.rand(batch, L, H, generator=generator), dim=-1)
        units = torch.argsort(torch.rand(batch, L, f, generator=generator), dim=-1)
    else:
        heads, units = g.head_perm, g.ffn_perm
    qk, qk_inv, vo, vo_inv = g.qk, g.qk_inv, g.vo, g.vo_inv
    if with_gl:
        qk, qk_inv = _gl((batch, L, H), dh, scale, generator)
        vo, vo_inv = _gl((batch, L, H), dh, scale, generator)
    s = g.ffn_scale
    if ffn == PERM_SCALE and scale is not None:
        s = scale[0] + (scale[1] - scale[0]) * torch.rand(batch, L, f, generator=generator, dtype=torch.float64)
    elif ffn == PERM_SIGN:
        s = torch.randint(0, 2, (batch, L, f), generator=generator).to(torch.float64) * 2 - 1
    out = TransformerElement(heads, qk, qk_inv, vo, vo_inv, units, s)
    return out.to(dtype=dtype, device=device)


def _take(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """t (B, L, n, ...) gathered by perm (B, L, n): out[b, l, j] = t[b, l, perm[b, l, j]]."""
    idx = perm.reshape(*perm.shape, *([1] * (t.ndim - 3))).expand(*perm.shape, *t.shape[3:])
    return torch.gather(t, 2, idx)


def compose(g: TransformerElement, h: TransformerElement) -> TransformerElement:
    """The element `g h`: act(compose(g, h), ws) == act(g, act(h, ws))."""
    tg = g.head_perm
    return TransformerElement(
        head_perm=_take(h.head_perm, tg),
        qk=_take(h.qk, tg) @ g.qk, qk_inv=g.qk_inv @ _take(h.qk_inv, tg),
        vo=_take(h.vo, tg) @ g.vo, vo_inv=g.vo_inv @ _take(h.vo_inv, tg),
        ffn_perm=_take(h.ffn_perm, g.ffn_perm), ffn_scale=g.ffn_scale * _take(h.ffn_scale, g.ffn_perm),
    )


def inverse(g: TransformerElement) -> TransformerElement:
    heads, units = torch.argsort(g.head_perm, dim=-1), torch.argsort(g.ffn_perm, dim=-1)
    return TransformerElement(
        head_perm=heads, qk=_take(g.qk_inv, heads), qk_inv=_take(g.qk, heads),
        vo=_take(g.vo_inv, heads), vo_inv=_take(g.vo, heads),
        ffn_perm=units, ffn_scale=1.0 / _take(g.ffn_scale, units),
    )


def gather_units(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """t (B, C, L, n, ...) with entry j of axis 3 replaced by entry perm[b, l, j] (perm (B, L, n)), every
    channel alike: heads of wq/wk/wv/wo/bq/bk/bv, or FFN units of ba/wb."""
    B, C, L, n = t.shape[:4]
    idx = perm.reshape(B, 1, L, n, *([1] * (t.ndim - 4))).expand(B, C, L, n, *t.shape[4:])
    return torch.gather(t, 3, idx)


def apply_continuous(ws: TransformerWeightSpace, qk, qk_inv, vo, vo_inv, ffn_scale=None) -> TransformerWeightSpace:
    """Act with per-channel continuous elements: qk, qk_inv, vo, vo_inv (B, C or 1, L, H, d_h, d_h),
    ffn_scale (B, C or 1, L, f) or None. Every channel c gets W_Q A_c, W_K A_c^{-T}, W_V B_c, B_c^{-1} W_O,
    and its FFN units scaled by s_c. The group action and the quasi layer's alpha both use it."""
    t = qk_inv.transpose(-1, -2)
    out = dict(
        wq=ws.wq @ qk, bq=(ws.bq.unsqueeze(-2) @ qk).squeeze(-2),
        wk=ws.wk @ t, bk=(ws.bk.unsqueeze(-2) @ t).squeeze(-2),
        wv=ws.wv @ vo, bv=(ws.bv.unsqueeze(-2) @ vo).squeeze(-2),
        wo=vo_inv @ ws.wo,
    )
    if ffn_scale is not None:
        out.update(wa=ws.wa * ffn_scale.unsqueeze(-2), ba=ws.ba * ffn_scale, wb=ws.wb / ffn_scale.unsqueeze(-1))
    return ws.replace(**out)


def permute(ws: TransformerWeightSpace, head_perm: torch.Tensor, ffn_perm: torch.Tensor) -> TransformerWeightSpace:
    """Permute heads (B, L, H) and FFN units (B, L, f), every channel alike."""
    heads = {n: gather_units(getattr(ws, n), head_perm) for n in ("wq", "wk", "wv", "wo", "bq", "bk", "bv")}
    B, C, L, d, f = ws.wa.shape
    cols = ffn_perm.reshape(B, 1, L, 1, f).expand(B, C, L, d, f)
    return ws.replace(**heads, wa=torch.gather(ws.wa, 4, cols), ba=gather_units(ws.ba, ffn_perm),
                      wb=gather_units(ws.wb, ffn_perm))


def act(g: TransformerElement, ws: TransformerWeightSpace) -> TransformerWeightSpace:
    """Apply g to every network (and every channel) of the batch; see the module docstring."""
    spec = ws.spec
    if g.head_perm.shape[1:] != (spec.num_layers, spec.num_heads) or g.ffn_perm.shape[-1] != spec.d_ff:
        raise ValueError(f"group element of shape {tuple(g.head_perm.shape)} heads / {tuple(g.ffn_perm.shape)} FFN "
                         f"units does not fit {spec.num_layers} layers of {spec.num_heads} heads, {spec.d_ff} units")
    if g.batch_size != ws.batch_size:
        raise ValueError(f"group element batch {g.batch_size} != weight-space batch {ws.batch_size}")
    g = g.to(dtype=ws.dtype, device=ws.device)
    moved = permute(ws, g.head_perm, g.ffn_perm)
    return apply_continuous(moved, g.qk.unsqueeze(1), g.qk_inv.unsqueeze(1), g.vo.unsqueeze(1),
                            g.vo_inv.unsqueeze(1), g.ffn_scale.unsqueeze(1))
