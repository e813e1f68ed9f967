"""Precise BatchNorm (training/batchnorm.py): the running statistics become the average over fixed batches under
the current weights, the model keeps its invariance (float64), and nothing changes without batches. The
training run that recomputes them before each validation is in tests/training/test_early_stopping.py."""


import pytest
import torch

from metanets import NetworkSpec, WeightSpace, build_model
from metanets.sine import DIGITS_SIREN_OMEGA_0, random_orbit_member
from training.batchnorm import BatchReservoir, batchnorm_layers, recompute_batchnorm
from zoo_ingest.generators import siren


@pytest.fixture(scope="module")
def inrs() -> WeightSpace:
    runs = siren.train_block(list(range(12)), seed=0, options={"steps": 10})
    sds = [next(r.checkpoints).state_dict for r in runs]
    return WeightSpace.from_state_dicts(sds, NetworkSpec.from_state_dict(sds[0], activation="sine"), torch.float64)


def _model(inrs, name="hnp_canon_phase"):
    torch.manual_seed(0)
    return build_model(name, inrs.spec, out_dim=10, hidden=4, standardize=True).double()


def _bn_inputs(model, batches) -> list[torch.Tensor]:
    """What enters the (single) BatchNorm for each batch, with the model in eval mode."""
    (bn,), seen = batchnorm_layers(model), []
    handle = bn.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    handle.remove()
    return seen


def test_running_statistics_become_the_batch_average_under_current_weights(inrs):
    model = _model(inrs)
    (bn,) = batchnorm_layers(model)
    bn.running_mean.fill_(5.0)  # stale: what a lagging moving average looks like
    bn.running_var.fill_(1e-8)
    batches = [inrs[0:4], inrs[4:8], inrs[8:12]]
    feats = _bn_inputs(model, batches)
    model.train()
    assert recompute_batchnorm(model, batches) == 12
    assert model.training and bn.momentum == 0.1  # the model's mode and the momentum come back
    expected_mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-10, atol=0)
    assert int(bn.num_batches_tracked) == 3


def test_recomputed_model_stays_invariant_to_the_whole_sine_group(inrs):
    model = _model(inrs)
    recompute_batchnorm(model, [inrs[0:6], inrs[6:12]])
    model.eval()
    moved = random_orbit_member(inrs, DIGITS_SIREN_OMEGA_0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        err = (model(moved) - model(inrs)).abs().max().item()
    assert err < 1e-9
    # and a wrong check is caught: the features differ under the orbit for a non-invariant reader
    flat = lambda ws: torch.cat([w.flatten(1) for w in ws.weights], 1)  # noqa: E731
    assert (flat(moved) - flat(inrs)).abs().max() > 1e-2


def test_nothing_changes_without_usable_batches_or_batchnorm(inrs):
    model = _model(inrs)
    (bn,) = batchnorm_layers(model)
    bn.running_mean.fill_(2.0)
    assert recompute_batchnorm(model, []) == 0
    assert recompute_batchnorm(model, [inrs[0:1]]) == 0  # a one-row batch has no variance: skipped
    assert torch.all(bn.running_mean == 2.0) and bn.momentum == 0.1
    plain = build_model("hnp_canon_phase", inrs.spec, out_dim=10, hidden=4).double()
    assert batchnorm_layers(plain) == [] and recompute_batchnorm(plain, [inrs[0:4]]) == 0


def test_reservoir_keeps_the_first_rows_only():
    spec = NetworkSpec.from_state_dict(siren.build_siren().state_dict(), activation="sine")
    ws = WeightSpace.from_state_dicts([siren.build_siren().state_dict() for _ in range(5)], spec, torch.float32)
    res = BatchReservoir(max_rows=8)
    for batch in (ws, ws[:1], ws, ws):
        res.offer(batch)
    assert res.rows == 8 and [b.batch_size for b in res.batches] == [5, 3]


# A training run that recomputes the statistics before validating (and after a worker restart):
# tests/training/test_early_stopping.py::test_training_stops_early_and_resumes_its_state_after_a_restart
