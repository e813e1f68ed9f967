"""Every model is invariant to the group it claims (float64); the quasi model's facts 1 and 2 for both alpha
sources; the canonicalised models are invariant to the whole group."""

import math

import pytest
import torch

from metanets import NetworkSpec, SpecError, WeightSpace, build_model, symmetry
from metanets.models import model_names
from metanets.testing import assert_invariant, assert_quasi_error_grows_with_eps, invariance_error
from tests.metanets.reference_nets import MLP, Siren, SmallCNN, random_state_dicts

B = 4
NETS = {
    "cnn-relu": (lambda: SmallCNN("relu"), "relu"),
    "cnn-tanh": (lambda: SmallCNN("tanh"), "tanh"),
    "mlp-relu": (lambda: MLP(activation="relu"), "relu"),
    "mlp-tanh": (lambda: MLP(activation="tanh"), "tanh"),
    "siren": (Siren, "sine"),
}
FAMILIES = ["statnet", "np", "hnp", "monomial_nfn", "monomial_nfn_large", "monomial_nfn_quasi",
            "np_canon", "hnp_canon", "statnet_canon"]
CANON = {"np_canon": "np", "hnp_canon": "hnp", "statnet_canon": "statnet"}
# every builder with every option that changes its invariance: label -> (name, kwargs)
SMALL = {"hidden": 4, "head_hidden": 16}  # NP/HNP on the Small CNN have ~1M parameters at the defaults
VARIANTS = {name: (name, SMALL if name in ("np_canon", "hnp_canon") else {}) for name in FAMILIES}
VARIANTS["monomial_nfn_quasi"] = ("monomial_nfn_quasi", {"alpha_mode": "shared"})
VARIANTS["monomial_nfn_quasi_feature"] = ("monomial_nfn_quasi", {"alpha_mode": "shared", "alpha_source": "feature"})


