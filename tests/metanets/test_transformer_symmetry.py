"""The transformer group: act(g, theta) computes the same function as theta (real torch transformers,
float64), wrong actions do not, and the group axioms hold."""

import pytest
import torch

from metanets import TransformerSpec, TransformerWeightSpace, symmetry
from metanets.testing import max_abs_diff
from tests.metanets.reference_transformer import DigitsStyle, PublicStyle, one_thread, random_state_dicts, run  # noqa: F401
from tests.metanets.transformer_actions import WRONG_ACTIONS

pytestmark = pytest.mark.usefixtures("one_thread")
B = 3

NETS = {  # make, activation, heads, inputs
    "digits-1-layer": (lambda: DigitsStyle(1), "relu", 2, lambda n: torch.rand(n, 8, 8)),
    "digits-2-layers": (lambda: DigitsStyle(2), "relu", 2, lambda n: torch.rand(n, 8, 8)),
    "digits-tanh-attn-bias": (lambda: DigitsStyle(2, activation="tanh", attn_bias=True), "tanh", 2,
                              lambda n: torch.rand(n, 8, 8)),
    "digits-gelu-4-heads": (lambda: DigitsStyle(1, heads=4, activation="gelu"), "gelu", 4,
                            lambda n: torch.rand(n, 8, 8)),
    "public-3-heads-bias": (PublicStyle, "relu", 3, lambda n: torch.rand(n, 1, 8, 8)),
}


def _ws(name, n=B, seed=0):
    make, activation, heads, _ = NETS[name]
    sds = random_state_dicts(make, n, seed)
    spec = TransformerSpec.from_state_dict(sds[0], activation=activation, num_heads=heads)
    return spec, TransformerWeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def _max_output_change(name, ws, moved, n_inputs=16):
    make, _, _, inputs = NETS[name]
    x = inputs(n_inputs).double()
    return max(float((run(make, a, x) - run(make, b, x)).abs().max())
               for a, b in zip(ws.to_state_dicts(), moved.to_state_dicts()))


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.2, 5.0), (1.0, 1e3)])
def test_action_preserves_the_function(name, scale):
    spec, ws = _ws(name)
    g = symmetry.sample(spec, B, scale=scale, generator=torch.Generator().manual_seed(1))
    moved = symmetry.act(g, ws)
    make, _, _, inputs = NETS[name]
    x = inputs(16).double()
    for sd, sd_g in zip(ws.to_state_dicts(), moved.to_state_dicts()):
        y = run(make, sd, x)
        torch.testing.assert_close(run(make, sd_g, x), y, rtol=1e-9, atol=1e-9 * max(1.0, float(y.abs().max())))
    assert max_abs_diff(moved, ws) > 1e-2, "the sampled element must actually move the weights"


