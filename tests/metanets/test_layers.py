"""Each equivariant layer is equivariant (float64) and fails under a wrong, uncoupled action."""

import pytest
import torch

from metanets import NetworkSpec, WeightSpace, symmetry
from metanets.layers.common import in_memory_order, normalise_channels, normalise_scaled_channels, safe_sqrt
from metanets.layers.monomial import MonomialLinear
from metanets.layers.np_layers import NPLinear
from metanets.layers.quasi import QuasiScale
from metanets.testing import assert_equivariant, equivariance_error
from tests.metanets.reference_nets import MLP, Siren, SmallCNN, random_state_dicts

B, C = 3, 4


def _feature(make, activation, channels=C, seed=0):
    """A random C-channel feature on the weight space of `make`'s networks."""
    sds = random_state_dicts(make, 1, seed)
    spec = NetworkSpec.from_state_dict(sds[0], activation=activation)
    gen = torch.Generator().manual_seed(seed)
    ws = WeightSpace(
        spec,
        tuple(torch.randn(B, channels, *layer.shape, generator=gen, dtype=torch.float64) for layer in spec.layers),
        tuple(torch.randn(B, channels, layer.n_out, generator=gen, dtype=torch.float64) for layer in spec.layers),
    )
    return spec, ws


SPECS = {
    "mlp-relu": (MLP, "relu", (0.1, 100.0)),
    "cnn-relu": (SmallCNN, "relu", (1.0, 1e4)),
    "cnn-tanh": (lambda: SmallCNN("tanh"), "tanh", None),
    "siren": (Siren, "sine", None),
}

LAYERS = {
    "np": lambda spec: NPLinear(spec, C, 5, hnp=False),
    "hnp": lambda spec: NPLinear(spec, C, 5, hnp=True),
    "monomial": lambda spec: MonomialLinear(spec, C, 5),
}


def _group_for(layer_name, spec):
    # NP/HNP layers are equivariant to permutations; Monomial-NFN to the network's full group
    return "perm" if layer_name in ("np", "hnp") else spec.group


@pytest.mark.parametrize("net", SPECS)
@pytest.mark.parametrize("layer_name", LAYERS)
def test_layer_is_equivariant(layer_name, net):
    make, activation, scale = SPECS[net]
    spec, ws = _feature(make, activation)
    layer = LAYERS[layer_name](spec)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        g = symmetry.sample(spec, B, scale=scale, group=_group_for(layer_name, spec), generator=gen)
        assert_equivariant(layer, ws, g)


def _uncoupled(g, h):
    """Rows (and biases) of each layer move with g, columns of the next layer with h."""
    return lambda w: symmetry.act_rows_cols(g, h, w)


def _bias_decoupled(g, h):
    """Weights move with g, biases with h."""
    return lambda w: WeightSpace(w.spec, symmetry.act(g, w).weights, symmetry.act(h, w).biases)


def _io_permuted(g, seed=11):
    """g, then a permutation of the input neurons and of the output neurons, which the group fixes."""
    gen = torch.Generator().manual_seed(seed)

    def action(w):
        w = symmetry.act(g, w)
        p_in = torch.randperm(w.spec.layers[0].n_in, generator=gen)
        p_out = torch.randperm(w.spec.layers[-1].n_out, generator=gen)
        weights = list(w.weights)
        weights[0] = weights[0][:, :, :, p_in]
        weights[-1] = weights[-1][:, :, p_out]
        biases = w.biases[:-1] + (w.biases[-1][:, :, p_out],)
        return WeightSpace(w.spec, tuple(weights), biases)

    return action


# The wrong actions each layer must notice. NP treats input/output neurons as permutable, so it is
# equivariant to input/output permutations by design; Monomial-NFN layers have no terms coupling
# different layers (only the ones that scale like the entry survive), so they are equivariant to the
# uncoupled action by design, and are checked against the wrong actions they do see.
WRONG = {
    "np": [_uncoupled],
    "hnp": [_uncoupled, lambda g, h: _io_permuted(g)],
    "monomial": [_bias_decoupled, lambda g, h: _io_permuted(g)],
}


@pytest.mark.parametrize("net", SPECS)
@pytest.mark.parametrize("layer_name", LAYERS)
def test_layer_fails_under_wrong_actions(layer_name, net):
    make, activation, scale = SPECS[net]
    spec, ws = _feature(make, activation)
    layer = LAYERS[layer_name](spec)
    group = _group_for(layer_name, spec)
    gen = torch.Generator().manual_seed(8)
    g, h = (symmetry.sample(spec, B, scale=scale, group=group, generator=gen) for _ in range(2))
    for wrong in WRONG[layer_name]:
        action = wrong(g, h)
        err, tol = equivariance_error(layer, ws, action, action)
        assert err > 1e3 * tol, f"{layer_name} looks equivariant to a wrong action (err {err:.2e})"


