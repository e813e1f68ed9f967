"""The zoo networks themselves: architectures, builders, training outcomes (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metanets import NetworkSpec
from zoo_ingest.generate import build_digits_cnn, build_siren
from zoo_ingest.generators import cnn, siren
from zoo_ingest.generators.classifier import evaluate, train_classifier
from zoo_ingest.generators.digits import NUM_IMAGES, all_images, split
from zoo_ingest.generators.sampling import checkpoint_epochs, network_rng, torch_generator

CNN_KEYS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
            "fc.weight", "fc.bias")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/generate/conftest.py


def test_digits_splits_partition_the_images():
    train, test = split("train"), split("test")
    assert train.images.shape == (1437, 8, 8) and test.images.shape == (360, 8, 8)
    assert set(test.labels.tolist()) == set(range(10)) and set(train.labels.tolist()) == set(range(10))
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) == 1.0
    images, _ = all_images()
    rows = {bytes(img.numpy().tobytes()) for img in images}
    train_rows = {bytes(img.numpy().tobytes()) for img in train.images}
    test_rows = {bytes(img.numpy().tobytes()) for img in test.images}
    assert train_rows <= rows and test_rows <= rows
    # digits holds a few duplicate images; an image is in both splits only if it is duplicated.
    assert len(train_rows & test_rows) <= NUM_IMAGES - len(rows)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_cnn_has_the_small_cnn_zoo_shapes(activation):
    model = build_digits_cnn(activation)
    spec = NetworkSpec.from_state_dict(model.state_dict(), activation=activation)
    assert spec.keys == CNN_KEYS
    assert spec.num_params == 4970
    assert [layer.shape for layer in spec.layers] == [(16, 1, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (10, 16)]
    x = torch.rand(5, 8, 8)
    assert model(x).shape == (5, 10)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)), rtol=0, atol=0)


def test_checkpoint_schedule():
    assert checkpoint_epochs(1) == [0, 1]
    assert checkpoint_epochs(3) == [0, 1, 2, 3]
    assert checkpoint_epochs(10) == [0, 1, 2, 5, 10]
    assert checkpoint_epochs(17) == [0, 1, 2, 5, 10, 17]


def test_cnn_hparams_cover_their_ranges():
    samples = [cnn.sample_hparams(network_rng("digits-cnn", 0, k)) for k in range(300)]
    assert {s["activation"] for s in samples} == {"relu", "tanh"}
    assert {s["optimizer"] for s in samples} == {"sgd", "adam", "rmsprop"}
    lr = np.array([s["learning_rate"] for s in samples])
    assert 3e-4 <= lr.min() < 1e-3 and 2e-2 < lr.max() <= 5e-2
    epochs = {s["epochs"] for s in samples}
    assert epochs == set(range(1, 21))
    assert all(0.1 <= s["train_fraction"] <= 1.0 and 0.0 <= s["dropout"] <= 0.5 for s in samples)


def test_a_checkpoint_reproduces_its_recorded_metrics():
    run = cnn.train_network(11, seed=0, options={})
    checkpoints = list(run.checkpoints)
    assert [c.step for c in checkpoints] == checkpoint_epochs(run.hparams["epochs"])
    final = checkpoints[-1]
    model = build_digits_cnn(run.activation)
    model.load_state_dict(final.state_dict)
    test = split("test")
    accuracy, loss = evaluate(model, test.images, test.labels)
    assert accuracy == final.metrics["test_accuracy"] and loss == final.metrics["test_loss"]
    assert checkpoints[0].metrics["test_accuracy"] != final.metrics["test_accuracy"]  # it trained


def test_a_diverging_network_keeps_finite_weights_and_stops():
    model = build_digits_cnn("relu")
    generator = torch_generator(network_rng("test", 0, 0))
    cnn.init_weights(model, 1.0, generator)
    hparams = dict(optimizer="sgd", learning_rate=1e6, l2=0.0, dropout=0.0, train_fraction=1.0, epochs=10)
    checkpoints = list(train_classifier(model, hparams, generator, batch_size=64))
    steps = [c.step for c in checkpoints]
    assert steps == sorted(set(steps)) and steps[-1] < 10  # stopped early, no repeated step
    for c in checkpoints:
        assert all(torch.isfinite(t).all() for t in c.state_dict.values())
        assert all(math.isfinite(v) for v in c.metrics.values())


def test_siren_reaches_its_psnr_target_and_the_file_reproduces_it():
    run = siren.train_network(4, seed=0, options={"copies": 1})
    (checkpoint,) = list(run.checkpoints)
    assert checkpoint.metrics["psnr"] >= siren.PSNR_TARGET
    spec = NetworkSpec.from_state_dict(checkpoint.state_dict, activation="sine")
    assert [layer.shape for layer in spec.layers] == [(32, 2), (32, 32), (1, 32)]
    images, labels = all_images()
    image = images[run.hparams["image_index"]]
    assert run.label == int(labels[run.hparams["image_index"]])
    model = build_siren()
    coords = siren.pixel_coordinates()
    model.load_state_dict(siren.shared_init(0))  # the shared recipe: every network starts here
    with torch.no_grad():
        before = siren.psnr(model(coords), image.reshape(-1, 1))
        model.load_state_dict(checkpoint.state_dict)
        after = siren.psnr(model(coords), image.reshape(-1, 1))
    assert before < 20.0  # the target is met by fitting, not by the initialisation
    assert after == checkpoint.metrics["psnr"]


def test_siren_omega_lives_in_the_forward_function():
    model = build_siren()
    coords = siren.pixel_coordinates()
    slow = build_siren(omega_0=1.0)
    slow.load_state_dict(model.state_dict())
    with torch.no_grad():
        first = torch.sin(30.0 * model.layers[0](coords))
        hidden = torch.sin(30.0 * model.layers[1](first))
        torch.testing.assert_close(model(coords), model.layers[2](hidden), rtol=0, atol=0)
        assert not torch.allclose(model(coords), slow(coords))


def test_siren_copies_share_image_label_and_split():
    copies = 3
    runs = [siren.train_network(k, seed=2, options={"copies": copies}) for k in range(60)]
    by_image: dict[int, list] = {}
    for run in runs:
        by_image.setdefault(run.hparams["image_index"], []).append(run)
    assert len(by_image) == 20
    for group in by_image.values():
        assert len(group) == copies
        assert len({(r.split, r.label) for r in group}) == 1
        assert sorted(r.hparams["copy"] for r in group) == [0, 1, 2]
    splits = [group[0].split for group in by_image.values()]
    assert splits.count("train") == 16 and splits.count("val") == 2 and splits.count("test") == 2