def _ws(net, seed=0):
    make, activation = NETS[net]
    sds = random_state_dicts(make, B, seed)
    spec = NetworkSpec.from_state_dict(sds[0], activation=activation)
    return spec, WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def _elements(spec, group, scale, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [symmetry.sample(spec, B, scale=scale, group=group, generator=gen) for _ in range(k)]


def _build(name, spec, **kw):
    torch.manual_seed(0)
    return build_model(name, spec, **kw).double()


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_model_is_invariant_to_the_group_it_claims(variant, net):
    spec, ws = _ws(net)
    name, kwargs = VARIANTS[variant]
    if name == "monomial_nfn_quasi" and spec.group != "perm_scale":
        with pytest.raises(SpecError, match="perm_scale"):
            build_model(name, spec, **kwargs)
        return
    model = _build(name, spec, **kwargs)
    assert model.invariant_to in ("perm", spec.group) and model.invariance_exact
    if name in CANON:
        assert model.invariant_to == spec.group
    scale = (1.0, 1e4) if model.invariant_to == "perm_scale" else None
    assert_invariant(model, ws, _elements(spec, model.invariant_to, scale))


def test_every_model_name_is_covered():
    transformer_models = {"transformer_nfn", "transformer_nfn_quasi"}  # tests/metanets/test_transformer_models.py
    # sine networks only (tests/metanets/test_sine.py, tests/metanets/test_inr_models.py)
    sine_models = {"monomial_nfn_phase", "statnet_canon_phase", "np_canon_phase", "hnp_canon_phase",
                   "monomial_nfn_siren_quasi", "statnet_sine"}
    assert set(model_names()) == set(FAMILIES) | transformer_models | sine_models


@pytest.mark.parametrize("net", ["cnn-relu", "cnn-tanh", "siren"])
@pytest.mark.parametrize("name", CANON)
def test_canonical_models_gain_the_group_their_backbones_lack(name, net):
    """np/hnp/statnet are not invariant to scales or signs; on the canonical form they are. Under a wrong
    (uncoupled) action, which is not in the group, the canonical models are not invariant: they cannot pass
    by being constant."""
    spec, ws = _ws(net)
    scale = (1.0, 1e2) if spec.group == "perm_scale" else None
    elements = _elements(spec, spec.group, scale)
    kwargs = {} if name == "statnet_canon" else SMALL
    assert invariance_error(_build(CANON[name], spec, **kwargs), ws, elements)["max"] > 1e-6
    model = _build(name, spec, **kwargs)
    assert_invariant(model, ws, elements)
    g, h = _elements(spec, spec.group, scale, k=2, seed=5)
    wrong = [lambda x: symmetry.act_rows_cols(g, h, x)]
    assert invariance_error(model, ws, wrong)["max"] > 1e-6


@pytest.mark.parametrize("name", ["statnet", "np", "hnp"])
def test_permutation_models_are_not_scale_invariant(name):
    spec, ws = _ws("cnn-relu")
    model = _build(name, spec)
    err = invariance_error(model, ws, _elements(spec, "perm_scale", (1.0, 1e2)))["max"]
    assert err > 1e-3


def test_monomial_sign_model_is_not_scale_invariant_on_relu_group():
    """The sign-group head (abs) does not remove positive scalings; a test that could fail does."""
    spec, ws = _ws("cnn-tanh")
    model = _build("monomial_nfn", spec)
    err = invariance_error(model, ws, _elements(spec, "perm_scale", (1.0, 1e2)))["max"]
    assert err > 1e-3


def test_shared_quasi_equals_its_backbone():
    """DESIGN.md fact 1: with one alpha for all channels the invariant output is the backbone's."""
    spec, ws = _ws("cnn-relu")
    quasi = _build("monomial_nfn_quasi", spec, alpha_mode="shared", eps=0.9)
    backbone = _build("monomial_nfn", spec)
    backbone.load_state_dict({k: v for k, v in quasi.state_dict().items() if not k.startswith("quasi.")})
    with torch.no_grad():
        out, ref = quasi(ws), backbone(ws)
        alpha = quasi.quasi.alpha(ws)
    assert max(float((a - 1).abs().max()) for a in alpha) > 0.05, "alpha must be far from identity"
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"alpha_mode": "shared"}, {"alpha_source": "feature"},
                                    {"alpha_source": "feature", "alpha_mode": "shared"}])
def test_quasi_scaling_folded_into_the_pool_is_the_same_function(kwargs, monkeypatch):
    """The forward pass folds the quasi scaling into the pool's channel normalisation
    (`Metanetwork.pooled`), never forming the scaled feature; it equals pooling the explicitly scaled
    feature (`features`), outputs and every parameter's gradient, in float64."""
    spec, ws = _ws("cnn-relu")
    model = _build("monomial_nfn_quasi", spec, eps=0.5, **kwargs)
    params = list(model.parameters())
    ref = model.head(model.pool(model.features(ws)))
    ref_grads = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
    import metanets.layers.quasi as quasi_input
    import metanets.layers.quasi_feature as quasi_feature

    def unfolded(*args):
        raise AssertionError("the forward pass formed the scaled feature")

    monkeypatch.setattr(quasi_input, "scale_hidden", unfolded)
    monkeypatch.setattr(quasi_feature, "scale_hidden", unfolded)
    out = model(ws)
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    size = max(float(g.abs().max()) for g in ref_grads if g is not None)
    for g, r in zip(grads, ref_grads):  # a shared alpha's own gradients are 0 up to rounding (fact 1)
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * size)


def test_per_channel_quasi_changes_output_and_its_invariance_error_grows_with_eps():
    """DESIGN.md fact 2: per-channel alpha changes the output; invariance is approximate and measured."""
    spec, ws = _ws("cnn-relu")
    elements = _elements(spec, "perm_scale", (1.0, 1e3), k=4)
    assert_quasi_error_grows_with_eps(
        lambda eps: _build("monomial_nfn_quasi", spec, alpha_mode="per_channel", eps=eps),
        _build("monomial_nfn", spec), ws, elements, (0.0, 0.01, 0.1, 0.5), min_change=1e-6,
    )