def test_action_preserves_the_digits_zoo_network():
    """The generator's own DigitsTransformer (zoo_ingest), read through the spec, keeps its function."""
    transformer = pytest.importorskip("zoo_ingest.generators.transformer")
    for layers in (1, 2):
        torch.manual_seed(layers)
        nets = [transformer.DigitsTransformer(layers).double() for _ in range(B)]
        sds = [{k: v + 0.3 * torch.randn_like(v) for k, v in net.state_dict().items()} for net in nets]
        spec = TransformerSpec.from_state_dict(sds[0], activation="relu")
        ws = TransformerWeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
        moved = symmetry.act(symmetry.sample(spec, B, scale=(0.2, 5.0), generator=torch.Generator().manual_seed(2)), ws)
        x = torch.rand(16, 8, 8, dtype=torch.float64)
        for net, sd, sd_g in zip(nets, sds, moved.to_state_dicts()):
            with torch.no_grad():
                net.load_state_dict(sd)
                y = net(x)
                net.load_state_dict(sd_g)
                torch.testing.assert_close(net(x), y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("wrong", WRONG_ACTIONS)
@pytest.mark.parametrize("name", ["digits-2-layers", "public-3-heads-bias"])
def test_wrong_action_changes_the_function(name, wrong):
    spec, ws = _ws(name)
    g = symmetry.sample(spec, B, scale=(0.2, 5.0), generator=torch.Generator().manual_seed(3))
    assert _max_output_change(name, ws, WRONG_ACTIONS[wrong](g)(ws)) > 1e-3


def test_gelu_ffn_is_not_scale_symmetric_and_relu_not_sign_symmetric():
    for name, group in (("digits-gelu-4-heads", "perm_scale"), ("digits-2-layers", "perm_sign")):
        spec, ws = _ws(name)
        g = symmetry.sample(spec, B, scale=(0.2, 5.0), group=group, generator=torch.Generator().manual_seed(4))
        assert _max_output_change(name, ws, symmetry.act(g, ws)) > 1e-3


@pytest.mark.parametrize("name", ["digits-2-layers", "public-3-heads-bias", "digits-tanh-attn-bias"])
def test_group_axioms(name):
    spec, ws = _ws(name)
    gen = torch.Generator().manual_seed(5)
    g, h, k = (symmetry.sample(spec, B, scale=(0.2, 5.0), generator=gen) for _ in range(3))
    e = symmetry.identity(spec, B)
    assert max_abs_diff(symmetry.act(e, ws), ws) == 0.0
    for gi in (symmetry.compose(g, symmetry.inverse(g)), symmetry.compose(symmetry.inverse(g), g)):
        assert torch.equal(gi.head_perm, e.head_perm) and torch.equal(gi.ffn_perm, e.ffn_perm)
        pairs = ((gi.qk, e.qk), (gi.qk_inv, e.qk), (gi.vo, e.vo), (gi.vo_inv, e.vo), (gi.ffn_scale, e.ffn_scale))
        for got, want in pairs:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert max_abs_diff(symmetry.act(gi, ws), ws) < 1e-12
    # stored inverses are inverses, compose matches successive actions, and is associative
    eye = e.qk
    torch.testing.assert_close(g.qk @ g.qk_inv, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(g.vo_inv @ g.vo, eye, rtol=0, atol=1e-12)
    assert max_abs_diff(symmetry.act(symmetry.compose(g, h), ws), symmetry.act(g, symmetry.act(h, ws))) < 1e-9
    left, right = symmetry.compose(symmetry.compose(g, h), k), symmetry.compose(g, symmetry.compose(h, k))
    assert torch.equal(left.head_perm, right.head_perm) and torch.equal(left.ffn_perm, right.ffn_perm)
    for a, b in ((left.qk, right.qk), (left.vo_inv, right.vo_inv), (left.ffn_scale, right.ffn_scale)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_sample_draws_well_conditioned_elements_of_the_requested_subgroup():
    spec, _ = _ws("digits-2-layers")

    def draw(seed, **kw):
        return symmetry.sample(spec, 8, generator=torch.Generator().manual_seed(seed), **kw)

    g = draw(6, scale=(0.5, 4.0))
    assert torch.equal(g.qk, draw(6, scale=(0.5, 4.0)).qk), "the generator decides the draw"
    sv = torch.linalg.svdvals(torch.cat([g.qk, g.vo]))
    assert float(sv.min()) >= 0.5 - 1e-12 and float(sv.max()) <= 4.0 + 1e-12
    assert float((sv.max(-1).values / sv.min(-1).values).max()) <= 8.0 + 1e-9
    assert float(sv.max()) > 2.0 and float(sv.min()) < 1.0, "singular values spread over the range"
    assert float(g.ffn_scale.min()) >= 0.5 and float(g.ffn_scale.max()) <= 4.0
    ortho = draw(7)  # default scale (1, 1): orthogonal A_h, B_h, no FFN scaling
    eye = torch.eye(spec.head_dim, dtype=torch.float64)
    torch.testing.assert_close(ortho.qk @ ortho.qk.transpose(-1, -2), eye.expand_as(ortho.qk), rtol=0, atol=1e-12)
    assert float((ortho.qk - eye).abs().max()) > 0.1 and torch.all(ortho.ffn_scale == 1)
    perm_only = draw(8, scale=(0.5, 4.0), group="perm")
    assert torch.equal(perm_only.qk, eye.expand_as(perm_only.qk)) and torch.all(perm_only.ffn_scale == 1)
    assert not torch.equal(perm_only.head_perm, symmetry.identity(spec, 8).head_perm)
    signs = draw(9, group="transformer_perm_sign")
    assert set(signs.ffn_scale.unique().tolist()) == {-1.0, 1.0}
    fixed = draw(10, scale=(0.5, 4.0), permute=False)
    assert torch.equal(fixed.head_perm, symmetry.identity(spec, 8).head_perm)
    with pytest.raises(ValueError, match="scale range"):
        draw(0, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown transformer group 'transformer_rot'"):
        draw(0, group="transformer_rot")


def test_act_checks_the_element_fits():
    spec, ws = _ws("digits-2-layers")
    other, _ = _ws("digits-1-layer")
    with pytest.raises(ValueError, match="does not fit"):
        symmetry.act(symmetry.sample(other, B), ws)
    with pytest.raises(ValueError, match="batch 2"):
        symmetry.act(symmetry.sample(spec, 2), ws)
