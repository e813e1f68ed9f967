"""Transformer-NFN layers are equivariant to the transformer group (float64) and fail under wrong actions;
the quasi layer is quasi-equivariant and its alpha stays in the group."""

import pytest
import torch

from metanets import TransformerSpec, TransformerWeightSpace, symmetry
from metanets.layers.stats import tensor_stats
from metanets.testing import assert_equivariant, equivariance_error, max_abs_diff
from metanets.transformer.layers import TransformerGate, TransformerNFNLayer
from metanets.transformer.quasi import TransformerAlpha, TransformerQuasi
from metanets.transformer.symmetry import apply_continuous
from tests.metanets.reference_transformer import DigitsStyle, PublicStyle, one_thread, random_state_dicts  # noqa: F401
from tests.metanets.transformer_actions import WRONG_ACTIONS

pytestmark = pytest.mark.usefixtures("one_thread")
B, C = 3, 4
NETS = {
    "digits-relu": (lambda: DigitsStyle(2), "relu", 2),
    "digits-tanh": (lambda: DigitsStyle(1, activation="tanh"), "tanh", 2),
    "public-bias": (PublicStyle, "relu", 3),
}


def _spec(net):
    make, activation, heads = NETS[net]
    return TransformerSpec.from_state_dict(random_state_dicts(make, 1)[0], activation=activation, num_heads=heads)


def _feature(spec, channels=C, seed=0):
    """A random C-channel feature on the spec's weight space (every tensor, biases included, non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    ws = TransformerWeightSpace.from_flat(torch.zeros(B, spec.num_params, dtype=torch.float64), spec)
    return ws.map(lambda t: torch.randn(B, channels, *t.shape[2:], generator=gen, dtype=torch.float64))


LAYERS = {
    "nfn": lambda spec: TransformerNFNLayer(spec, C, 5),
    "gate": lambda spec: TransformerGate(spec, C),
}


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("layer_name", LAYERS)
def test_layer_is_equivariant(layer_name, net):
    spec = _spec(net)
    layer, ws = LAYERS[layer_name](spec), _feature(spec)
    gen = torch.Generator().manual_seed(7)
    for scale in ((1.0, 1.0), (0.2, 5.0), (1.0, 1e3)):
        assert_equivariant(layer, ws, symmetry.sample(spec, B, scale=scale, generator=gen))


# The gate couples heads' Q with K and V with O (through its invariants) but treats the FFN entrywise,
# so it is equivariant to the wrong FFN action by design (ReLU(s x) = s ReLU(x)); the NFN layer sees all.
WRONG = {"nfn": list(WRONG_ACTIONS), "gate": ["keys_with_A", "out_with_B", "queries_only_heads"]}


@pytest.mark.parametrize("net", ["digits-relu", "public-bias"])
@pytest.mark.parametrize("layer_name", LAYERS)
def test_layer_fails_under_wrong_actions(layer_name, net):
    spec = _spec(net)
    layer, ws = LAYERS[layer_name](spec), _feature(spec)
    g = symmetry.sample(spec, B, scale=(0.2, 5.0), generator=torch.Generator().manual_seed(8))
    for wrong in WRONG[layer_name]:
        action = WRONG_ACTIONS[wrong](g)
        err, tol = equivariance_error(layer, ws, action, action)
        assert err > 1e3 * tol, f"{layer_name} looks equivariant to {wrong} (err {err:.2e})"


def test_gate_ignores_the_ffn_coupling_by_design():
    spec = _spec("digits-relu")
    g = symmetry.sample(spec, B, scale=(0.2, 5.0), generator=torch.Generator().manual_seed(9))
    action = WRONG_ACTIONS["ffn_out_times_s"](g)
    err, tol = equivariance_error(TransformerGate(spec, C), _feature(spec), action, action)
    assert err <= tol


@pytest.mark.parametrize("alpha_mode", ["shared", "per_channel"])
def test_quasi_layer_is_quasi_equivariant(alpha_mode):
    """F = alpha . beta satisfies F(g theta) = g' F(theta) with g' = alpha(g theta) g alpha(theta)^-1."""
    spec = _spec("digits-relu")
    feat, theta = _feature(spec), _feature(spec, channels=1, seed=1)
    beta = TransformerNFNLayer(spec, C, C).double()
    quasi = TransformerQuasi(spec, C, eps=0.1, alpha_mode=alpha_mode).double()
    g = symmetry.sample(spec, B, scale=(0.2, 5.0), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        lhs = quasi(beta(symmetry.act(g, feat)), symmetry.act(g, theta))
        a_theta, a_g_theta = quasi.alpha(theta), quasi.alpha(symmetry.act(g, theta))
        undo = dict(qk=a_theta["qk_inv"], qk_inv=a_theta["qk"], vo=a_theta["vo_inv"], vo_inv=a_theta["vo"],
                    ffn_scale=1 / a_theta["ffn_scale"])
        rhs = apply_continuous(symmetry.act(g, apply_continuous(quasi(beta(feat), theta), **undo)), **a_g_theta)
    assert max_abs_diff(lhs, rhs) < 1e-9 * max(1.0, max(float(t.abs().max()) for _, t in rhs.tensors()))
    # alpha really depends on theta, and has one element per channel (or one for all)
    assert float((a_theta["qk"] - a_g_theta["qk"]).abs().max()) > 1e-6
    assert a_theta["qk"].shape[1] == (C if alpha_mode == "per_channel" else 1)


def test_alpha_stays_in_the_group_and_eps_is_bounded():
    spec = _spec("digits-relu")  # d_h = 8: eps * d_h < 1 needs eps < 0.125
    theta = _feature(spec, channels=1, seed=2).map(lambda t: 100 * t)
    alpha = TransformerAlpha(spec, C, eps=0.124, alpha_mode="per_channel").double()
    with torch.no_grad():
        out = alpha(theta)
    eye = torch.eye(spec.head_dim, dtype=torch.float64)
    for m, m_inv in ((out["qk"], out["qk_inv"]), (out["vo"], out["vo_inv"])):
        assert float((m - eye).abs().max()) <= 0.124
        assert float(torch.linalg.svdvals(m).min()) >= 1 - 0.124 * spec.head_dim - 1e-12
        torch.testing.assert_close(m @ m_inv, eye.expand_as(m), rtol=0, atol=1e-12)
    assert float(out["ffn_scale"].min()) >= 1 - 0.124 and float(out["ffn_scale"].max()) <= 1 + 0.124
    for eps in (0.125, 0.5, -0.01):
        with pytest.raises(ValueError, match=r"eps \* d_h < 1"):
            TransformerAlpha(spec, C, eps=eps, alpha_mode="shared")
    assert TransformerAlpha(spec, C, eps=None, alpha_mode="shared").eps == 0.5 / spec.head_dim
    # alpha's input: the 7 statistics of W_Q, W_K, W_V, W_O, W_A, b_A, W_B, b_B of layer 0, then layer 1
    names = ("wq", "wk", "wv", "wo", "wa", "ba", "wb", "bb")
    want = torch.cat([tensor_stats(getattr(theta, n)[:, 0, l].reshape(B, -1)) for l in range(2) for n in names], 1)
    torch.testing.assert_close(alpha.stats(theta), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="alpha_mode"):
        TransformerAlpha(spec, C, eps=0.1, alpha_mode="per_head")
    signs = TransformerAlpha(_spec("digits-tanh"), C, eps=0.1, alpha_mode="shared").double()
    with torch.no_grad():
        assert signs(_feature(_spec("digits-tanh"), channels=1))["ffn_scale"] is None, "signs are discrete"
