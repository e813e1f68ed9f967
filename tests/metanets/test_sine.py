"""Phase shifts of sine networks (metanets.sine), checked by running a real fitted SIREN in float64."""

from __future__ import annotations

import math

import pytest
import torch

from metanets import NetworkSpec, WeightSpace, symmetry
from metanets.sine import (
    DIGITS_SIREN_OMEGA_0,
    act_phase,
    compose_phase,
    identity_phase,
    inverse_phase,
    random_orbit_member,
    sample_phase,
)
from zoo_ingest.generators import siren

TOL = 1e-9  # float64


@pytest.fixture(scope="module")
def fitted():
    """Two SIRENs of the digits-siren zoo (shared init, fitted), as a float64 weight space."""
    runs = siren.train_block([0, 1], seed=0, options={"steps": 20})
    sds = [next(r.checkpoints).state_dict for r in runs]
    spec = NetworkSpec.from_state_dict(sds[0], activation="sine")
    return WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def outputs(ws: WeightSpace, omega_0: float = DIGITS_SIREN_OMEGA_0) -> torch.Tensor:
    """Run every network of `ws` on random coordinates, in float64: `(B, P)`."""
    coords = torch.rand(200, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    out = []
    for sd in ws.to_state_dicts():
        model = siren.build_siren(omega_0=omega_0).double()
        model.load_state_dict(sd)
        with torch.no_grad():
            out.append(model(coords).squeeze(-1))
    return torch.stack(out)


def test_pi_and_two_pi_shifts_preserve_the_function(fitted):
    gen = torch.Generator().manual_seed(0)
    g = sample_phase(fitted.spec, fitted.batch_size, max_shift=2, generator=gen)
    assert any(bool((k % 2 == 1).any()) for k in g.shifts) and any(bool((k == 2).any()) for k in g.shifts)
    moved = act_phase(g, fitted, DIGITS_SIREN_OMEGA_0)
    assert not torch.allclose(moved.biases[0], fitted.biases[0])  # the weights did change
    torch.testing.assert_close(outputs(moved), outputs(fitted), rtol=0, atol=TOL)


def test_uncoupled_or_wrong_frequency_shifts_change_the_function(fitted):
    g = identity_phase(fitted.spec, fitted.batch_size)
    g.shifts[0][:, 3] = 1  # one pi shift in the first hidden layer
    base = outputs(fitted)
    assert (outputs(act_phase(g, fitted, DIGITS_SIREN_OMEGA_0, couple=False)) - base).abs().max() > 1e-3
    # omega_0 = 20: a shift of 1.5 pi (10 or 30/k would be odd multiples of pi, hence symmetries)
    assert (outputs(act_phase(g, fitted, 20.0)) - base).abs().max() > 1e-3


def test_full_orbit_move_preserves_the_function(fitted):
    moved = random_orbit_member(fitted, DIGITS_SIREN_OMEGA_0, torch.Generator().manual_seed(1))
    assert not torch.allclose(moved.weights[1], fitted.weights[1])
    torch.testing.assert_close(outputs(moved), outputs(fitted), rtol=0, atol=TOL)


def test_phase_group_axioms(fitted):
    gen = torch.Generator().manual_seed(2)
    g, h = (sample_phase(fitted.spec, fitted.batch_size, 3, gen) for _ in range(2))
    both = act_phase(compose_phase(g, h), fitted, DIGITS_SIREN_OMEGA_0)
    twice = act_phase(g, act_phase(h, fitted, DIGITS_SIREN_OMEGA_0), DIGITS_SIREN_OMEGA_0)
    for a, b in zip(both.weights + both.biases, twice.weights + twice.biases):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)
    back = act_phase(inverse_phase(g), act_phase(g, fitted, DIGITS_SIREN_OMEGA_0), DIGITS_SIREN_OMEGA_0)
    for a, b in zip(back.weights + back.biases, fitted.weights + fitted.biases):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_phase_shifts_reach_beyond_permutations_and_signs(fitted):
    """A pi shift moves a bias by pi / omega_0, which no permutation or sign flip can do."""
    g = identity_phase(fitted.spec, fitted.batch_size)
    g.shifts[1][:, 0] = 1
    moved = act_phase(g, fitted, DIGITS_SIREN_OMEGA_0)
    before = set(fitted.biases[1][0, 0].abs().tolist())
    assert moved.biases[1][0, 0, 0].abs().item() not in before
    assert math.isclose(float(moved.biases[1][0, 0, 0] - fitted.biases[1][0, 0, 0]), math.pi / 30.0)


