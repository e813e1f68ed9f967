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


# INR augmentations (DWSNets): checked by running a fitted SIREN in float64 at transformed coordinates

import math  # noqa: E402

import pytest  # noqa: E402

from training.augment import input_transform, inr_augment  # noqa: E402
from zoo_ingest.generators import siren as siren_zoo  # noqa: E402


@pytest.fixture(scope="module")
def sirens():
    runs = siren_zoo.train_block([0, 1, 2], seed=0, options={"steps": 20})
    sds = [next(r.checkpoints).state_dict for r in runs]
    spec = NetworkSpec.from_state_dict(sds[0], activation="sine")
    return WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def _run(ws, coords):
    """Every network of `ws` at coordinates `coords` (B, P, 2) -> (B, P), float64."""
    out = []
    for k, sd in enumerate(ws.to_state_dicts()):
        model = siren_zoo.build_siren().double()
        model.load_state_dict(sd)
        with torch.no_grad():
            out.append(model(coords[k]).squeeze(-1))
    return torch.stack(out)


def _coords(b, seed=3):
    return torch.rand(b, 100, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_translation_through_the_first_bias_shifts_the_input(sirens):
    t = torch.tensor([[0.1, -0.05], [0.0, 0.2], [-0.3, 0.3]], dtype=torch.float64)
    x = _coords(3)
    moved = input_transform(sirens, None, t)
    torch.testing.assert_close(_run(moved, x), _run(sirens, x + t[:, None, :]), rtol=0, atol=1e-9)
    assert float((_run(moved, x) - _run(sirens, x)).abs().max()) > 1e-3  # it is not a symmetry


def test_rotation_and_scaling_of_the_first_weights_act_on_the_input(sirens):
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(enabled=True, permute=False, signs=False, inr_rotate_degrees=15, inr_scale=0.1,
                        inr_translate=0.1)
    moved = inr_augment(sirens, cfg, gen)
    # recover (A, t) from the weights: W_1' = W_1 A, b_1' = b_1 + W_1 t (W_1 has full column rank)
    w, b = sirens.weights[0][:, 0], sirens.biases[0][:, 0]
    a = torch.linalg.lstsq(w, moved.weights[0][:, 0]).solution
    t = torch.linalg.lstsq(w, (moved.biases[0][:, 0] - b)[..., None]).solution[..., 0]
    s = torch.linalg.det(a).sqrt()
    assert bool(((s - 1).abs() <= 0.1 + 1e-9).all()) and bool((t.abs() <= 0.1 + 1e-9).all())
    rot = a / s[:, None, None]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(3, 2, 2))
    angle = torch.atan2(rot[:, 1, 0], rot[:, 0, 0]).abs()
    assert bool((angle <= math.radians(15) + 1e-9).all()) and float(angle.max()) > 0
    x = _coords(3)
    torch.testing.assert_close(_run(moved, x), _run(sirens, x @ a.transpose(1, 2) + t[:, None, :]),
                               rtol=0, atol=1e-9)


def test_weight_dropout_zeroes_weights_only(sirens):
    cfg = AugmentConfig(enabled=True, weight_dropout=0.25)
    dropped = inr_augment(sirens, cfg, torch.Generator().manual_seed(1))
    zeros = sum(int((w == 0).sum()) for w in dropped.weights)
    total = sum(w.numel() for w in dropped.weights)
    assert 0.2 < zeros / total < 0.3
    for a, b in zip(dropped.weights, sirens.weights):
        assert bool(((a == 0) | (a == b)).all())
    for a, b in zip(dropped.biases, sirens.biases):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_phase_augmentation_keeps_the_function(sirens):
    cfg = AugmentConfig(enabled=True, phase=True)
    moved = augment(sirens, cfg, torch.Generator().manual_seed(2))
    assert float((moved.biases[0] - sirens.biases[0]).abs().max()) > 0.05
    x = _coords(3)
    torch.testing.assert_close(_run(moved, x), _run(sirens, x), rtol=0, atol=1e-9)


def test_inr_options_refuse_networks_they_do_not_fit():
    with pytest.raises(ValueError, match="MLP"):
        augment(_ws(), AugmentConfig(enabled=True, inr_translate=0.1), torch.Generator())
    sds = random_state_dicts(lambda: torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                                         torch.nn.Linear(4, 1)), 2)
    spec = NetworkSpec.from_state_dict(sds[0], activation="tanh")
    ws = WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    with pytest.raises(ValueError, match="inr_rotate_degrees.*3 inputs"):
        augment(ws, AugmentConfig(enabled=True, inr_rotate_degrees=10), torch.Generator())
    with pytest.raises(Exception, match="inr_scale"):
        AugmentConfig(inr_scale=1.5)
