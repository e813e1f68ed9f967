import torch

from metanets import NetworkSpec, WeightSpace, symmetry
from metanets.layers.stats import STAT_NAMES, tensor_stats, weight_stats
from tests.metanets.reference_nets import SmallCNN, random_state_dicts


def test_tensor_stats_match_torch_reference():
    x = torch.randn(5, 2304, dtype=torch.float64)
    q = torch.quantile(x, torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), dim=1).T
    ref = torch.cat([x.mean(1, keepdim=True), x.var(1, unbiased=False)[:, None], q], dim=1)
    torch.testing.assert_close(tensor_stats(x), ref, rtol=1e-12, atol=1e-12)
    assert len(STAT_NAMES) == 7


def test_weight_stats_are_permutation_invariant_but_not_scale_invariant():
    sds = random_state_dicts(SmallCNN, 3)
    spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
    ws = WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    perm = symmetry.sample(spec, 3, scale=None, generator=gen)
    scaled = symmetry.sample(spec, 3, scale=(2.0, 10.0), generator=gen)
    base = weight_stats(ws)
    assert base.shape == (3, 8 * 7)
    torch.testing.assert_close(weight_stats(symmetry.act(perm, ws)), base, rtol=1e-12, atol=1e-12)
    assert float((weight_stats(symmetry.act(scaled, ws)) - base).abs().max()) > 1e-3


def test_tensor_stats_of_bfloat16_weights_are_computed_in_float32():
    x = torch.randn(3, 2304)
    ref = tensor_stats(x.to(torch.bfloat16).float())
    out = tensor_stats(x.to(torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