def test_channels_share_the_shift(fitted):
    wide = WeightSpace(fitted.spec, tuple(torch.cat([w, 2 * w], 1) for w in fitted.weights),
                       tuple(torch.cat([b, 2 * b], 1) for b in fitted.biases))
    g = sample_phase(fitted.spec, fitted.batch_size, generator=torch.Generator().manual_seed(4))
    moved = act_phase(g, wide, DIGITS_SIREN_OMEGA_0)
    one = act_phase(g, fitted, DIGITS_SIREN_OMEGA_0)
    torch.testing.assert_close(moved.weights[1][:, :1], one.weights[1], rtol=0, atol=0)
    torch.testing.assert_close(moved.weights[1][:, 1:], 2 * one.weights[1], rtol=0, atol=0)


def test_bad_phase_arguments(fitted):
    with pytest.raises(ValueError, match="omega_0 must be positive"):
        act_phase(identity_phase(fitted.spec, fitted.batch_size), fitted, 0.0)
    with pytest.raises(ValueError, match="batch 3 != weight-space batch 2"):
        act_phase(identity_phase(fitted.spec, 3), fitted, 30.0)
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        sample_phase(fitted.spec, 2, max_shift=-1)
    assert symmetry.identity(fitted.spec, 2).batch_size == 2


def test_phase_canonical_form_is_one_point_per_phase_orbit(fitted):
    from metanets.sine import canonicalize_phase

    canon = canonicalize_phase(fitted, DIGITS_SIREN_OMEGA_0)
    half = math.pi / (2 * DIGITS_SIREN_OMEGA_0)
    assert all(float(b.abs().max()) <= half + 1e-12 for b in canon.biases[:-1])
    torch.testing.assert_close(outputs(canon), outputs(fitted), rtol=0, atol=TOL)
    g = sample_phase(fitted.spec, fitted.batch_size, 3, torch.Generator().manual_seed(5))
    again = canonicalize_phase(act_phase(g, fitted, DIGITS_SIREN_OMEGA_0), DIGITS_SIREN_OMEGA_0)
    for a, b in zip(again.weights + again.biases, canon.weights + canon.biases):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_phase_canonical_form_commutes_with_permutations_and_signs(fitted):
    from metanets.sine import canonicalize_phase

    s = symmetry.sample(fitted.spec, fitted.batch_size, scale=None, generator=torch.Generator().manual_seed(6))
    left = canonicalize_phase(symmetry.act(s, fitted), DIGITS_SIREN_OMEGA_0)
    right = symmetry.act(s, canonicalize_phase(fitted, DIGITS_SIREN_OMEGA_0))
    for a, b in zip(left.weights + left.biases, right.weights + right.biases):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def test_phase_canonical_model_is_invariant_to_the_whole_discrete_group(fitted):
    from metanets import build_model

    torch.manual_seed(0)
    lifted = build_model("monomial_nfn_phase", fitted.spec, out_dim=10).double().eval()
    plain = lifted.model
    assert lifted.invariant_to == "perm_sign_phase" and plain.invariant_to == "perm_sign"
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        base, plain_base = lifted(fitted), plain(fitted)
        for _ in range(3):
            moved = random_orbit_member(fitted, DIGITS_SIREN_OMEGA_0, gen, max_shift=2)
            torch.testing.assert_close(lifted(moved), base, rtol=0, atol=TOL)
        signs_only = symmetry.act(symmetry.sample(fitted.spec, fitted.batch_size, scale=None, generator=gen), fitted)
        torch.testing.assert_close(plain(signs_only), plain_base, rtol=0, atol=TOL)
        # the backbone alone is not invariant to phase shifts: the canonical form is what makes it so
        assert (plain(moved) - plain_base).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs sine networks"):
        from dataclasses import replace

        from metanets.spec import PERM_SIGN

        build_model("monomial_nfn_phase", replace(fitted.spec, activation="tanh", group=PERM_SIGN))