def test_shared_feature_quasi_equals_its_backbone():
    """DESIGN.md fact 1 for alpha_source="feature": the model's output is that of its own layers without alpha
    (body, last layer, ReLU, pool, head), although alpha is far from the identity."""
    spec, ws = _ws("cnn-relu")
    quasi = _build("monomial_nfn_quasi", spec, alpha_mode="shared", alpha_source="feature", eps=0.9)
    with torch.no_grad():
        feature = quasi.body(ws)
        alpha = quasi.quasi.alpha(feature)
        ref = quasi.head(quasi.pool(quasi.quasi.last(feature).map(torch.relu)))
        out = quasi(ws)
    assert max(float((a - 1).abs().max()) for a in alpha) > 0.05, "alpha must be far from identity"
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_per_channel_feature_quasi_changes_output_and_its_invariance_error_grows_with_eps():
    """DESIGN.md fact 2 for alpha_source="feature" (eps = 0 holds alpha at the identity: the backbone)."""
    spec, ws = _ws("cnn-relu")
    elements = _elements(spec, "perm_scale", (1.0, 1e3), k=4)

    def make(eps):
        return _build("monomial_nfn_quasi", spec, alpha_mode="per_channel", alpha_source="feature", eps=eps,
                      hidden=8)

    assert_quasi_error_grows_with_eps(make, make(0.0), ws, elements, (0.0, 0.01, 0.1, 0.5), min_change=1e-6)


def test_feature_alpha_eps_is_learnable_and_stays_in_the_group():
    spec, ws = _ws("cnn-relu")
    model = build_model("monomial_nfn_quasi", spec, alpha_source="feature")
    alpha = model.quasi.alpha
    torch.testing.assert_close(alpha.eps, torch.full_like(alpha.eps, 0.01))
    model(ws.float()).sum().backward()
    assert alpha.eps_param.grad is not None and alpha.eps_param.grad.abs().sum() > 0
    # near its initial value eps moves as fast as an unclamped eps would: d eps / d p = 1 - (eps/eps_max)^2
    p = alpha.eps_param.detach().clone().requires_grad_(True)
    (alpha.eps_max * torch.tanh(p / alpha.eps_max)).sum().backward()
    assert float(p.grad.min()) > 0.999
    with torch.no_grad():
        for far in (1e4, -1e4):  # the bound holds however far training pushes the parameter, either way
            alpha.eps_param.fill_(far)
            assert float(alpha.eps.abs().max()) < 1.0
            assert min(float(a.min()) for a in alpha(model.body(ws.float()))) > 0.0
    assert "eps_param" in dict(build_model("monomial_nfn_quasi", spec, alpha_source="feature", eps=0.0)
                               .quasi.alpha.named_buffers())


def test_quasi_parameter_overhead_on_small_cnn_zoo_is_at_most_6_percent():
    """Both alpha sources: input +3.83%, feature (published design) +2.87% over monomial_nfn (docs/metanets.md)."""
    spec, _ = _ws("cnn-relu")
    backbone = build_model("monomial_nfn", spec).num_params
    for source in ("input", "feature"):
        quasi = build_model("monomial_nfn_quasi", spec, alpha_source=source).num_params
        assert 0 < (quasi - backbone) / backbone <= 0.06
    large = build_model("monomial_nfn_large", spec).num_params
    assert (large - backbone) / backbone >= 0.5


