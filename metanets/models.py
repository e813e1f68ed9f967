"""Metanetwork builders: `build_model(name, spec, **kwargs)`.

Every model maps a one-channel WeightSpace (B, 1, ...) to (B, out_dim) and states the group its
output is invariant to (`invariant_to`) and whether that invariance is exact (`invariance_exact`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanets.layers.common import TensorRMSNorm, WSActivation, mlp
from metanets.layers.monomial import MonomialInvariantPool, MonomialLinear
from metanets.layers.np_layers import NPLinear, np_pool, np_pool_width
from metanets.layers.quasi import QuasiScale
from metanets.layers.stats import num_stat_features, weight_stats
from metanets.spec import PERM, PERM_SCALE, PERM_SIGN, NetworkSpec, SpecError
from metanets.weight_space import WeightSpace


class Metanetwork(nn.Module):
    """body (equivariant WeightSpace layers) -> optional quasi scaling -> invariant pooling -> MLP head."""

    def __init__(self, name, spec, body, pool, head, invariant_to, exact, quasi=None):
        super().__init__()
        self.name, self.spec = name, spec
        self.body, self.pool, self.head, self.quasi = body, pool, head, quasi
        self.invariant_to, self.invariance_exact = invariant_to, exact

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_input(self, ws: WeightSpace) -> WeightSpace:
        if ws.spec != self.spec:
            raise SpecError(
                f"{self.name} was built for architecture {self.spec.arch_id} "
                f"({self.spec.activation}, {self.spec.num_params} parameters); got {ws.spec.arch_id} "
                f"({ws.spec.activation}, {ws.spec.num_params} parameters)"
            )
        return ws.validate(channels=1).check_finite()

    def features(self, ws: WeightSpace) -> WeightSpace:
        """The equivariant (or quasi-equivariant) feature before pooling."""
        feat = self.body(ws)
        return self.quasi(feat, ws) if self.quasi is not None else feat

    def forward(self, ws: WeightSpace) -> torch.Tensor:
        ws = self.check_input(ws)
        return self.head(self.pool(self.features(ws)))


class _StatPool(nn.Module):
    def forward(self, ws: WeightSpace) -> torch.Tensor:
        return weight_stats(ws)


class _NPPool(nn.Module):
    def __init__(self, hnp: bool):
        super().__init__()
        self.hnp = hnp

    def forward(self, ws: WeightSpace) -> torch.Tensor:
        return np_pool(ws, self.hnp)


def _stack(make_layer, act: str, hidden: int, num_layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    c = 1
    for k in range(num_layers):
        mods.append(make_layer(c, hidden))
        if k < num_layers - 1:
            mods.append(WSActivation(act))
        c = hidden
    return nn.Sequential(*mods)


def _statnet(spec, out_dim=1, hidden=64, depth=2):
    head = mlp(num_stat_features(spec.num_layers), hidden, out_dim, depth)
    return Metanetwork("statnet", spec, nn.Identity(), _StatPool(), head, PERM, True)


def _np_family(hnp: bool):
    def build(spec, out_dim=1, hidden=16, num_layers=3, head_hidden=128):
        body = _stack(lambda a, b: NPLinear(spec, a, b, hnp=hnp), "relu", hidden, num_layers)
        head = mlp(np_pool_width(spec, hidden, hnp), head_hidden, out_dim)
        return Metanetwork("hnp" if hnp else "np", spec, body, _NPPool(hnp), head, PERM, True)

    return build


def _monomial(spec, out_dim=1, hidden=16, num_layers=3, head_hidden=128, name="monomial_nfn"):
    act = "relu" if spec.group == PERM_SCALE else "tanh"  # homogeneous for scales, odd for signs
    body = _stack(lambda a, b: MonomialLinear(spec, a, b), act, hidden, num_layers)
    if spec.group == PERM_SIGN:  # sign groups allow per-tensor normalisation of the input (see TensorRMSNorm)
        body = nn.Sequential(TensorRMSNorm(), *body)
    pool = MonomialInvariantPool(spec, hidden)
    return Metanetwork(name, spec, body, pool, mlp(pool.out_dim, head_hidden, out_dim), spec.group, True)


def _monomial_large(spec, out_dim=1, hidden=16, width_factor=1.3, **kwargs):
    wide = int(math.ceil(hidden * width_factor))
    return _monomial(spec, out_dim, hidden=wide, name="monomial_nfn_large", **kwargs)


def _monomial_quasi(
    spec, out_dim=1, hidden=16, num_layers=3, head_hidden=128, eps=0.1, alpha_mode="per_channel",
    alpha_hidden=16,
):
    model = _monomial(spec, out_dim, hidden, num_layers, head_hidden, name="monomial_nfn_quasi")
    model.quasi = QuasiScale(spec, hidden, eps, alpha_mode, alpha_hidden)
    # a shared alpha is removed exactly by the invariant head (DESIGN.md fact 1); per-channel is not
    model.invariance_exact = alpha_mode == "shared"
    return model


BUILDERS = {
    "statnet": _statnet,
    "np": _np_family(hnp=False),
    "hnp": _np_family(hnp=True),
    "monomial_nfn": _monomial,
    "monomial_nfn_large": _monomial_large,
    "monomial_nfn_quasi": _monomial_quasi,
}


from metanets.transformer.models import MODELS as TRANSFORMER_MODELS  # noqa: E402  (it imports Metanetwork)
from metanets.transformer.models import transformer_nfn, transformer_nfn_quasi  # noqa: E402

BUILDERS.update({"transformer_nfn": transformer_nfn, "transformer_nfn_quasi": transformer_nfn_quasi})

from metanets.sine import phase_canonical_builder  # noqa: E402  (sine networks: pi phase shifts too)

BUILDERS["monomial_nfn_phase"] = phase_canonical_builder(_monomial)


def model_names() -> list[str]:
    return sorted(BUILDERS)


def build_model(name: str, spec: NetworkSpec, **kwargs) -> Metanetwork:
    """Build metanetwork `name` for networks of `spec`; kwargs are the builder's hyper-parameters."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    if getattr(spec, "type", None) == "transformer" and name not in TRANSFORMER_MODELS:
        raise SpecError(f"model {name!r} reads Linear/Conv2d chains; for transformer encoders use "
                        f"{', '.join(TRANSFORMER_MODELS)}")
    try:
        return BUILDERS[name](spec, **kwargs)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: {exc}") from exc
