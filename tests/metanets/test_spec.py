import pytest
import torch

from metanets import NetworkSpec, SpecError, WeightSpace
from metanets.spec import PERM, PERM_SCALE, PERM_SIGN
from tests.metanets.reference_nets import MLP, Siren, SmallCNN


def test_small_cnn_spec_has_4970_parameters_and_conv_kinds():
    spec = NetworkSpec.from_state_dict(SmallCNN().state_dict(), activation="relu")
    assert spec.num_params == 4970
    assert [layer.kind for layer in spec.layers] == ["conv2d", "conv2d", "conv2d", "linear"]
    assert spec.hidden_sizes == (16, 16, 16)
    assert spec.group == PERM_SCALE


@pytest.mark.parametrize(
    "activation, group",
    [("relu", PERM_SCALE), ("leaky_relu", PERM_SCALE), ("tanh", PERM_SIGN), ("sine", PERM_SIGN), ("gelu", PERM)],
)
def test_activation_decides_group(activation, group):
    assert NetworkSpec.from_state_dict(MLP().state_dict(), activation=activation).group == group


def test_unknown_activation_is_rejected_by_name():
    with pytest.raises(SpecError, match="swish2"):
        NetworkSpec.from_state_dict(MLP().state_dict(), activation="swish2")


def test_weights_pair_with_biases_by_prefix_not_key_order():
    sd = Siren().state_dict()
    shuffled = {k: sd[k] for k in ["net.0.bias", "net.1.bias", "net.0.weight", "net.2.bias", "net.1.weight",
                                   "net.2.weight"]}
    spec = NetworkSpec.from_state_dict(shuffled, activation="sine")
    assert [(layer.weight_key, layer.bias_key) for layer in spec.layers] == [
        ("net.0.weight", "net.0.bias"), ("net.1.weight", "net.1.bias"), ("net.2.weight", "net.2.bias")]


def test_layers_without_bias_round_trip():
    sd = MLP(bias=False).state_dict()
    spec = NetworkSpec.from_state_dict(sd, activation="relu")
    assert all(layer.bias_key is None for layer in spec.layers)
    ws = WeightSpace.from_state_dicts([sd], spec)
    assert all(float(b.abs().max()) == 0 for b in ws.biases)
    back = ws.to_state_dicts()[0]
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_unsupported_key_is_named():
    sd = dict(MLP().state_dict())
    sd["norm.running_mean"] = torch.zeros(3)
    with pytest.raises(SpecError, match="norm.running_mean"):
        NetworkSpec.from_state_dict(sd, activation="relu")


def test_layer_chain_mismatch_names_the_layer():
    sd = {"a.weight": torch.zeros(4, 3), "b.weight": torch.zeros(2, 5)}
    with pytest.raises(SpecError, match="b.weight"):
        NetworkSpec.from_state_dict(sd, activation="relu")


def test_bias_without_weight_and_bad_ndim():
    with pytest.raises(SpecError, match="x.bias"):
        NetworkSpec.from_state_dict({"a.weight": torch.zeros(4, 3), "x.bias": torch.zeros(4)}, "relu")
    with pytest.raises(SpecError, match="a.weight"):
        NetworkSpec.from_state_dict({"a.weight": torch.zeros(4, 3, 2)}, "relu")


def test_arch_id_depends_on_activation_and_shapes_and_round_trips():
    relu = NetworkSpec.from_state_dict(SmallCNN().state_dict(), activation="relu")
    tanh = NetworkSpec.from_state_dict(SmallCNN().state_dict(), activation="tanh")
    other = NetworkSpec.from_state_dict(MLP().state_dict(), activation="relu")
    assert len({relu.arch_id, tanh.arch_id, other.arch_id}) == 3
    assert NetworkSpec.from_state_dict(SmallCNN().state_dict(), activation="relu").arch_id == relu.arch_id
    assert NetworkSpec.from_dict(relu.to_dict()) == relu
