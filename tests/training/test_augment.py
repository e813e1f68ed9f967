import torch

from metanets import NetworkSpec, WeightSpace, build_model
from tests.metanets.reference_nets import SmallCNN, random_state_dicts
from training.augment import augment
from training.config import AugmentConfig


def _ws():
    sds = random_state_dicts(SmallCNN, 4)
    spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
    return WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def test_augmentation_moves_weights_along_the_orbit():
    ws = _ws()
    gen = torch.Generator().manual_seed(0)
    moved = augment(ws, AugmentConfig(enabled=True, scale_log10_max=3), gen)
    assert max(float((a - b).abs().max()) for a, b in zip(moved.weights, ws.weights)) > 1.0
    torch.manual_seed(0)
    model = build_model("monomial_nfn", ws.spec, hidden=4).double()
    with torch.no_grad():  # the orbit member computes the same function, so an invariant model agrees
        torch.testing.assert_close(model(moved), model(ws), rtol=1e-9, atol=1e-9)
        stat = build_model("statnet", ws.spec).double()
        assert float((stat(moved) - stat(ws)).abs().max()) > 1e-3


def test_disabled_or_permutation_only():
    ws = _ws()
    gen = torch.Generator().manual_seed(1)
    assert augment(ws, AugmentConfig(enabled=False), gen) is ws
    perm_only = augment(ws, AugmentConfig(enabled=True, scale_log10_max=0), gen)
    # permutations keep each tensor's multiset of values
    for a, b in zip(perm_only.weights, ws.weights):
        torch.testing.assert_close(a.flatten(1).sort().values, b.flatten(1).sort().values)
