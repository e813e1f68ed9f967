"""INR models (float64): standardised heads keep each model's invariance in eval mode with running statistics;
the phase-lifted canonical models are invariant to the whole discrete sine group while the plain canonical ones
cover signs only; the authors' SIREN quasi variant is measured non-invariant by the audit, and exact at s = 0."""

from __future__ import annotations

import pytest
import torch

from eval.evaluate import invariance_audit
from metanets import NetworkSpec, WeightSpace, build_model, symmetry
from metanets.sine import DIGITS_SIREN_OMEGA_0, random_orbit_member
from metanets.testing import assert_invariant, invariance_error
from tests.metanets.reference_nets import MLP, Siren, SmallCNN, random_state_dicts

B = 6
TOL = 1e-9
NETS = {"siren": (Siren, "sine"), "cnn-relu": (lambda: SmallCNN("relu"), "relu"),
        "mlp-tanh": (lambda: MLP(activation="tanh"), "tanh")}
SMALL = {"hidden": 4, "head_hidden": 16}
STANDARDIZED = {"statnet": {}, "statnet_canon": {}, "np": SMALL, "hnp": SMALL, "np_canon": SMALL,
                "hnp_canon": SMALL, "monomial_nfn": SMALL}
PHASE_MODELS = {"statnet_canon_phase": "statnet_canon", "np_canon_phase": "np_canon",
                "hnp_canon_phase": "hnp_canon", "statnet_sine": None}


def _ws(net, seed=0, n=B):
    make, activation = NETS[net]
    sds = random_state_dicts(make, n, seed)
    spec = NetworkSpec.from_state_dict(sds[0], activation=activation)
    return spec, WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def _warm(model, spec, seed=1):
    """A few training-mode forwards so the running statistics are not their initial 0 / 1, then eval mode."""
    model.train()
    with torch.no_grad():
        for k in range(3):
            model(_ws(next(n for n in NETS if NETS[n][1] == spec.activation), seed + k)[1])
    return model.eval()


def _elements(spec, group, k=3, seed=0):
    scale = (1.0, 1e3) if group == "perm_scale" else None
    gen = torch.Generator().manual_seed(seed)
    return [symmetry.sample(spec, B, scale=scale, group=group, generator=gen) for _ in range(k)]


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("name", STANDARDIZED)
def test_standardized_head_keeps_the_claimed_invariance_in_eval_mode(name, net):
    spec, ws = _ws(net)
    torch.manual_seed(0)
    model = _warm(build_model(name, spec, out_dim=3, standardize=True, **STANDARDIZED[name]).double(), spec)
    bn = model.head[0]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and float(bn.running_var.max()) != 1.0
    assert model.invariance_exact
    assert_invariant(model, ws, _elements(spec, model.invariant_to))


def test_standardized_head_rescales_tiny_spreads():
    """Networks one shared point apart by ~1e-3 give pooled features whose spread the head sees at unit scale."""
    spec, ws = _ws("siren", n=1)
    base = ws.map(lambda t: t.expand(64, *t.shape[1:]).clone())
    noise = torch.Generator().manual_seed(0)
    zoo = base.map(lambda t: t + 1e-3 * torch.randn(t.shape, generator=noise, dtype=t.dtype))
    torch.manual_seed(0)
    model = build_model("statnet", spec, standardize=True).double().train()
    with torch.no_grad():
        z = model.head[0](model.pool(model.features(zoo)))
    assert 0.9 < float(z.std(dim=0).median()) < 1.1
    one = model.head[0](model.pool(model.features(zoo[:1])))  # a batch of one uses the running statistics
    assert torch.isfinite(one).all()


