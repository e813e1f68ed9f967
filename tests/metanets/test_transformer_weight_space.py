"""TransformerWeightSpace: the per-head layout of docs/zoos.md, round trips, and errors naming the key."""

import pytest
import torch

from metanets import SpecError, TransformerSpec, TransformerWeightSpace
from tests.metanets.reference_transformer import DigitsStyle, PublicStyle, random_state_dicts


@pytest.fixture
def digits():
    sds = random_state_dicts(lambda: DigitsStyle(2), 3)
    return TransformerSpec.from_state_dict(sds[0], activation="relu"), sds


def test_per_head_layout_follows_the_zoo_docs(digits):
    spec, sds = digits
    ws = TransformerWeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    assert ws.wq.shape == (3, 1, 2, 2, 16, 8) and ws.wo.shape == (3, 1, 2, 2, 8, 16)
    assert ws.wa.shape == (3, 1, 2, 16, 32) and ws.wb.shape == (3, 1, 2, 32, 16) and ws.bb.shape == (3, 1, 2, 16)
    assert (ws.batch_size, ws.channels, ws.dtype) == (3, 1, torch.float64)
    sd = sds[2]
    for h in range(2):
        s_h = slice(8 * h, 8 * (h + 1))
        assert torch.equal(ws.wq[2, 0, 1, h], sd["layers.1.attn.queries.weight"][s_h, :].T)
        assert torch.equal(ws.wk[2, 0, 1, h], sd["layers.1.attn.keys.weight"][s_h, :].T)
        assert torch.equal(ws.wv[2, 0, 0, h], sd["layers.0.attn.values.weight"][s_h, :].T)
        assert torch.equal(ws.wo[2, 0, 0, h], sd["layers.0.attn.out_projection.weight"][:, s_h].T)
    assert torch.equal(ws.wa[2, 0, 1], sd["layers.1.fc1.weight"].T)
    assert torch.equal(ws.bb[2, 0, 0], sd["layers.0.fc2.bias"])
    assert float(ws.bq.abs().max()) == 0 and float(ws.bo.abs().max()) == 0, "absent attention biases hold zeros"


@pytest.mark.parametrize("make, heads", [(lambda: DigitsStyle(2), 2), (PublicStyle, 3)])
def test_state_dict_and_flat_round_trips(make, heads):
    sds = random_state_dicts(make, 3)
    spec = TransformerSpec.from_state_dict(sds[0], activation="relu", num_heads=heads)
    ws = TransformerWeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    for back, sd in zip(ws.to_state_dicts(), sds):
        assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    flat = ws.flatten()
    want = torch.stack([torch.cat([sd[k].flatten() for k in spec.keys]) for sd in sds])
    assert torch.equal(flat, want), "flat columns follow spec.keys order, each tensor row-major in torch layout"
    again = TransformerWeightSpace.from_flat(flat, spec)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(ws.tensors(), again.tensors()))
    columns = {k: v.numpy() for k, v in ws.to_columns().items()}  # what a table reader hands over
    assert torch.equal(TransformerWeightSpace.from_columns(columns, spec).flatten(), flat)
    with pytest.raises(SpecError, match=str(spec.num_params)):
        TransformerWeightSpace.from_flat(flat[:, :-1], spec)


def test_map_to_index_cat_and_tensors(digits):
    spec, sds = digits
    ws = TransformerWeightSpace.from_state_dicts(sds, spec)
    assert ws.dtype == torch.float32 and ws.double().dtype == torch.float64
    assert ws.double().float().dtype == torch.float32
    doubled = ws.map(lambda t: 2 * t)
    assert torch.equal(doubled.wv, 2 * ws.wv) and torch.equal(doubled.extras[0], 2 * ws.extras[0])
    assert ws[1].batch_size == 1 and torch.equal(ws[1].wq, ws.wq[1:2])
    assert TransformerWeightSpace.cat([ws[0], ws[1:]]).batch_size == 3
    keys = [k for k, _ in ws.tensors()]
    assert [k for k in keys if k in spec.param_shapes()] == list(spec.keys)
    assert "layers.0.attn.queries.bias" in keys, "absent biases are named after their module"


def test_bad_inputs_name_the_key(digits):
    spec, sds = digits
    bad = dict(sds[1])
    bad["layers.1.fc2.weight"] = torch.zeros(16, 31)
    with pytest.raises(SpecError, match=r"state dict 1: layers\.1\.fc2\.weight"):
        TransformerWeightSpace.from_state_dicts([sds[0], bad], spec)
    missing = {k: v for k, v in sds[0].items() if k != "layers.0.attn.keys.weight"}
    with pytest.raises(SpecError, match=r"layers\.0\.attn\.keys\.weight"):
        TransformerWeightSpace.from_state_dicts([missing], spec)
    ws = TransformerWeightSpace.from_state_dicts(sds, spec)
    with pytest.raises(SpecError, match=r"wk \(layers\.0\.attn\.keys\.weight\)"):
        ws.replace(wk=ws.wk[..., :4]).validate()
    with pytest.raises(SpecError, match="5 channels, expected 1"):
        ws.map(lambda t: t.expand(t.shape[0], 5, *t.shape[2:])).validate(channels=1)
    nan = ws.wk.clone()
    nan[2, 0, 1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"layers\.1\.attn\.keys\.weight: non-finite .* \[2\]"):
        ws.replace(wk=nan).check_finite()
    inf = list(ws.extras)
    inf[2] = inf[2].clone()
    inf[2][0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"position_embedding: non-finite .* \[0\]"):
        ws.replace(extras=tuple(inf)).check_finite()
    with pytest.raises(SpecError, match="one-channel"):
        ws.map(lambda t: t.expand(t.shape[0], 2, *t.shape[2:])).flatten()