def test_monomial_layer_has_no_cross_layer_terms():
    """Documented fact: linear Monomial-NFN layers are equivariant even to the uncoupled action."""
    spec, ws = _feature(SmallCNN, "relu")
    gen = torch.Generator().manual_seed(12)
    g, h = (symmetry.sample(spec, B, scale=(1.0, 10.0), generator=gen) for _ in range(2))
    err, tol = equivariance_error(MonomialLinear(spec, C, 5), ws, _uncoupled(g, h), _uncoupled(g, h))
    assert err <= tol


def test_monomial_layer_is_not_equivariant_to_scaling_if_np():
    """NP layers mix rows and columns additively, so they cannot follow a scaling."""
    spec, ws = _feature(SmallCNN, "relu")
    g = symmetry.sample(spec, B, scale=(1.0, 100.0), generator=torch.Generator().manual_seed(9))
    err, tol = equivariance_error(NPLinear(spec, C, 5), ws, g)
    assert err > 1e3 * tol


@pytest.mark.parametrize("alpha_mode", ["shared", "per_channel"])
def test_quasi_scale_is_quasi_equivariant(alpha_mode):
    """F = alpha . beta satisfies F(g theta) = g' F(theta) with g' = alpha(g theta) g alpha(theta)^-1."""
    spec, feat = _feature(SmallCNN, "relu")
    _, theta = _feature(SmallCNN, "relu", channels=1, seed=1)
    beta = MonomialLinear(spec, C, C).double()
    quasi = QuasiScale(spec, C, eps=0.5, alpha_mode=alpha_mode).double()
    g = symmetry.sample(spec, B, scale=(1.0, 1e3), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        lhs = quasi(beta(symmetry.act(g, feat)), symmetry.act(g, theta))
        a_theta, a_g_theta = quasi.alpha(theta), quasi.alpha(symmetry.act(g, theta))
        f_theta = quasi(beta(feat), theta)
        rhs = symmetry.scale_hidden(
            symmetry.act(g, symmetry.scale_hidden(f_theta, tuple(1 / a for a in a_theta))), a_g_theta
        )
    err = max(float((x - y).abs().max()) for (_, x), (_, y) in zip(lhs.tensors(), rhs.tensors()))
    assert err < 1e-9 * max(1.0, max(float(t.abs().max()) for _, t in rhs.tensors()))
    # alpha lies in the group: positive, within 1 +- eps, and really depends on theta
    scales = torch.cat([a.flatten() for a in a_theta])
    assert float(scales.min()) >= 0.5 and float(scales.max()) <= 1.5
    assert any(float((a - b).abs().max()) > 1e-6 for a, b in zip(a_theta, a_g_theta))
    expected_channels = C if alpha_mode == "per_channel" else 1
    assert all(a.shape[1] == expected_channels for a in a_theta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_normalisation_is_scale_invariant_and_differentiable_at_zero(dtype):
    """normalise_channels cancels a positive per-entry scale in [1e-3, 1e3] exactly, also for vectors of
    dead units whose weights decayed to ~1e-22 (their squared norm is denormal in float32); all-zero
    channel vectors map to zero; gradients stay finite, where a plain sqrt backpropagates NaN."""
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, 4, 6, generator=gen, dtype=dtype)
    t[0, :, 1, 2] = 0.0
    t[1, :, 2, 3] = 1e-22 * torch.randn(5, generator=gen, dtype=dtype)
    t[2, :, 0, 0] = 1e-12 * torch.randn(5, generator=gen, dtype=dtype)
    scale = 10 ** (6 * torch.rand(3, 1, 4, 6, generator=gen, dtype=dtype) - 3)
    out = normalise_channels(t)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(normalise_channels(t * scale), out, rtol=0, atol=tol)
    assert (out[0, :, 1, 2] == 0).all()
    torch.testing.assert_close(out.square().sum(dim=1)[1:, 2, 3], torch.ones(2, dtype=dtype), rtol=0, atol=tol)
    leaf = t.clone().requires_grad_(True)
    (normalise_channels(leaf) * torch.randn(t.shape, generator=gen, dtype=dtype)).sum().backward()
    assert torch.isfinite(leaf.grad).all()
    x = torch.zeros(4, dtype=dtype, requires_grad=True)
    safe_sqrt(x * x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_channel_normalisation_closed_form_backward_matches_autograd():
    """The closed-form backward of normalise_channels is the derivative of t / |t| (float64 gradcheck, and
    equal to autograd through the plain formula, also for a gradient that is a broadcast view as a mean's
    backward passes it); an all-zero vector gets a zero gradient."""
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(normalise_channels, (t.clone().requires_grad_(True),))
    t[1, :, 0, 1] *= 1e-30  # tiny but normal: rescaled, not flushed (too small for finite differences)
    leaf = t.clone().requires_grad_(True)
    plain = t.clone().requires_grad_(True)
    torch.testing.assert_close(normalise_channels(leaf), plain / plain.norm(dim=1, keepdim=True), rtol=1e-14, atol=0)
    weight = torch.randn(1, 5, 1, 1, generator=gen, dtype=torch.float64)
    (normalise_channels(leaf).mean(dim=(2, 3)) * weight[:, :, 0, 0]).sum().backward()
    ((plain / plain.norm(dim=1, keepdim=True)).mean(dim=(2, 3)) * weight[:, :, 0, 0]).sum().backward()
    torch.testing.assert_close(leaf.grad, plain.grad, rtol=1e-12, atol=0)
    zero = torch.zeros(1, 5, 2, dtype=torch.float64, requires_grad=True)
    out = normalise_channels(zero)
    (out * torch.randn(out.shape, generator=gen, dtype=torch.float64)).sum().backward()
    assert (out == 0).all() and (zero.grad == 0).all()
    with pytest.raises(RuntimeError):  # the backward is closed-form, not differentiable twice
        grad = torch.autograd.grad(normalise_channels(leaf).sum(dim=(2, 3))[0, 0], leaf, create_graph=True)[0]
        grad.sum().backward()


@pytest.mark.parametrize("layout", ["channel_last", "contiguous"])
@pytest.mark.parametrize("k", [1, 9])
def test_scaled_channel_normalisation_equals_normalising_the_product(layout, k):
    """normalise_scaled_channels(t, f, k) is normalise_channels of t times f repeated over each group of k
    channels, in float64: values, gradients in t and f (also for a vector of decayed ~1e-22 weights), and
    gradcheck; an all-zero vector maps to zero with zero gradients. Both layouts: axis 1 innermost in
    memory (the channel maps' outputs; group sums by a matrix-vector product) and contiguous."""
    gen = torch.Generator().manual_seed(2)
    groups = 3

    def make(t):
        return t.movedim(1, -1).contiguous().movedim(-1, 1) if layout == "channel_last" else t.contiguous()

    t = make(torch.randn(2, groups * k, 4, 5, generator=gen, dtype=torch.float64))
    f = 0.2 + 1.6 * torch.rand(2, groups, 4, 5, generator=gen, dtype=torch.float64)
    assert (t.stride(1) == 1) == (layout == "channel_last")
    assert torch.autograd.gradcheck(lambda a, b: normalise_scaled_channels(a, b, k),
                                    (t.clone().requires_grad_(True), f.clone().requires_grad_(True)))
    t[0, :, 1, 2] = 0.0
    t[1, :, 2, 3] *= 1e-22
    leaf, scale = t.clone().requires_grad_(True), f.clone().requires_grad_(True)
    ref_leaf, ref_scale = t.clone().requires_grad_(True), f.clone().requires_grad_(True)
    out = normalise_scaled_channels(leaf, scale, k)
    ref = normalise_channels(ref_leaf * ref_scale.repeat_interleave(k, dim=1))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    assert out.stride() == t.stride()  # the input's layout, as the pool's means expect
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * weight).sum().backward()
    (ref * weight).sum().backward()
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, rtol=1e-10, atol=0)
    torch.testing.assert_close(scale.grad, ref_scale.grad, rtol=1e-10, atol=1e-14)
    assert (out[0, :, 1, 2] == 0).all() and (leaf.grad[0, :, 1, 2] == 0).all() and (scale.grad[0, :, 1, 2] == 0).all()
    with pytest.raises(ValueError, match="normalise_scaled_channels"):
        normalise_scaled_channels(t, f[:, :2], k)


