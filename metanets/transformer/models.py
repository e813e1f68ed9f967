"""Transformer metanetworks: `transformer_nfn` and `transformer_nfn_quasi` (registered in metanets.registry).

Both map a one-channel TransformerWeightSpace (B, 1, ...) to (B, out_dim) and are invariant to the spec's
whole group (`spec.group`, e.g. transformer_perm_scale): exactly for `transformer_nfn` and for the quasi
model with `alpha_mode="shared"` (the head's GL-invariant products remove a shared alpha, DESIGN.md
fact 1), approximately (measured) with `alpha_mode="per_channel"`.
"""

from __future__ import annotations

from torch import nn

from metanets.layers.common import mlp
from metanets.metanetwork import Metanetwork
from metanets.registry import register
from metanets.spec import SpecError
from metanets.transformer.layers import TransformerGate, TransformerNFNLayer
from metanets.transformer.pool import TransformerInvariantPool
from metanets.transformer.quasi import TransformerQuasi
from metanets.transformer.spec import TransformerSpec

MODELS = ("transformer_nfn", "transformer_nfn_quasi")


def _require_transformer(spec, name: str) -> None:
    if not isinstance(spec, TransformerSpec):
        raise SpecError(
            f"{name} reads transformer encoders; this spec ({getattr(spec, 'arch_id', spec)}) is a Linear/Conv2d "
            "chain: use statnet, np, hnp or the monomial_nfn models"
        )


@register("transformer_nfn", kind="transformer")
def transformer_nfn(spec, out_dim=1, hidden=16, num_layers=3, head_hidden=64, pool_channels=2,
                    name="transformer_nfn") -> Metanetwork:
    """`num_layers` TransformerNFNLayers (gated between them) -> invariant pool -> MLP."""
    _require_transformer(spec, name)
    mods: list[nn.Module] = []
    c = 1
    for k in range(num_layers):
        mods.append(TransformerNFNLayer(spec, c, hidden))
        if k < num_layers - 1:
            mods.append(TransformerGate(spec, hidden))
        c = hidden
    pool = TransformerInvariantPool(spec, hidden, pool_channels)
    return Metanetwork(name, spec, nn.Sequential(*mods), pool, mlp(pool.out_dim, head_hidden, out_dim), spec.group,
                       True)


@register("transformer_nfn_quasi", kind="transformer")
def transformer_nfn_quasi(spec, out_dim=1, hidden=16, num_layers=3, head_hidden=64, pool_channels=2, eps=None,
                          alpha_mode="per_channel", alpha_hidden=16) -> Metanetwork:
    """transformer_nfn with alpha(theta) . beta(theta) before the pool; eps defaults to 0.5 / d_h."""
    model = transformer_nfn(spec, out_dim, hidden, num_layers, head_hidden, pool_channels,
                            name="transformer_nfn_quasi")
    model.quasi = TransformerQuasi(spec, hidden, eps, alpha_mode, alpha_hidden)
    model.invariance_exact = alpha_mode == "shared"
    return model
