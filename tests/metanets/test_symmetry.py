"""The group action: axioms, and that act(g, theta) computes the same function as theta."""

import pytest
import torch

from metanets import NetworkSpec, WeightSpace, symmetry
from metanets.testing import max_abs_diff
from tests.metanets.reference_nets import MLP, Siren, SmallCNN, random_state_dicts, run

B = 4


def _ws(make, activation, n=B, seed=0):
    sds = random_state_dicts(make, n, seed)
    spec = NetworkSpec.from_state_dict(sds[0], activation=activation)
    return spec, WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


NETS = {
    "mlp-relu": (lambda: MLP(activation="relu"), "relu", (1.0, 1e4), lambda n: torch.randn(n, 5)),
    "mlp-tanh": (lambda: MLP(activation="tanh"), "tanh", None, lambda n: torch.randn(n, 5)),
    "cnn-relu": (lambda: SmallCNN("relu"), "relu", (1.0, 1e4), lambda n: torch.rand(n, 1, 8, 8)),
    "cnn-tanh": (lambda: SmallCNN("tanh"), "tanh", None, lambda n: torch.rand(n, 1, 8, 8)),
    "siren": (Siren, "sine", None, lambda n: torch.rand(n, 2) * 2 - 1),
}


@pytest.mark.parametrize("name", NETS)
def test_action_preserves_the_function(name):
    make, activation, scale, inputs = NETS[name]
    spec, ws = _ws(make, activation)
    gen = torch.Generator().manual_seed(1)
    g = symmetry.sample(spec, B, scale=scale, generator=gen)
    moved = symmetry.act(g, ws)
    x = inputs(32).double()
    changed = 0.0
    for sd, sd_g in zip(ws.to_state_dicts(), moved.to_state_dicts()):
        y, y_g = run(make, sd, x), run(make, sd_g, x)
        torch.testing.assert_close(y_g, y, rtol=1e-9, atol=1e-9)
        changed = max(changed, max(float((sd[k] - sd_g[k]).abs().max()) for k in sd))
    assert changed > 1e-3, "the sampled element must actually move the weights"


@pytest.mark.parametrize("name", NETS)
def test_wrong_action_changes_the_function(name):
    """An uncoupled action (rows and columns transformed by different elements) is no symmetry."""
    make, activation, scale, inputs = NETS[name]
    spec, ws = _ws(make, activation)
    gen = torch.Generator().manual_seed(2)
    g, h = (symmetry.sample(spec, B, scale=scale, generator=gen) for _ in range(2))
    moved = symmetry.act_rows_cols(g, h, ws)
    x = inputs(32).double()
    for sd, sd_g in zip(ws.to_state_dicts(), moved.to_state_dicts()):
        assert float((run(make, sd, x) - run(make, sd_g, x)).abs().max()) > 1e-3


def test_relu_net_is_not_sign_symmetric():
    spec, ws = _ws(lambda: MLP(activation="relu"), "relu")
    g = symmetry.sample(spec, B, group="perm_sign", generator=torch.Generator().manual_seed(3))
    x = torch.randn(32, 5).double()
    sd, sd_g = ws.to_state_dicts()[0], symmetry.act(g, ws).to_state_dicts()[0]
    assert float((run(MLP, sd, x) - run(MLP, sd_g, x)).abs().max()) > 1e-3


@pytest.mark.parametrize("group, scale", [("perm_scale", (0.1, 10.0)), ("perm_sign", None), ("perm", None)])
def test_group_axioms(group, scale):
    spec, ws = _ws(SmallCNN, "relu")
    gen = torch.Generator().manual_seed(4)
    g, h, k = (symmetry.sample(spec, B, scale=scale, group=group, generator=gen) for _ in range(3))
    e = symmetry.identity(spec, B)
    # act(identity) is a no-op, compose with inverse is the identity (both ways)
    assert max_abs_diff(symmetry.act(e, ws), ws) == 0.0
    for gi in (symmetry.compose(g, symmetry.inverse(g)), symmetry.compose(symmetry.inverse(g), g)):
        for p, s in zip(gi.perms, gi.scales):
            assert torch.equal(p, e.perms[0].new_tensor(range(p.shape[1])).expand_as(p))
            torch.testing.assert_close(s, torch.ones_like(s), rtol=1e-12, atol=1e-12)
        assert max_abs_diff(symmetry.act(gi, ws), ws) < 1e-12
    # compose matches successive actions, and is associative
    assert max_abs_diff(symmetry.act(symmetry.compose(g, h), ws), symmetry.act(g, symmetry.act(h, ws))) < 1e-9
    left = symmetry.compose(symmetry.compose(g, h), k)
    right = symmetry.compose(g, symmetry.compose(h, k))
    assert all(torch.equal(a, b) for a, b in zip(left.perms, right.perms))
    assert all(torch.allclose(a, b, rtol=1e-12) for a, b in zip(left.scales, right.scales))


def test_sample_respects_ranges_and_generator():
    spec, _ = _ws(SmallCNN, "relu")
    g1 = symmetry.sample(spec, 8, scale=(1.0, 1e3), generator=torch.Generator().manual_seed(5))
    g2 = symmetry.sample(spec, 8, scale=(1.0, 1e3), generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(g1.scales, g2.scales))
    s = torch.cat(g1.scales)
    assert float(s.min()) >= 1.0 and float(s.max()) <= 1e3 and float(s.max()) > 10
    signs = symmetry.sample(spec, 8, group="perm_sign", generator=torch.Generator().manual_seed(6))
    assert set(torch.cat(signs.scales).unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="scale range"):
        symmetry.sample(spec, 2, scale=(0.0, 1.0))
