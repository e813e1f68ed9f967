"""Metanetwork builders for Linear/Conv2d chains (`NetworkSpec`), registered in `metanets.registry`.

Every model maps a one-channel WeightSpace (B, 1, ...) to (B, out_dim) and states the group its
output is invariant to (`invariant_to`) and whether that invariance is exact (`invariance_exact`).
Build them with `metanets.build_model(name, spec, **kwargs)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanets.canonical import Canonicalize
from metanets.layers.common import TensorRMSNorm, WSActivation, mlp
from metanets.layers.monomial import MonomialInvariantPool, MonomialLinear
from metanets.layers.np_layers import NPLinear, np_pool, np_pool_width
from metanets.layers.quasi import QuasiScale
from metanets.layers.quasi_feature import FeatureAlpha, FeatureQuasiLayer
from metanets.layers.siren_quasi import SirenAlpha, SirenQuasiLayer, require_sign_group
from metanets.layers.stats import num_stat_features, weight_stats
from metanets.metanetwork import Metanetwork
from metanets.registry import BUILDERS, build_model, model_names, register
from metanets.sine import DIGITS_SIREN_OMEGA_0, SineInvariantPool, num_sine_invariant_stats, phase_canonical_builder
from metanets.spec import PERM, PERM_SCALE, PERM_SIGN
from metanets.weight_space import WeightSpace

__all__ = ["BUILDERS", "Metanetwork", "build_model", "model_names"]  # the old home of these names
ALPHA_SOURCES = ("input", "feature")


class _StatPool(nn.Module):
    def forward(self, ws: WeightSpace) -> torch.Tensor:
        return weight_stats(ws)


class _NPPool(nn.Module):
    def __init__(self, hnp: bool):
        super().__init__()
        self.hnp = hnp

    def forward(self, ws: WeightSpace) -> torch.Tensor:
        return np_pool(ws, self.hnp)


def _stack(make_layer, act: str, hidden: int, num_layers: int) -> list[nn.Module]:
    mods: list[nn.Module] = []
    c = 1
    for k in range(num_layers):
        mods.append(make_layer(c, hidden))
        if k < num_layers - 1:
            mods.append(WSActivation(act))
        c = hidden
    return mods


def _canon_prefix(canonical: bool) -> list[nn.Module]:
    return [Canonicalize()] if canonical else []


STANDARDIZE_EPS = 1e-10  # BatchNorm's default 1e-5 would swamp features whose zoo-wide variance is ~1e-6


def _head(d_in: int, hidden: int, out_dim: int, depth: int = 2, standardize: bool = False) -> nn.Module:
    """The MLP head; with `standardize`, first a BatchNorm without affine over the d_in pooled features.

    The pooled features are invariant to the model's group, so standardising them (by batch statistics in
    training, by the running means and variances of the training split in eval mode) is a fixed function of
    invariants at evaluation: the model keeps exactly the invariance it claims. It matters on zoos whose
    networks all sit near one point (the shared-init INR zoo: statistics vary by std <= 0.009 against means up
    to 0.7), where the head would otherwise see the signal far below the scale of its inputs.
    """
    head = mlp(d_in, hidden, out_dim, depth)
    if not standardize:
        return head
    return nn.Sequential(Standardize(d_in), *head)


class Standardize(nn.BatchNorm1d):
    """BatchNorm1d without affine (eps `STANDARDIZE_EPS`) over (B, D) features. A training batch of one
    network, which has no batch variance, is standardised by the running statistics instead of failing."""

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=STANDARDIZE_EPS, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0,
                                            self.eps)
        return super().forward(x)


def _statnet(spec, out_dim=1, hidden=64, depth=2, canonical=False, standardize=False):
    head = _head(num_stat_features(spec.num_layers), hidden, out_dim, depth, standardize)
    body = nn.Sequential(*_canon_prefix(canonical))
    # the statistics are permutation invariant; on the canonical form that makes them invariant to the group
    group = spec.group if canonical else PERM
    return Metanetwork("statnet_canon" if canonical else "statnet", spec, body, _StatPool(), head, group, True)


def _np_family(hnp: bool, canonical: bool = False):
    name = ("hnp" if hnp else "np") + ("_canon" if canonical else "")

    def build(spec, out_dim=1, hidden=16, num_layers=3, head_hidden=128, standardize=False):
        layers = _stack(lambda a, b: NPLinear(spec, a, b, hnp=hnp), "relu", hidden, num_layers)
        body = nn.Sequential(*_canon_prefix(canonical), *layers)
        head = _head(np_pool_width(spec, hidden, hnp), head_hidden, out_dim, standardize=standardize)
        return Metanetwork(name, spec, body, _NPPool(hnp), head, spec.group if canonical else PERM, True)

    build.__name__ = name
    return build


def _monomial_layers(spec, hidden, num_layers) -> tuple[list[nn.Module], str]:
    act = "relu" if spec.group == PERM_SCALE else "tanh"  # homogeneous for scales, odd for signs
    mods = _stack(lambda a, b: MonomialLinear(spec, a, b), act, hidden, num_layers)
    if spec.group == PERM_SIGN:  # sign groups allow per-tensor normalisation of the input (see TensorRMSNorm)
        mods = [TensorRMSNorm(), *mods]
    return mods, act


@register("monomial_nfn")
def _monomial(spec, out_dim=1, hidden=16, num_layers=3, head_hidden=128, name="monomial_nfn", standardize=False):
    mods, _ = _monomial_layers(spec, hidden, num_layers)
    pool = MonomialInvariantPool(spec, hidden)
    return Metanetwork(name, spec, nn.Sequential(*mods), pool,
                       _head(pool.out_dim, head_hidden, out_dim, standardize=standardize), spec.group, True)


@register("monomial_nfn_large")
def _monomial_large(spec, out_dim=1, hidden=16, width_factor=1.3, **kwargs):
    wide = int(math.ceil(hidden * width_factor))
    return _monomial(spec, out_dim, hidden=wide, name="monomial_nfn_large", **kwargs)


@register("monomial_nfn_quasi")
def _monomial_quasi(
    spec, out_dim=1, hidden=16, num_layers=3, head_hidden=128, eps=None, alpha_mode="per_channel",
    alpha_hidden=None, alpha_source="input", eps_max=None,
):
    """alpha_source="input": alpha from the input's statistics after the body, fixed eps (default 0.1, hidden 16).
    alpha_source="feature" (published): alpha from the feature entering the last layer, applied to its output,
    then ReLU; learnable eps initialised at `eps` (default 0.01) below `eps_max` (default 0.99), hidden 32."""
    if alpha_source not in ALPHA_SOURCES:
        raise ValueError(f"alpha_source must be one of {ALPHA_SOURCES}, got {alpha_source!r}")
    if alpha_source == "input":
        if eps_max is not None:
            raise ValueError("eps_max bounds the learnable eps of alpha_source='feature'; the input alpha's eps is "
                             "fixed (pass eps)")
        model = _monomial(spec, out_dim, hidden, num_layers, head_hidden, name="monomial_nfn_quasi")
        model.quasi = QuasiScale(spec, hidden, 0.1 if eps is None else eps, alpha_mode,
                                 16 if alpha_hidden is None else alpha_hidden)
    else:
        alpha = FeatureAlpha(spec, 1 if num_layers == 1 else hidden, hidden, 0.01 if eps is None else eps,
                             alpha_mode, 32 if alpha_hidden is None else alpha_hidden,
                             0.99 if eps_max is None else eps_max)
        mods, _ = _monomial_layers(spec, hidden, num_layers)
        pool = MonomialInvariantPool(spec, hidden)
        model = Metanetwork("monomial_nfn_quasi", spec, nn.Sequential(*mods[:-1]), pool,
                            mlp(pool.out_dim, head_hidden, out_dim), spec.group, True,
                            quasi=FeatureQuasiLayer(mods[-1], alpha))
    # a shared alpha is removed exactly by the invariant head (DESIGN.md fact 1); per-channel is not
    model.invariance_exact = alpha_mode == "shared"
    return model


@register("monomial_nfn_siren_quasi")
def _monomial_siren_quasi(spec, out_dim=1, hidden=16, num_layers=3, head_hidden=128, s=0.1, alpha_hidden=32,
                          standardize=False):
    """APPROXIMATE: the authors' SIREN quasi variant as published (metanets.layers.siren_quasi): monomial_nfn on
    the sign group whose last layer's output is rescaled per channel by alpha = 1 + s sin(.), s learnable and
    unclamped, alpha not permuted with the neurons. Claims perm_sign, not exactly: the audit measures it.
    With s = 0 it is monomial_nfn (exactly invariant to perm_sign)."""
    require_sign_group(spec)
    mods, _ = _monomial_layers(spec, hidden, num_layers)
    pool = MonomialInvariantPool(spec, hidden)
    alpha = SirenAlpha(spec, 1 if num_layers == 1 else hidden, hidden, s, alpha_hidden)
    return Metanetwork("monomial_nfn_siren_quasi", spec, nn.Sequential(*mods[:-1]), pool,
                       _head(pool.out_dim, head_hidden, out_dim, standardize=standardize), spec.group, False,
                       quasi=SirenQuasiLayer(mods[-1], alpha))


@register("statnet_sine")
def _statnet_sine(spec, out_dim=1, hidden=64, depth=2, standardize=True, omega_0=DIGITS_SIREN_OMEGA_0):
    """STATNet over per-unit quantities that the whole discrete sine group leaves unchanged
    (`metanets.sine.sine_invariant_stats`): exactly invariant to permutations x signs x pi phase shifts.
    Standardised by default: on a shared-init zoo these features vary by a tiny fraction of their size."""
    if spec.activation != "sine":
        raise ValueError(f"statnet_sine reads sine networks, got {spec.activation!r} ones")
    head = _head(num_sine_invariant_stats(spec), hidden, out_dim, depth, standardize)
    return Metanetwork("statnet_sine", spec, nn.Sequential(), SineInvariantPool(omega_0), head, "perm_sign_phase",
                       True)


register("statnet")(_statnet)
register("np")(_np_family(hnp=False))
register("hnp")(_np_family(hnp=True))
# the canonicalised models: a permutation-invariant model on canonicalize(theta) (DESIGN.md fact 4)
register("statnet_canon")(lambda spec, **kwargs: _statnet(spec, canonical=True, **kwargs))
register("np_canon")(_np_family(hnp=False, canonical=True))
register("hnp_canon")(_np_family(hnp=True, canonical=True))
# sine networks: monomial_nfn made invariant to pi phase shifts as well (metanets.sine)
register("monomial_nfn_phase")(phase_canonical_builder(_monomial))
# sine networks: the canonicalised models cover signs (canonicalize) but not pi phase shifts; these lift them
# to the whole discrete group: phase canonical form first, then the sign canonical form (the two commute)
register("statnet_canon_phase")(phase_canonical_builder(lambda spec, **kwargs: _statnet(spec, canonical=True,
                                                                                          **kwargs)))
register("np_canon_phase")(phase_canonical_builder(_np_family(hnp=False, canonical=True)))
register("hnp_canon_phase")(phase_canonical_builder(_np_family(hnp=True, canonical=True)))
