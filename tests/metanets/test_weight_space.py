import pytest
import torch

from metanets import NetworkSpec, SpecError, WeightSpace
from tests.metanets.reference_nets import SmallCNN, random_state_dicts


@pytest.fixture
def cnn():
    sds = random_state_dicts(SmallCNN, 3)
    return NetworkSpec.from_state_dict(sds[0], activation="relu"), sds


def test_layout_and_round_trip(cnn):
    spec, sds = cnn
    ws = WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    assert ws.weights[0].shape == (3, 1, 16, 1, 3, 3)
    assert ws.weights[-1].shape == (3, 1, 10, 16)
    assert ws.biases[1].shape == (3, 1, 16)
    for a, b in zip(ws.to_state_dicts(), sds):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flat_round_trip(cnn):
    spec, sds = cnn
    ws = WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    flat = ws.flatten()
    assert flat.shape == (3, 4970)
    again = WeightSpace.from_flat(flat, spec)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(ws.tensors(), again.tensors()))
    with pytest.raises(SpecError, match="4970"):
        WeightSpace.from_flat(flat[:, :-1], spec)


def test_map_to_index_and_cat(cnn):
    spec, sds = cnn
    ws = WeightSpace.from_state_dicts(sds, spec)
    assert ws.double().dtype == torch.float64
    doubled = ws.map(lambda t: 2 * t)
    assert torch.equal(doubled.weights[2], 2 * ws.weights[2])
    assert ws[1].batch_size == 1
    assert WeightSpace.cat([ws[0], ws[1:]]).batch_size == 3


def test_shape_mismatch_names_the_key(cnn):
    spec, sds = cnn
    bad = dict(sds[1])
    bad["conv2.weight"] = torch.zeros(16, 16, 5, 5)
    with pytest.raises(SpecError, match=r"state dict 1: conv2.weight"):
        WeightSpace.from_state_dicts([sds[0], bad], spec)
    missing = {k: v for k, v in sds[0].items() if k != "fc.bias"}
    with pytest.raises(SpecError, match="fc.bias"):
        WeightSpace.from_state_dicts([missing], spec)


def test_validate_and_check_finite_name_the_tensor(cnn):
    spec, sds = cnn
    ws = WeightSpace.from_state_dicts(sds, spec)
    broken = WeightSpace(spec, ws.weights[:2] + (ws.weights[2][..., :2],) + ws.weights[3:], ws.biases)
    with pytest.raises(SpecError, match="conv3.weight"):
        broken.validate()
    nan = ws.weights[1].clone()
    nan[2, 0, 3, 4, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"conv2.weight.*\[2\]"):
        WeightSpace(spec, (ws.weights[0], nan) + ws.weights[2:], ws.biases).check_finite()
