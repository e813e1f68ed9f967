"""transformer_nfn and transformer_nfn_quasi: invariant to the group they claim (float64), the shared-alpha
control equals its backbone (DESIGN.md fact 1), the per-channel error is measured and grows with eps (fact 2)."""

import math

import pytest
import torch

from metanets import NetworkSpec, SpecError, TransformerSpec, TransformerWeightSpace, build_model, symmetry
from metanets.testing import assert_invariant, assert_quasi_error_grows_with_eps, invariance_error
from tests.metanets.reference_nets import SmallCNN
from tests.metanets.reference_transformer import DigitsStyle, PublicStyle, one_thread, random_state_dicts  # noqa: F401
from tests.metanets.transformer_actions import WRONG_ACTIONS

pytestmark = pytest.mark.usefixtures("one_thread")
B = 4
NETS = {
    "digits-1-layer": (lambda: DigitsStyle(1), "relu", 2),
    "digits-2-layers": (lambda: DigitsStyle(2), "relu", 2),
    "digits-tanh": (lambda: DigitsStyle(1, activation="tanh"), "tanh", 2),
    "public-gelu-bias": (lambda: PublicStyle(activation="gelu"), "gelu", 3),
}
SMALL = dict(hidden=6, num_layers=2, head_hidden=16)


def _ws(net, seed=0):
    make, activation, heads = NETS[net]
    sds = random_state_dicts(make, B, seed)
    spec = TransformerSpec.from_state_dict(sds[0], activation=activation, num_heads=heads)
    return spec, TransformerWeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def _elements(spec, scale, k=3, seed=0, group=None):
    gen = torch.Generator().manual_seed(seed)
    return [symmetry.sample(spec, B, scale=scale, group=group, generator=gen) for _ in range(k)]


def _build(name, spec, **kw):
    torch.manual_seed(0)
    return build_model(name, spec, **kw).double()


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("name, kwargs", [("transformer_nfn", {}), ("transformer_nfn_quasi", {"alpha_mode": "shared"})])
def test_model_is_invariant_to_the_group_it_claims(name, kwargs, net):
    spec, ws = _ws(net)
    model = _build(name, spec, **SMALL, **kwargs)
    assert model.invariant_to == spec.group and model.invariance_exact
    for scale in ((0.1, 10.0), (1.0, 1e4)):
        assert_invariant(model, ws, _elements(spec, scale, group=model.invariant_to))


def test_model_is_not_invariant_to_wrong_actions_and_reads_the_extras():
    spec, ws = _ws("digits-2-layers")
    model = _build("transformer_nfn", spec)
    g = _elements(spec, (0.2, 5.0), k=1)[0]
    for wrong in WRONG_ACTIONS.values():
        assert invariance_error(model, ws, [wrong(g)])["max"] > 1e-6
    moved = ws.replace(extras=tuple(t + 0.5 for t in ws.extras))  # position embedding, norms, classifier
    with torch.no_grad():
        assert float((model(moved) - model(ws)).abs().max()) > 1e-6


def test_shared_quasi_equals_its_backbone():
    """DESIGN.md fact 1: with one alpha for all channels the invariant output is the backbone's."""
    spec, ws = _ws("digits-2-layers")
    quasi = _build("transformer_nfn_quasi", spec, alpha_mode="shared", eps=0.12)
    backbone = _build("transformer_nfn", spec)
    backbone.load_state_dict({k: v for k, v in quasi.state_dict().items() if not k.startswith("quasi.")})
    with torch.no_grad():
        out, ref = quasi(ws), backbone(ws)
        alpha = quasi.quasi.alpha(ws)
        moved = float((quasi.features(ws).wq - backbone.features(ws).wq).abs().max())
    assert float((alpha["qk"] - torch.eye(spec.head_dim, dtype=torch.float64)).abs().max()) > 0.05
    assert moved > 1e-3, "alpha must change the features the head reads"
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_per_channel_quasi_changes_output_and_its_invariance_error_grows_with_eps():
    """DESIGN.md fact 2: per-channel alpha changes the output; invariance is approximate and measured."""
    spec, ws = _ws("digits-2-layers")
    elements = _elements(spec, (0.2, 5.0), k=4)
    assert_quasi_error_grows_with_eps(
        lambda eps: _build("transformer_nfn_quasi", spec, alpha_mode="per_channel", eps=eps),
        _build("transformer_nfn", spec), ws, elements, (0.0, 0.01, 0.05, 0.12), min_change=1e-9,
    )


