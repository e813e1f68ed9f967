"""digits-siren's two recipes (shared / independent init), batched fitting, and their options (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cluster.cli import main
from zoo_ingest.generate import GenerateError, generate
from zoo_ingest.generators import ZOOS, siren
from zoo_ingest.generators.digits import all_images
from zoo_ingest.generators.inr_fit import upsample
from zoo_ingest.generators.sampling import split_of_rank

INDEPENDENT = {"init": "independent", "copies": 3, "size": 12, "steps": 30}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/generate/conftest.py


def weights(run) -> dict[str, torch.Tensor]:
    (checkpoint,) = list(run.checkpoints)
    return checkpoint.state_dict


@pytest.mark.parametrize("options", [{"steps": 30}, INDEPENDENT], ids=["shared", "independent"])
def test_a_network_does_not_depend_on_its_block(options):
    block = siren.train_block([9, 2, 5, 6], seed=3, options=options)
    for k, run in zip([9, 2, 5, 6], block):
        alone = siren.train_network(k, seed=3, options=options)
        assert run.hparams == alone.hparams and run.split == alone.split and run.label == alone.label
        a, b = weights(run), weights(alone)
        assert all(torch.equal(a[key], b[key]) for key in a), f"network {k} differs when fitted alone"


def test_registered_as_a_block_trainer():
    zoo = ZOOS["digits-siren"]
    assert zoo.train_block is siren.train_block and zoo.version >= 2
    assert zoo.max_networks({"copies": 2}) == 2 * 1797


def test_shared_recipe_starts_every_network_from_one_init_per_seed():
    start = [weights(r) for r in siren.train_block([0, 1, 7], seed=0, options={"steps": 0})]
    assert all(torch.equal(start[0][k], s[k]) for s in start[1:] for k in s)
    other = weights(siren.train_network(0, seed=1, options={"steps": 0}))
    assert not torch.equal(other["layers.1.weight"], start[0]["layers.1.weight"])
    fitted = [weights(r) for r in siren.train_block([0, 1], seed=0, options={})]
    assert not torch.equal(fitted[0]["layers.1.weight"], fitted[1]["layers.1.weight"])


def test_independent_recipe_draws_fresh_inits_and_moves_copies():
    start = [weights(r) for r in siren.train_block([0, 1], seed=0, options={**INDEPENDENT, "steps": 0})]
    assert not torch.equal(start[0]["layers.0.weight"], start[1]["layers.0.weight"])
    recipe = siren.resolve_options(INDEPENDENT)
    targets, indices, ranks = siren.target_images([0, 1, 2, 3], 0, recipe)
    assert targets.shape == (4, 12, 12) and indices[:3] == [indices[0]] * 3 and ranks == [0, 0, 0, 1]
    images, _ = all_images()
    torch.testing.assert_close(targets[0], upsample(images[indices[0]][None], 12)[0], rtol=0, atol=0)
    assert (targets[1] - targets[0]).abs().max() > 0.05 and (targets[2] - targets[1]).abs().max() > 0.05
    assert 0.0 <= float(targets.min()) and float(targets.max()) <= 1.0


def test_copies_and_augmentations_share_their_image_split():
    options = {"init": "independent", "copies": 4, "size": 8, "steps": 0}
    runs = siren.train_block(list(range(40)), seed=0, options=options)
    by_image: dict[int, set] = {}
    for run in runs:
        by_image.setdefault(run.hparams["image_index"], set()).add(run.split)
    assert len(by_image) == 10 and all(len(s) == 1 for s in by_image.values())
    assert [r.split for r in runs[::4]] == [split_of_rank(r) for r in range(10)]


def test_default_recipes_resolve():
    assert siren.resolve_options({})["size"] == 8 and siren.resolve_options({})["steps"] == 100
    independent = siren.resolve_options({"init": "independent"})
    assert (independent["size"], independent["augment"], independent["stop_psnr"]) == (28, True, siren.PSNR_TARGET)


def test_fitting_stops_at_the_psnr_target_and_records_psnr():
    options = {"init": "independent", "size": 8, "steps": 400}
    runs = siren.train_block([0, 1, 2], seed=0, options=options)
    assert all(r.hparams["steps_taken"] < 400 for r in runs)  # 8x8 digits reach 40 dB in ~100 steps
    for run in runs:
        (checkpoint,) = list(run.checkpoints)
        taken = run.hparams["steps_taken"]
        assert 0 < taken <= 400
        assert siren.PSNR_TARGET - 0.01 <= checkpoint.metrics["psnr"] < siren.PSNR_TARGET + 3.0


def test_networks_below_the_psnr_floor_keep_their_psnr_but_no_label():
    runs = siren.train_block([0, 1, 2, 3], seed=0, options={"steps": 5, "psnr_floor": 200.0})
    assert all(r.label is None and r.hparams["digit"] in range(10) for r in runs)
    assert all(np.isfinite(next(r.checkpoints).metrics["psnr"]) for r in runs)
    kept = siren.train_block([0], seed=0, options={"steps": 5, "psnr_floor": -100.0})[0]
    assert kept.label == kept.hparams["digit"]


@pytest.mark.parametrize(
    "options,message",
    [
        ({"init": "independent", "size": 4}, "--image-size must be an integer >= 8"),
        ({"copies": 0}, "--copies must be a positive integer"),
        ({"init": "random"}, "--init must be one of shared, independent"),
        ({"steps": -1}, "--steps must be an integer >= 0"),
        ({"psnr_floor": "high"}, "--psnr-floor must be a number"),
        ({"width": 3}, "unknown option(s) ['width']"),
    ],
)
def test_impossible_options_name_the_option(options, message):
    with pytest.raises(GenerateError) as info:
        siren.resolve_options(options)
    assert message in str(info.value)


def test_more_networks_than_images_times_copies(tmp_path):
    with pytest.raises(GenerateError, match="at most 3594 networks"):
        generate("digits-siren", str(tmp_path / "z"), 3595, copies=2, workers=0, progress=False, summary=False)
    with pytest.raises(GenerateError, match="--copies 2 at most 3594 networks"):
        siren.train_network(3594, 0, {"copies": 2})
    with pytest.raises(GenerateError, match="--image-size"):
        generate("digits-siren", str(tmp_path / "z"), 2, options={"size": 7}, workers=0, progress=False)
    with pytest.raises(GenerateError, match="option 'init' does not apply to digits-cnn"):
        generate("digits-cnn", str(tmp_path / "z"), 2, options={"init": "shared"}, workers=0, progress=False)
    assert not (tmp_path / "z").exists()


def test_cli_flags_reach_the_manifest_and_rows(tmp_path, capsys):
    out = tmp_path / "zoo"
    argv = ["generate", "digits-siren", "--out", str(out), "--n", "4", "--copies", "2", "--init", "independent",
            "--image-size", "10", "--steps", "20", "--psnr-floor", "30", "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    assert "digits-siren: 4 networks" in capsys.readouterr().out
    found = json.loads((out / "generation.json").read_text())
    assert found["options"] == {"augment": None, "copies": 2, "init": "independent", "psnr_floor": 30.0,
                                "size": 10, "steps": 20}
    lines = (out / "metadata.csv").read_text().splitlines()
    header = lines[0].split(",")
    for column in ("psnr", "hparam.init", "hparam.size", "hparam.steps_taken", "hparam.digit"):
        assert column in header
    # a rerun with another recipe into the same folder is refused, naming the options
    argv[argv.index("independent")] = "shared"
    assert main(argv) == 2
    assert "options: folder has" in capsys.readouterr().err
