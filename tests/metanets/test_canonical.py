"""metanets.symmetry.canonicalize (float64): the function is preserved (real networks are run), the canonical
form is invariant to the group up to its permutation part (scales up to 10^4), canonicalisation is idempotent,
and the same checks catch broken canonicalisations; dead neurons and non-finite weights."""

import math

import pytest
import torch

from metanets import NetworkSpec, TransformerSpec, TransformerWeightSpace, WeightSpace, symmetry
from metanets.canonical import canonicalize_layer, neuron_factors
from metanets.symmetry import MonomialElement
from metanets.testing import TOLERANCE, max_abs_diff
from metanets.transformer.symmetry import TransformerElement
from tests.metanets import reference_transformer
from tests.metanets.reference_nets import MLP, Siren, SmallCNN, random_state_dicts, run

B = 4
NETS = {  # make, activation, inputs
    "cnn-relu": (lambda: SmallCNN("relu"), "relu", lambda n: torch.randn(n, 1, 8, 8)),
    "cnn-tanh": (lambda: SmallCNN("tanh"), "tanh", lambda n: torch.randn(n, 1, 8, 8)),
    "mlp-relu": (lambda: MLP(activation="relu"), "relu", lambda n: torch.randn(n, 5)),
    "mlp-leaky-relu": (lambda: MLP(activation="leaky_relu"), "leaky_relu", lambda n: torch.randn(n, 5)),
    "mlp-tanh-no-bias": (lambda: MLP(activation="tanh", bias=False), "tanh", lambda n: torch.randn(n, 5)),
    "siren": (Siren, "sine", lambda n: torch.rand(n, 2) * 2 - 1),
}
SCALES = [(1.0, 1.0), (0.1, 10.0), (1.0, 1e4)]


def _ws(net, seed=0):
    make, activation, _ = NETS[net]
    sds = random_state_dicts(make, B, seed)
    spec = NetworkSpec.from_state_dict(sds[0], activation=activation)
    return spec, WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def _perm_part(g: MonomialElement) -> MonomialElement:
    return MonomialElement(g.perms, tuple(torch.ones_like(s) for s in g.scales))


def _close(a, b) -> bool:
    return max_abs_diff(a, b) <= TOLERANCE[torch.float64] * max(1.0, max(float(t.abs().max()) for _, t in b.tensors()))


def invariance_holds(canon, ws, g) -> bool:
    """canon(g . ws) == P . canon(ws), P the permutation part of g."""
    return _close(canon(symmetry.act(g, ws)), symmetry.act(_perm_part(g), canon(ws)))


def function_error(net, ws, moved) -> float:
    """Largest relative change of the real network's outputs between ws and moved."""
    make, _, inputs = NETS[net]
    x = inputs(16).double()
    errs = []
    for sd, sd2 in zip(ws.to_state_dicts(), moved.to_state_dicts()):
        y = run(make, sd, x)
        errs.append(float((run(make, sd2, x) - y).abs().max()) / max(1.0, float(y.abs().max())))
    return max(errs)


def skip_layer(ws, skipped=1):
    """A broken canonicalisation: normalises every hidden layer but one."""
    for i in range(ws.spec.num_layers - 1):
        if i != skipped:
            ws = canonicalize_layer(ws, i)
    return ws


def forget_outgoing(ws):
    """A broken canonicalisation: normalises incoming weights but does not move the factor out."""
    weights, biases = list(ws.weights), list(ws.biases)
    for i in range(ws.spec.num_layers - 1):
        w, b = weights[i], biases[i]
        f = neuron_factors(torch.cat([w.reshape(*b.shape, -1), b.unsqueeze(-1)], -1), ws.spec.group)
        weights[i], biases[i] = w / f.reshape(*f.shape, *([1] * (w.ndim - 3))), b / f
    return WeightSpace(ws.spec, tuple(weights), tuple(biases))


@pytest.mark.parametrize("net", NETS)
def test_canonical_form_computes_the_same_function(net):
    spec, ws = _ws(net)
    canon = symmetry.canonicalize(ws)
    assert function_error(net, ws, canon) <= 1e-9
    assert max_abs_diff(canon, ws) > 1e-3, "the canonical form must actually move these weights"


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("net", NETS)
def test_canonical_form_is_invariant_up_to_permutation(net, scale):
    spec, ws = _ws(net)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        g = symmetry.sample(spec, B, scale=scale, generator=gen)
        assert invariance_holds(symmetry.canonicalize, ws, g)
    if spec.group == "perm_scale":  # the normal form: unit incoming vectors
        c = symmetry.canonicalize(ws)
        for w, b in zip(c.weights[:-1], c.biases[:-1]):
            norms = torch.cat([w.reshape(*b.shape, -1), b.unsqueeze(-1)], -1).norm(dim=-1)
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-12, atol=1e-12)
    else:  # the normal form: nonnegative sums of incoming weights and bias
        c = symmetry.canonicalize(ws)
        for w, b in zip(c.weights[:-1], c.biases[:-1]):
            assert (w.reshape(*b.shape, -1).sum(-1) + b >= 0).all()


