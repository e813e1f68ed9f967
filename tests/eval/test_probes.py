"""INR probes (eval.probes): exact invariance of the invariant readers in float64, and a run on a table."""

from __future__ import annotations

import pytest
import torch

from eval import probes
from eval.evaluate import orbit_conditions
from metanets import NetworkSpec, WeightSpace
from metanets.sine import DIGITS_SIREN_OMEGA_0, random_orbit_member
from zoo_ingest.generators import siren

TOL = 1e-9


@pytest.fixture(scope="module")
def fitted() -> WeightSpace:
    runs = siren.train_block(list(range(6)), seed=0, options={"steps": 20})
    sds = [next(r.checkpoints).state_dict for r in runs]
    return WeightSpace.from_state_dicts(sds, NetworkSpec.from_state_dict(sds[0], activation="sine"), torch.float64)


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    from zoo_ingest import ingest
    from zoo_ingest.generate import generate

    root = tmp_path_factory.mktemp("siren")
    generate("digits-siren", str(root / "zoo"), 60, options={"steps": 20}, workers=0, progress=False, summary=False)
    ingest(str(root / "zoo"), str(root / "table"), format="checkpoints", split_file=str(root / "zoo/metadata.csv"),
           use_ray=False, progress=False)
    return str(root / "table")


def test_invariant_readers_ignore_the_whole_orbit(fitted):
    moved = random_orbit_member(fitted, DIGITS_SIREN_OMEGA_0, torch.Generator().manual_seed(0))
    assert (torch.tensor(probes.flat(moved)) - torch.tensor(probes.flat(fitted))).abs().max() > 1e-2
    for read in (lambda ws: probes.invariant_features(ws, DIGITS_SIREN_OMEGA_0),
                 lambda ws: probes.render(ws, DIGITS_SIREN_OMEGA_0)):
        torch.testing.assert_close(torch.tensor(read(moved)), torch.tensor(read(fitted)), rtol=0, atol=TOL)


def test_invariant_features_are_not_constant(fitted):
    feats = torch.tensor(probes.invariant_features(fitted, DIGITS_SIREN_OMEGA_0))
    assert feats.shape[0] == 6 and (feats.std(dim=0) > 1e-6).sum() > feats.shape[1] // 2


def test_render_matches_the_siren_module(fitted):
    model = siren.build_siren().double()
    model.load_state_dict(fitted.to_state_dicts()[2])
    with torch.no_grad():
        axis = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64)  # siren.pixel_coordinates, in float64
        grid = torch.stack([g.reshape(-1) for g in torch.meshgrid(axis, axis, indexing="ij")], dim=1)
        expected = model(grid).squeeze(-1)
    torch.testing.assert_close(torch.tensor(probes.render(fitted, DIGITS_SIREN_OMEGA_0)[2]), expected, rtol=0,
                               atol=TOL)


def test_sine_networks_get_the_orbit_condition():
    assert "orbit" in orbit_conditions("perm_sign", activation="sine")
    assert "orbit" not in orbit_conditions("perm_sign", activation="tanh")
    assert orbit_conditions("perm_sign", activation="sine", omega_0=10.0)["orbit"]["omega_0"] == 10.0


def test_probes_run_on_a_table(small_table, capsys):
    results = probes.run_probes(small_table, max_train=40)
    assert list(results) == list(probes.CONDITIONS)
    for condition in results.values():
        assert list(condition) == list(probes.PROBES) and all(0.0 <= v <= 1.0 for v in condition.values())
    assert probes.main([small_table, "--max-train", "30"]) == 0
    printed = capsys.readouterr().out
    assert "rendered pixels, LR" in printed and "orbit" in printed


def test_probes_refuse_bad_input(small_table, tmp_path):
    with pytest.raises(SystemExit):
        probes.main([small_table, "--omega-0", "0"])
    with pytest.raises(ValueError, match="unknown condition 'rotated'"):
        probes.run_probes(small_table, conditions=("rotated",))


def test_evaluate_reports_the_orbit_condition_for_sine_models(fitted):
    from eval.evaluate import evaluate
    from metanets import build_model

    torch.manual_seed(0)
    model = build_model("monomial_nfn_phase", fitted.spec, out_dim=10)
    labels = torch.arange(fitted.batch_size) % 10
    card = {"task": "inr_classification", "loss": "ce", "omega_0": DIGITS_SIREN_OMEGA_0}
    result = evaluate(model, card, lambda: iter([(fitted.float(), labels)]), audit_samples=2)
    assert list(result["robustness"]) == ["permuted", "signs", "orbit"]
    assert result["robustness"]["orbit"]["accuracy"] == result["clean"]["accuracy"]
    assert result["audit"]["max"] < 1e-6


@pytest.fixture(scope="module")
def copies_table(tmp_path_factory):
    from zoo_ingest import ingest
    from zoo_ingest.generate import generate

    root = tmp_path_factory.mktemp("siren-copies")
    # independent inits: the copies of an image differ (shared-init copies are identical refits, one model_id)
    generate("digits-siren", str(root / "zoo"), 60, options={"steps": 5, "init": "independent", "size": 8}, copies=3,
             workers=0, progress=False, summary=False)
    ingest(str(root / "zoo"), str(root / "table"), format="checkpoints", split_file=str(root / "zoo/metadata.csv"),
           use_ray=False, progress=False)
    return str(root / "table")


def _train_hparams(table, subset):
    import json

    import pyarrow.dataset as ds

    afs, _ = table.location.arrow()
    rows = ds.dataset(table.files("train"), filesystem=afs, format="parquet").to_table(
        columns=["model_id", "hparams"], filter=subset).to_pylist()
    return [json.loads(r["hparams"]) for r in rows]


def test_inr_subsets_select_copies_and_images_and_nest(copies_table):
    from zoo_ingest import open_table

    table = open_table(copies_table)
    every = _train_hparams(table, None)
    images = sorted({h["image_index"] for h in every})
    assert {h["copy"] for h in every} == {0, 1, 2} and len(every) == 3 * len(images)
    assert probes.inr_subset(table, "train") is None

    first = _train_hparams(table, probes.inr_subset(table, "train", max_copies=1))
    assert sorted(h["image_index"] for h in first) == images and {h["copy"] for h in first} == {0}
    two = _train_hparams(table, probes.inr_subset(table, "train", max_copies=2, max_images=4))
    assert sorted({h["image_index"] for h in two}) == images[:4] and len(two) == 8
    assert {(h["image_index"], h["copy"]) for h in _train_hparams(table, probes.inr_subset(
        table, "train", max_copies=1, max_images=4))} < {(h["image_index"], h["copy"]) for h in two}
    ws, labels = probes.load_split(table, "train", filter=probes.inr_subset(table, "train", max_images=4))
    assert ws.batch_size == len(labels) == 12
    with pytest.raises(ValueError, match="max_copies must be at least 1"):
        probes.inr_subset(table, "train", max_copies=0)