@pytest.mark.parametrize("name", PHASE_MODELS)
def test_phase_lifted_canonical_models_are_invariant_to_the_whole_sine_group(name):
    spec, ws = _ws("siren")
    kwargs = {} if name.startswith("statnet") else SMALL
    torch.manual_seed(0)
    lifted = _warm(build_model(name, spec, out_dim=3, standardize=True, **kwargs).double(), spec)
    assert lifted.invariant_to == "perm_sign_phase" and lifted.invariance_exact
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        base = lifted(ws)
        for _ in range(3):
            moved = random_orbit_member(ws, DIGITS_SIREN_OMEGA_0, gen, max_shift=2)
            torch.testing.assert_close(lifted(moved), base, rtol=0, atol=TOL * max(1.0, float(base.abs().max())))
        # a wrong action (a bias shift that is not a multiple of pi / omega_0) is seen: not a constant model
        wrong = WeightSpace(ws.spec, ws.weights, (ws.biases[0] + 0.3 / DIGITS_SIREN_OMEGA_0, *ws.biases[1:]))
        assert (lifted(wrong) - base).abs().max() > 1e-6
    if PHASE_MODELS[name] is None:
        return
    torch.manual_seed(0)
    plain = build_model(PHASE_MODELS[name], spec, out_dim=3, **kwargs).double().eval()
    assert plain.invariant_to == "perm_sign"  # signs (canonicalize) but not pi phase shifts
    with torch.no_grad():
        assert (plain(moved) - plain(ws)).abs().max() > 1e-6, "the plain canonical model is blind to phase"
    assert_invariant(plain, ws, _elements(spec, "perm_sign"))


def test_statnet_sine_reads_sine_networks_only():
    spec, _ = _ws("mlp-tanh")
    with pytest.raises(ValueError, match="sine"):
        build_model("statnet_sine", spec)
    spec, ws = _ws("siren")
    pool = build_model("statnet_sine", spec).pool
    assert pool(ws).shape == (B, 78)


def _batches(ws):
    return [(ws, torch.zeros(ws.batch_size))]


def test_siren_quasi_is_approximate_and_the_audit_finds_it():
    spec, ws = _ws("siren")
    torch.manual_seed(0)
    model = build_model("monomial_nfn_siren_quasi", spec, out_dim=3, hidden=4)
    assert model.invariant_to == "perm_sign" and not model.invariance_exact
    audit = invariance_audit(model, _batches(ws.float()), samples=3, max_networks=B)
    assert audit["max"] > 1e-6
    with torch.no_grad():
        alpha = model.quasi.alpha(model.body(ws.float()))
    assert max(float((a - 1).abs().max()) for a in alpha) > 1e-3, "alpha must be away from the identity"


def test_siren_quasi_with_s_zero_is_monomial_nfn_and_exactly_invariant():
    spec, ws = _ws("siren")
    torch.manual_seed(0)
    quasi = build_model("monomial_nfn_siren_quasi", spec, out_dim=3, hidden=4, s=0.0).double()
    torch.manual_seed(0)
    backbone = build_model("monomial_nfn", spec, out_dim=3, hidden=4).double()
    backbone.load_state_dict({k.replace("quasi.last.", f"body.{len(quasi.body)}."): v
                              for k, v in quasi.state_dict().items() if not k.startswith("quasi.alpha.")})
    with torch.no_grad():
        torch.testing.assert_close(quasi(ws), backbone(ws), rtol=1e-12, atol=1e-12)
    audit = invariance_audit(quasi, _batches(ws.float()), samples=3, max_networks=B)
    assert audit["max"] < 1e-9
    assert invariance_error(quasi, ws, _elements(spec, "perm_sign"))["max"] < 1e-9


def test_siren_quasi_s_is_learnable_and_unclamped():
    spec, ws = _ws("siren")
    model = build_model("monomial_nfn_siren_quasi", spec, out_dim=3, hidden=4)
    model(ws.float()).sum().backward()
    assert model.quasi.alpha.s.grad is not None and model.quasi.alpha.s.grad.abs().sum() > 0
    with torch.no_grad():
        model.quasi.alpha.s.fill_(3.0)  # as published: nothing keeps 1 + s sin(.) positive
        alpha = model.quasi.alpha(model.body(ws.float()))
    assert min(float(a.min()) for a in alpha) < 0


def test_siren_quasi_needs_a_sign_group():
    spec, _ = _ws("cnn-relu")
    with pytest.raises(ValueError, match="perm_sign"):
        build_model("monomial_nfn_siren_quasi", spec)