@pytest.mark.parametrize("net", NETS)
def test_canonicalisation_is_idempotent(net):
    _, ws = _ws(net)
    once = symmetry.canonicalize(ws)
    assert _close(symmetry.canonicalize(once), once)


@pytest.mark.parametrize("net", ["cnn-relu", "mlp-tanh-no-bias", "siren"])
def test_the_checks_catch_broken_canonicalisations(net):
    spec, ws = _ws(net)
    g = symmetry.sample(spec, B, scale=(1.0, 1e4), generator=torch.Generator().manual_seed(2))
    assert invariance_holds(symmetry.canonicalize, ws, g)
    # skipping a layer is still a group action (function kept, idempotent) but not canonical
    assert function_error(net, ws, skip_layer(ws)) <= 1e-9
    assert not invariance_holds(skip_layer, ws, g)
    # not moving the factor out keeps invariance here but changes the function
    assert function_error(net, ws, forget_outgoing(ws)) > 1e-3


@pytest.mark.parametrize("net", ["cnn-relu", "mlp-tanh-no-bias"])
def test_a_dead_neuron_is_left_as_it_is(net):
    spec, ws = _ws(net)
    w0, b0 = ws.weights[0].clone(), ws.biases[0].clone()
    w0[:, :, 3], b0[:, :, 3] = 0.0, 0.0  # hidden neuron 3 of layer 1: all incoming weights and bias zero
    dead = WeightSpace(spec, (w0,) + ws.weights[1:], (b0,) + ws.biases[1:])
    canon = symmetry.canonicalize(dead)
    assert all(torch.isfinite(t).all() for _, t in canon.tensors())
    torch.testing.assert_close(canon.weights[0][:, :, 3], w0[:, :, 3], rtol=0, atol=0)
    # its outgoing weights keep their values: only later layers' factors touch them (rows of W_2)
    assert function_error(net, dead, canon) <= 1e-9
    live = symmetry.canonicalize(ws)
    assert max_abs_diff(canon.weights[0][:, :, :3], live.weights[0][:, :, :3]) <= 1e-12


def test_non_finite_weights_raise_naming_the_key_and_row():
    spec, ws = _ws("cnn-relu")
    w = ws.weights[1].clone()
    w[2, 0, 0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match=r"conv2.weight.*\[2\]"):
        symmetry.canonicalize(WeightSpace(spec, (ws.weights[0], w) + ws.weights[2:], ws.biases))


def test_permutation_only_networks_are_returned_unchanged():
    sds = random_state_dicts(lambda: MLP(activation="relu"), B, 0)
    spec = NetworkSpec.from_state_dict(sds[0], activation="gelu")
    ws = WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    assert max_abs_diff(symmetry.canonicalize(ws), ws) == 0.0


TRANSFORMERS = {
    "digits-relu": (lambda: reference_transformer.DigitsStyle(2), "relu", 2, lambda n: torch.rand(n, 8, 8)),
    "digits-tanh": (lambda: reference_transformer.DigitsStyle(1, activation="tanh"), "tanh", 2,
                    lambda n: torch.rand(n, 8, 8)),
    "public-bias": (reference_transformer.PublicStyle, "relu", 3, lambda n: torch.rand(n, 1, 8, 8)),
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("net", TRANSFORMERS)
def test_transformer_ffn_units_are_canonicalised(net):
    make, activation, heads, inputs = TRANSFORMERS[net]
    sds = reference_transformer.random_state_dicts(make, B, 0)
    spec = TransformerSpec.from_state_dict(sds[0], activation=activation, num_heads=heads)
    ws = TransformerWeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    canon = symmetry.canonicalize(ws)
    x = inputs(8).double()
    for sd, sd_c in zip(ws.to_state_dicts(), canon.to_state_dicts()):
        y = reference_transformer.run(make, sd, x)
        torch.testing.assert_close(reference_transformer.run(make, sd_c, x), y, rtol=1e-9, atol=1e-9)
    assert max_abs_diff(canon, ws) > 1e-3
    torch.testing.assert_close(canon.wq, ws.wq, rtol=0, atol=0)  # attention (GL(d_h)) is not canonicalised
    # FFN part of the group (plain perm_scale / perm_sign: heads and units permuted, FFN scales or signs)
    g = symmetry.sample(spec, B, scale=(1.0, 1e4), group=spec.ffn_group, generator=torch.Generator().manual_seed(3))
    eye = symmetry.identity(spec, B)
    p = TransformerElement(g.head_perm, eye.qk, eye.qk_inv, eye.vo, eye.vo_inv, g.ffn_perm, eye.ffn_scale)
    assert _close(symmetry.canonicalize(symmetry.act(g, ws)), symmetry.act(p, canon))
    assert _close(symmetry.canonicalize(canon), canon)


one_thread = reference_transformer.one_thread
