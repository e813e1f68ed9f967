"""The batched path: a block of networks trained at once behaves like each network trained alone (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from zoo_ingest.generators import cnn, transformer
from zoo_ingest.generators.batched import train_classifiers
from zoo_ingest.generators.batched_optim import optimizer_order
from zoo_ingest.generators.classifier import snapshot, train_classifier
from zoo_ingest.generators.sampling import network_rng, torch_generator

# Different optimisers, dropout on and off, subsets of different sizes (partial last batches: 0.1 of the
# 1,437 train images is 144 = 2 * 64 + 16), different epoch counts (so some networks finish first).
HPARAMS = [
    dict(optimizer="adam", learning_rate=3e-3, l2=1e-4, dropout=0.2, train_fraction=0.1, epochs=3),
    dict(optimizer="sgd", learning_rate=2e-2, l2=0.0, dropout=0.0, train_fraction=0.15, epochs=1),
    dict(optimizer="rmsprop", learning_rate=1e-3, l2=1e-3, dropout=0.3, train_fraction=0.12, epochs=2),
    dict(optimizer="sgd", learning_rate=1e-2, l2=1e-5, dropout=0.1, train_fraction=0.1, epochs=2),
    dict(optimizer="adam", learning_rate=1e-3, l2=0.0, dropout=0.0, train_fraction=0.2, epochs=1),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/generate/conftest.py


def cnn_start(i: int, activation: str = "relu"):
    model = cnn.build_digits_cnn(activation)
    generator = torch_generator(network_rng("batched-test", 0, i))
    cnn.init_weights(model, 1.0, generator)
    return model, generator


def transformer_start(i: int, depth: int):
    model = transformer.build_digits_transformer(depth)
    generator = torch_generator(network_rng("batched-test", 1, i))
    transformer.init_weights(model, 1.0, generator)
    return model, generator


def alone_and_together(start, family, hparams):
    """Checkpoints of each network trained alone (per-network loop) and of all trained in one block."""
    alone = []
    for i, h in enumerate(hparams):
        model, generator = start(i)
        alone.append(list(train_classifier(model, h, generator, batch_size=64)))
    starts = [start(i) for i in range(len(hparams))]
    together = train_classifiers(family, [snapshot(m) for m, _ in starts], hparams, [g for _, g in starts], 64)
    return alone, together


def assert_same_training(alone, together, atol):
    for a, t in zip(alone, together, strict=True):
        assert [c.step for c in t] == [c.step for c in a]
        for key, value in a[0].state_dict.items():  # initial weights: bit-identical
            assert torch.equal(t[0].state_dict[key], value), key
        for ca, ct in zip(a, t):
            assert list(ct.state_dict) == list(ca.state_dict)
            for key, value in ca.state_dict.items():
                assert ct.state_dict[key].shape == value.shape and ct.state_dict[key].dtype == torch.float32
                torch.testing.assert_close(ct.state_dict[key], value, rtol=0, atol=atol)
            assert ct.metrics.keys() == ca.metrics.keys()
            for name, value in ca.metrics.items():
                assert ct.metrics[name] == pytest.approx(value, abs=1e-4), name


def test_a_cnn_block_trains_each_network_as_it_trains_alone():
    # Same randomness (subset, batch order, dropout masks) and the same optimiser formulas: only the float
    # rounding of the batched kernels differs, so after a few epochs the weights agree to ~1e-6.
    alone, together = alone_and_together(cnn_start, cnn.family("relu"), HPARAMS)
    assert_same_training(alone, together, atol=1e-4)
    first, last = together[0][0].state_dict, together[0][-1].state_dict
    moved = max((last[k] - first[k]).abs().max() for k in first)
    assert moved > 1e-2  # it trained


def test_a_tanh_cnn_block_matches_too():
    alone, together = alone_and_together(lambda i: cnn_start(i, "tanh"), cnn.family("tanh"), HPARAMS[:3])
    assert_same_training(alone, together, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2])
def test_a_transformer_block_trains_each_network_as_it_trains_alone(depth):
    hparams = [dict(h, dropout=min(h["dropout"], 0.3)) for h in HPARAMS[:4]]
    alone, together = alone_and_together(lambda i: transformer_start(i, depth), transformer.family(depth), hparams)
    assert_same_training(alone, together, atol=1e-3)


def test_train_block_keeps_each_networks_hparams_and_initial_weights():
    ids = [3, 8, 1]  # not sorted, mixed activations
    runs = cnn.train_block(ids, seed=2, options={})
    assert len(runs) == len(ids)
    assert len({r.activation for r in cnn.train_block(list(range(8)), seed=2, options={})}) == 2
    for k, run in zip(ids, runs):
        alone = cnn.train_network(k, seed=2, options={})
        assert run.hparams == alone.hparams and run.activation == alone.activation and run.split == alone.split
        first = next(iter(alone.checkpoints))
        mine = list(run.checkpoints)
        assert mine[0].step == 0
        assert all(torch.equal(mine[0].state_dict[key], v) for key, v in first.state_dict.items())
        assert [c.step for c in mine] == [c.step for c in [first, *alone.checkpoints]]


def test_transformer_train_block_keeps_hparams_and_initial_weights():
    ids = list(range(4))
    runs = transformer.train_block(ids, seed=0, options={})
    assert {r.hparams["num_layers"] for r in runs} == {1, 2}  # both depths in one block
    for k, run in zip(ids, runs):
        alone = transformer.train_network(k, seed=0, options={})
        assert run.hparams == alone.hparams
        first, mine = next(iter(alone.checkpoints)), next(iter(run.checkpoints))
        assert mine.step == 0 and list(mine.state_dict) == list(first.state_dict)
        assert all(torch.equal(mine.state_dict[key], v) for key, v in first.state_dict.items())


def test_a_diverging_network_in_a_block_ends_on_finite_weights_and_leaves_the_others_alone():
    hparams = [dict(HPARAMS[0], epochs=4), dict(HPARAMS[1], learning_rate=1e6, epochs=4), HPARAMS[2]]
    alone, together = alone_and_together(cnn_start, cnn.family("relu"), hparams)
    steps = [c.step for c in together[1]]
    assert steps == sorted(set(steps)) and steps[-1] < 4  # stopped early, no repeated step
    assert steps == [c.step for c in alone[1]]
    for checkpoints in together:
        for c in checkpoints:
            assert all(torch.isfinite(t).all() for t in c.state_dict.values())
            assert all(math.isfinite(v) for v in c.metrics.values())
    assert_same_training([alone[0], alone[2]], [together[0], together[2]], atol=1e-4)


def test_optimizer_order_groups_networks_and_rejects_unknown_ones():
    assert optimizer_order(["adam", "sgd", "rmsprop", "sgd"]) == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="unknown optimiser 'lbfgs'"):
        optimizer_order(["sgd", "lbfgs"])