def test_models_accept_float32_batches_and_give_out_dim():
    spec, ws = _ws("cnn-relu")
    for name, kwargs in VARIANTS.values():
        model = build_model(name, spec, out_dim=10, **kwargs)
        out = model(ws.float())
        assert out.shape == (B, 10) and torch.isfinite(out).all()
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_bad_input_errors():
    spec, ws = _ws("cnn-relu")
    with pytest.raises(ValueError, match="unknown model 'nope'.*monomial_nfn"):
        build_model("nope", spec)
    with pytest.raises(ValueError, match="hiddenn"):
        build_model("monomial_nfn", spec, hiddenn=3)
    model = build_model("monomial_nfn", spec).double()
    nan = ws.weights[2].clone()
    nan[1, 0, 0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"conv3.weight.*\[1\]"):
        model(WeightSpace(spec, ws.weights[:2] + (nan,) + ws.weights[3:], ws.biases))
    other_spec, other = _ws("mlp-relu")
    with pytest.raises(SpecError, match=spec.arch_id):
        model(other)
    with pytest.raises(ValueError, match="eps"):
        build_model("monomial_nfn_quasi", spec, eps=1.0)
    with pytest.raises(ValueError, match="alpha_mode"):
        build_model("monomial_nfn_quasi", spec, alpha_mode="per_layer")
    with pytest.raises(ValueError, match="alpha_source"):
        build_model("monomial_nfn_quasi", spec, alpha_source="output")
    with pytest.raises(ValueError, match="eps_max"):
        build_model("monomial_nfn_quasi", spec, alpha_source="feature", eps_max=1.0)
    with pytest.raises(ValueError, match="eps"):
        build_model("monomial_nfn_quasi", spec, alpha_source="feature", eps=0.99)
    with pytest.raises(ValueError, match="eps_max"):
        build_model("monomial_nfn_quasi", spec, eps_max=0.5)  # only the feature alpha's eps is learnable
    with pytest.raises(ValueError, match="hiddenn"):
        build_model("np_canon", spec, hiddenn=3)


@pytest.mark.parametrize("dead", [0.0, 1e-22])
@pytest.mark.parametrize("name, kwargs", [("monomial_nfn", {}), ("monomial_nfn_quasi", {}),
                                          ("monomial_nfn_quasi", {"alpha_source": "feature"}), ("np_canon", {}),
                                          ("hnp_canon", {}), ("statnet_canon", {})])
def test_gradients_stay_finite_with_a_dead_unit(name, kwargs, dead):
    """A hidden unit with zero incoming weights and bias (common in trained ReLU zoos), or weights decayed
    to ~1e-22, gives entries whose channel vector is (numerically) zero; their scale normalisation must not
    backpropagate NaN in float32."""
    sds = random_state_dicts(lambda: MLP(activation="relu"), B, 0)
    for sd in sds:
        sd["layers.0.weight"][2] = dead
        sd["layers.0.bias"][2] = dead
        sd["layers.1.weight"][:, 2] = dead
    spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
    ws = WeightSpace.from_state_dicts(sds, spec)
    torch.manual_seed(0)
    model = build_model(name, spec, **kwargs)
    model(ws).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_statistics_by_numpy_equal_those_by_torch_sort_and_their_gradients(dtype):
    """tensor_stats' numpy paths (the default on CPU: a sort without gradient, argpartition with) give the
    torch sort path's values exactly, and the same gradients (no ties in random data)."""
    from metanets.layers.stats import tensor_stats

    for n in (1, 2, 7, 144, 2304):
        x = torch.randn(6, n, dtype=dtype, generator=torch.Generator().manual_seed(n)).requires_grad_()
        fast, ref = tensor_stats(x, method="numpy"), tensor_stats(x, method="sort")
        torch.testing.assert_close(fast, ref, rtol=0, atol=0)
        torch.testing.assert_close(tensor_stats(x.detach(), method="numpy"), ref.detach(), rtol=0, atol=0)
        weights = torch.randn_like(ref)
        (g_fast,) = torch.autograd.grad((fast * weights).sum(), x)
        (g_ref,) = torch.autograd.grad((ref * weights).sum(), x)
        torch.testing.assert_close(g_fast, g_ref)
    with pytest.raises(ValueError, match="method must be one of"):
        tensor_stats(x, method="quickselect")