def test_activation_runs_in_memory_order_and_keeps_the_layout():
    """WSActivation applies its function on each tensor's memory order: the values are the plain
    function's and a channel-last tensor behind a channel-first view (a ChannelLinear output) stays so."""
    gen = torch.Generator().manual_seed(0)
    phys = torch.randn(2, 4, 5, 3 * 6, generator=gen, dtype=torch.float64)  # (B, n, m, C*s) in memory
    t = phys.movedim(-1, 1).reshape(2, 3, 6, 4, 5).movedim(2, -1)  # logical (B, C, n, m, s)
    assert not t.is_contiguous()
    out = in_memory_order(torch.tanh, t)
    assert torch.equal(out, torch.tanh(t)) and out.stride() == t.stride()
    contiguous = t.contiguous()
    assert in_memory_order(torch.relu, contiguous).stride() == contiguous.stride()


@pytest.mark.parametrize("hnp", [False, True])
@pytest.mark.parametrize("net", ["mlp-relu", "cnn-relu"])
def test_np_layer_blockwise_map_equals_the_concatenated_map(net, hnp):
    """NPLinear maps its parts block by block, each at its reduced size; this equals mapping their full-size
    concatenation (the direct formula, `concatenated=True`) in value and in every parameter's gradient."""
    make, activation, _ = SPECS[net]
    spec, ws = _feature(make, activation)
    torch.manual_seed(0)
    layer = NPLinear(spec, C, 5, hnp=hnp).double()
    grads = []
    for concatenated in (False, True):
        layer.zero_grad()
        out = layer(ws, concatenated=concatenated)
        weight = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=weight, dtype=t.dtype)).sum() for _, t in out.tensors())
        loss.backward()
        grads.append((out, {k: p.grad.clone() for k, p in layer.named_parameters()}))
    (fast, fast_grads), (direct, direct_grads) = grads
    for (key, a), (_, b) in zip(fast.tensors(), direct.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=key)
    for key, g in direct_grads.items():
        torch.testing.assert_close(fast_grads[key], g, rtol=1e-10, atol=1e-12, msg=key)