def test_quasi_parameter_overhead_on_the_digits_transformer():
    spec, _ = _ws("digits-2-layers")
    backbone = build_model("transformer_nfn", spec).num_params
    for mode in ("per_channel", "shared"):
        quasi = build_model("transformer_nfn_quasi", spec, alpha_mode=mode).num_params
        assert 0 < (quasi - backbone) / backbone <= 0.05


@pytest.mark.parametrize("out_dim", [1, 10])
def test_models_take_float32_batches_and_give_out_dim(out_dim):
    spec, ws = _ws("digits-1-layer")
    for name in ("transformer_nfn", "transformer_nfn_quasi"):
        model = build_model(name, spec, out_dim=out_dim, **SMALL)
        out = model(ws.float())
        assert out.shape == (B, out_dim) and torch.isfinite(out).all()
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_quasi_model_trains_in_bf16():
    """bf16 (DeepSpeed's half precision): alpha's statistics and inverses are computed in float32."""
    spec, ws = _ws("digits-2-layers")
    model = build_model("transformer_nfn_quasi", spec, **SMALL).to(torch.bfloat16)
    out = model(ws.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad.float()).all() for p in model.parameters())


def test_bad_input_errors():
    spec, ws = _ws("digits-2-layers")
    cnn = NetworkSpec.from_state_dict(SmallCNN().state_dict(), activation="relu")
    with pytest.raises(SpecError, match="transformer_nfn reads transformer encoders"):
        build_model("transformer_nfn", cnn)
    with pytest.raises(SpecError, match="'monomial_nfn' reads Linear/Conv2d chains"):
        build_model("monomial_nfn", spec)
    model = _build("transformer_nfn", spec, **SMALL)
    nan = ws.wv.clone()
    nan[3, 0, 1, 1, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"layers\.1\.attn\.values\.weight: non-finite .* \[3\]"):
        model(ws.replace(wv=nan))
    _, other = _ws("digits-1-layer")
    with pytest.raises(SpecError, match=spec.arch_id):
        model(other)
    with pytest.raises(ValueError, match=r"eps \* d_h < 1"):
        build_model("transformer_nfn_quasi", spec, eps=0.2)
    with pytest.raises(ValueError, match="alpha_mode"):
        build_model("transformer_nfn_quasi", spec, alpha_mode="per_layer")


@pytest.mark.parametrize("dead", [0.0, 1e-22])
@pytest.mark.parametrize("name", ["transformer_nfn", "transformer_nfn_quasi"])
def test_gradients_stay_finite_with_a_dead_ffn_unit(name, dead):
    """A feed-forward unit with zero (or ~1e-22: decayed) fc1 row, bias and fc2 column gives pooled entries
    whose channel vector is (numerically) zero; their scale normalisation must not backpropagate NaN."""
    sds = random_state_dicts(lambda: DigitsStyle(1), B, 0)
    for sd in sds:
        sd["layers.0.fc1.weight"][3] = dead
        sd["layers.0.fc1.bias"][3] = dead
        sd["layers.0.fc2.weight"][:, 3] = dead
    spec = TransformerSpec.from_state_dict(sds[0], activation="relu", num_heads=2)
    ws = TransformerWeightSpace.from_state_dicts(sds, spec)
    torch.manual_seed(0)
    model = build_model(name, spec, **SMALL)
    model(ws).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
