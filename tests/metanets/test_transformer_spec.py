"""TransformerSpec from state dicts (digits-transformer and public small-transformer zoo layouts), its
generic interface, the spec dispatchers, and errors that name the key."""

import pytest
import torch

from metanets import (
    NetworkSpec,
    SpecError,
    TransformerSpec,
    TransformerWeightSpace,
    WeightSpace,
    infer_spec,
    spec_from_dict,
    weight_space_class,
)
from tests.metanets.reference_nets import SmallCNN
from tests.metanets.reference_transformer import DigitsStyle, PublicStyle


def _digits(layers=2, **kw):
    torch.manual_seed(0)
    return DigitsStyle(layers, **kw).state_dict()


@pytest.mark.parametrize("layers, params", [(1, 2634), (2, 4794)])
def test_digits_layout_sizes_and_key_order(layers, params):
    sd = _digits(layers)
    spec = TransformerSpec.from_state_dict(sd, activation="relu")
    assert spec.num_params == params == sum(v.numel() for v in sd.values())  # docs/zoos.md
    assert (spec.num_layers, spec.num_heads, spec.head_dim, spec.d_model, spec.d_ff) == (layers, 2, 8, 16, 32)
    assert spec.group == "transformer_perm_scale" and spec.ffn_group == "perm_scale" and spec.type == "transformer"
    assert set(spec.keys) == set(sd) and len(spec.keys) == len(sd)
    assert spec.keys[:3] == ("embedding.bias", "embedding.weight", "position_embedding")
    assert spec.keys[3:11] == tuple(f"layers.0.{m}" for m in (
        "attn.queries.weight", "attn.keys.weight", "attn.values.weight", "attn.out_projection.weight",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
    assert spec.keys[-4:] == ("classifier.bias", "classifier.weight", "norm.bias", "norm.weight")
    assert spec.param_shapes() == {k: tuple(sd[k].shape) for k in spec.keys}
    assert {e.role for e in spec.extras} == {"embedding", "position_embedding", "layer_norm", "norm", "classifier"}


def test_key_order_and_arch_id_do_not_depend_on_dict_order():
    sd = _digits()
    spec = TransformerSpec.from_state_dict(sd, activation="relu")
    shuffled = {k: sd[k] for k in sorted(sd)}  # safetensors stores keys sorted
    again = TransformerSpec.from_state_dict(shuffled, activation="relu")
    assert again == spec and again.keys == spec.keys and again.arch_id == spec.arch_id


def test_public_zoo_layout_with_biases_and_other_prefixes():
    torch.manual_seed(0)
    sd = PublicStyle(num_layers=2, d=12, heads=3, d_ff=24).state_dict()
    spec = TransformerSpec.from_state_dict(sd, activation="relu", num_heads=3)
    assert [layer.prefix for layer in spec.layers] == ["encoder.0", "encoder.1"]
    assert spec.layers[1].key("values", bias=True) == "encoder.1.attention.values.bias"
    assert spec.has_attention_bias and spec.head_dim == 4 and spec.num_params == sum(v.numel() for v in sd.values())
    roles = {e.key: e.role for e in spec.extras}
    assert roles == {"embedding.conv1.weight": "embedding", "embedding.conv1.bias": "embedding",
                     "embedding.pos_embedding": "position_embedding", "classifier.fc1.weight": "classifier",
                     "classifier.fc1.bias": "classifier", "classifier.fc2.weight": "classifier",
                     "classifier.fc2.bias": "classifier"}


def test_arch_id_depends_on_activation_heads_and_shapes_and_round_trips():
    relu = TransformerSpec.from_state_dict(_digits(), activation="relu")
    ids = {
        relu.arch_id,
        TransformerSpec.from_state_dict(_digits(), activation="tanh").arch_id,
        TransformerSpec.from_state_dict(_digits(), activation="relu", num_heads=4).arch_id,
        TransformerSpec.from_state_dict(_digits(1), activation="relu").arch_id,
    }
    assert len(ids) == 4
    d = relu.to_dict()
    assert d["type"] == "transformer"
    assert TransformerSpec.from_dict(d) == relu and spec_from_dict(d) == relu
    assert TransformerSpec.from_state_dict(_digits(), activation="tanh").group == "transformer_perm_sign"
    assert TransformerSpec.from_state_dict(_digits(), activation="gelu").group == "transformer_perm"


def test_dispatchers_pick_the_spec_kind():
    cnn = SmallCNN().state_dict()
    spec = infer_spec(cnn, "relu")
    assert isinstance(spec, NetworkSpec) and spec_from_dict(spec.to_dict()) == spec
    tr = infer_spec(_digits(), "relu")
    assert isinstance(tr, TransformerSpec) and tr.num_heads == 2
    assert infer_spec(_digits(), "relu", num_heads=4).num_heads == 4
    assert weight_space_class(tr) is TransformerWeightSpace and weight_space_class(spec) is WeightSpace
    with pytest.raises(SpecError, match="unknown spec type 'graph'"):
        spec_from_dict({"type": "graph"})


def _without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize("mutate, match", [
    (lambda sd: _without(sd, "layers.1.attn.values.weight"), r"layers\.1\.attn\.values\.weight: missing"),
    (lambda sd: _without(sd, "layers.0.fc2.weight"), r"layers\.0\.fc2\.weight: missing"),
    (lambda sd: {**sd, "layers.0.attn.rotary.weight": torch.zeros(16)}, r"attn\.rotary\.weight: not a recog"),
    (lambda sd: {**sd, "layers.0.norm3.running_mean": torch.zeros(16, 2)}, r"layers\.0\.norm3\.running_mean"),
    (lambda sd: {**sd, "adapter.weight": torch.zeros(4)}, r"adapter\.weight: not part of a transformer encoder"),
    (lambda sd: {**sd, "layers.1.attn.keys.weight": torch.zeros(8, 16)}, r"1\.attn\.keys\.weight: shape \(8, 16\)"),
    (lambda sd: {**sd, "layers.0.fc1.bias": torch.zeros(31)}, r"layers\.0\.fc1\.bias: shape \(31,\)"),
    (lambda sd: {k.replace("layers.1.", "layers.2."): v for k, v in sd.items()}, r"numbered \[0, 2\]"),
])
def test_bad_state_dicts_name_the_key(mutate, match):
    with pytest.raises(SpecError, match=match):
        TransformerSpec.from_state_dict(mutate(_digits()), activation="relu")


def test_heads_that_do_not_divide_the_width_name_the_key():
    with pytest.raises(SpecError, match=r"layers\.0\.attn\.queries\.weight: 16 rows .* 3 heads"):
        TransformerSpec.from_state_dict(_digits(), activation="relu", num_heads=3)
    with pytest.raises(SpecError, match="num_heads"):
        TransformerSpec.from_state_dict(_digits(), activation="relu", num_heads=0)


def test_other_architectures_and_activations_are_refused_clearly():
    with pytest.raises(SpecError, match=r"not a transformer encoder.*first key: 'conv1\.weight'"):
        TransformerSpec.from_state_dict(SmallCNN().state_dict(), activation="relu")
    torch_layer = torch.nn.TransformerEncoderLayer(16, 2, 32).state_dict()  # fused in_proj: not this layout
    with pytest.raises(SpecError, match=r"self_attn\.in_proj_weight"):
        TransformerSpec.from_state_dict({f"layers.0.{k}": v for k, v in torch_layer.items()} | _digits(1), "relu")
    with pytest.raises(SpecError, match="swish2"):
        TransformerSpec.from_state_dict(_digits(), activation="swish2")
