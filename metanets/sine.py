"""Phase shifts: the part of a sine network's symmetry group that `metanets.symmetry` does not hold.

A sine unit computes sin(omega_0 * (w_j . x + b_j)). Since sin(z + k pi) = (-1)^k sin(z), shifting its
bias by k pi / omega_0 and multiplying its outgoing column in the next layer by (-1)^k preserves the
network's function, for every integer k (an even k is a 2 pi shift, with no sign). With permutations
and sign flips (`metanets.symmetry`, group `perm_sign`) these shifts generate the sine network's
discrete symmetry group. omega_0 is not in the weights (a zoo keeps it in its hparams: 30 for
digits-siren, `DIGITS_SIREN_OMEGA_0`), so every function here takes it.

The shifts act on hidden layers only (the output layer is linear). A weight space with C channels is
shifted with the same element in every channel. Elements are integers `(B, n_i)` per hidden layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metanets import symmetry
from metanets.spec import NetworkSpec
from metanets.weight_space import WeightSpace

DIGITS_SIREN_OMEGA_0 = 30.0


@dataclass(frozen=True)
class PhaseShift:
    """A batch of phase shifts: `shifts[i]` `(B, n_i)` int64, unit j of hidden layer i moves by k pi / omega_0."""

    shifts: tuple[torch.Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.shifts[0].shape[0] if self.shifts else 0


def identity_phase(spec: NetworkSpec, batch: int) -> PhaseShift:
    return PhaseShift(tuple(torch.zeros(batch, n, dtype=torch.long) for n in spec.hidden_sizes))


def sample_phase(spec: NetworkSpec, batch: int, max_shift: int = 1, generator: torch.Generator | None = None
                 ) -> PhaseShift:
    """Shifts k drawn uniformly from {-max_shift, ..., max_shift} for every hidden unit."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    return PhaseShift(tuple(torch.randint(-max_shift, max_shift + 1, (batch, n), generator=generator)
                            for n in spec.hidden_sizes))


def compose_phase(g: PhaseShift, h: PhaseShift) -> PhaseShift:
    """Shifts add: act_phase(compose_phase(g, h), ws) == act_phase(g, act_phase(h, ws))."""
    return PhaseShift(tuple(a + b for a, b in zip(g.shifts, h.shifts)))


def inverse_phase(g: PhaseShift) -> PhaseShift:
    return PhaseShift(tuple(-k for k in g.shifts))


def act_phase(g: PhaseShift, ws: WeightSpace, omega_0: float, *, couple: bool = True) -> WeightSpace:
    """b_i[j] += k_ij pi / omega_0 and W_{i+1}[:, j] *= (-1)^k_ij for every hidden layer i.

    `couple=False` leaves the outgoing columns alone: not a symmetry for odd k (the tests use it to show
    that the coupling is needed).
    """
    if omega_0 <= 0:
        raise ValueError(f"omega_0 must be positive, got {omega_0}")
    hidden = ws.spec.hidden_sizes
    if len(g.shifts) != len(hidden):
        raise ValueError(f"phase shift has {len(g.shifts)} hidden layers, the weight space {len(hidden)}")
    if hidden and g.batch_size != ws.batch_size:
        raise ValueError(f"phase shift batch {g.batch_size} != weight-space batch {ws.batch_size}")
    weights, biases = list(ws.weights), list(ws.biases)
    for i, k in enumerate(g.shifts):
        b = biases[i]
        biases[i] = b + (k.to(b.dtype) * (math.pi / omega_0))[:, None, :]
        if couple:
            w = weights[i + 1]
            sign = (1 - 2 * (k % 2)).to(w.dtype)  # (-1)^k, also for negative k
            weights[i + 1] = w * sign.reshape(sign.shape[0], 1, 1, sign.shape[1], *([1] * (w.ndim - 4)))
    return WeightSpace(ws.spec, tuple(weights), tuple(biases))


def random_orbit_member(ws: WeightSpace, omega_0: float, generator: torch.Generator | None = None,
                        max_shift: int = 1) -> WeightSpace:
    """Each network moved to a random member of its orbit: permutation, signs, then pi phase shifts."""
    g = symmetry.sample(ws.spec, ws.batch_size, scale=None, group="perm_sign", generator=generator,
                        dtype=ws.weights[0].dtype)
    return act_phase(sample_phase(ws.spec, ws.batch_size, max_shift, generator), symmetry.act(g, ws), omega_0)


def canonical_phase(ws: WeightSpace, omega_0: float) -> PhaseShift:
    """The shift that brings every hidden bias into [-pi / (2 omega_0), pi / (2 omega_0)]: k = -round(b omega_0 / pi).

    Ties round half to even, which is odd-symmetric, so the map commutes with sign flips and permutations.
    """
    return PhaseShift(tuple(-torch.round(b[:, 0] * (omega_0 / math.pi)).long() for b in ws.biases[:-1]))


def canonicalize_phase(ws: WeightSpace, omega_0: float) -> WeightSpace:
    """The canonical member of each network's phase orbit (DESIGN.md fact 4, for the pi phase part).

    `canonicalize_phase(act_phase(g, ws)) == canonicalize_phase(ws)` for every shift g, and for a permutation
    or sign element s, `canonicalize_phase(act(s, ws)) == act(s, canonicalize_phase(ws))`: a model invariant to
    permutations and signs, fed the canonical form, is invariant to the whole discrete group. One channel.
    """
    return act_phase(canonical_phase(ws, omega_0), ws, omega_0)


class PhaseCanonical(torch.nn.Module):
    """`model(canonicalize_phase(ws))`: lifts a permutation x sign invariant model to the phase shifts too."""

    def __init__(self, model: torch.nn.Module, omega_0: float = DIGITS_SIREN_OMEGA_0):
        super().__init__()
        self.model, self.omega_0 = model, float(omega_0)
        self.spec, self.name = model.spec, f"{model.name}_phase"
        self.invariant_to = "perm_sign_phase" if model.invariant_to == "perm_sign" else model.invariant_to
        self.invariance_exact = model.invariance_exact

    @property
    def num_params(self) -> int:
        return self.model.num_params

    @property
    def head(self) -> torch.nn.Module:
        return self.model.head

    @property
    def pool(self) -> torch.nn.Module:
        return self.model.pool

    def features(self, ws: WeightSpace) -> WeightSpace:
        return self.model.features(canonicalize_phase(ws, self.omega_0))

    def pooled(self, ws: WeightSpace) -> torch.Tensor:
        return self.model.pooled(canonicalize_phase(ws, self.omega_0))

    def forward(self, ws: WeightSpace) -> torch.Tensor:
        return self.model(canonicalize_phase(ws, self.omega_0))


def sine_invariant_stats(ws: WeightSpace, omega_0: float) -> torch.Tensor:
    """Per-network features of channel 0 invariant to permutations, signs and pi phase shifts of a sine MLP `(B, F)`.

    Hidden unit j with incoming row w, bias b: sign flips send (w, b) -> (-w, -b) and pi phase shifts send
    b -> b + pi / omega_0, while both only flip the signs of outgoing columns. So cos(2 omega_0 b) and |W_next|
    are invariant per unit; in the first layer, whose input axes are fixed, so are w w^T and w sin(2 omega_0 b)
    (both factors flip together); in later layers, whose rows are mixed by the previous layer's permutations
    and signs, the row's norm and largest |entry|. Each per-unit quantity is pooled over units by its 7
    statistics (`tensor_stats`: permutation invariant); the output bias is fixed by the whole group. Unlike the
    canonical forms (`canonicalize_phase`), these are continuous in the weights: a bias crossing the edge of
    the canonical interval does not jump.
    """
    from metanets.layers.stats import tensor_stats

    feats = []
    L = ws.spec.num_layers
    for i in range(L - 1):
        w, b = ws.weights[i][:, 0].flatten(2), ws.biases[i][:, 0]  # (B, n, m), (B, n)
        unit = [torch.cos(2 * omega_0 * b)]
        if i == 0:
            unit += [w[..., a] * w[..., c] for a in range(w.shape[-1]) for c in range(a, w.shape[-1])]
            unit += [w[..., a] * torch.sin(2 * omega_0 * b) for a in range(w.shape[-1])]
        else:
            unit += [w.norm(dim=-1), w.abs().amax(dim=-1)]
        feats += [tensor_stats(u) for u in unit]
        feats.append(tensor_stats(ws.weights[i + 1][:, 0].flatten(1).abs()))
    feats.append(ws.biases[L - 1][:, 0].flatten(1))
    return torch.cat(feats, dim=1)


def num_sine_invariant_stats(spec: NetworkSpec) -> int:
    n_in = spec.layers[0].n_in * spec.layers[0].kernel_size
    first = 1 + n_in * (n_in + 1) // 2 + n_in + 1
    return 7 * (first + 4 * (spec.num_layers - 2)) + spec.layers[-1].n_out


class SineInvariantPool(torch.nn.Module):
    """The pool of `statnet_sine`: `sine_invariant_stats` (no parameters)."""

    def __init__(self, omega_0: float = DIGITS_SIREN_OMEGA_0):
        super().__init__()
        self.omega_0 = float(omega_0)

    def forward(self, ws: WeightSpace) -> torch.Tensor:
        return sine_invariant_stats(ws, self.omega_0)


def phase_canonical_builder(build):
    """A model builder `build(spec, **kwargs)` made invariant to pi phase shifts (kwarg `omega_0`)."""

    def builder(spec: NetworkSpec, omega_0: float = DIGITS_SIREN_OMEGA_0, **kwargs) -> PhaseCanonical:
        if spec.activation != "sine":
            raise ValueError(f"phase canonicalisation needs sine networks, got {spec.activation!r} ones")
        return PhaseCanonical(build(spec, **kwargs), omega_0)

    return builder
