"""Bad input to `generate` and `metazoo generate`: clear errors, nothing already written is lost."""

from __future__ import annotations

import json
import os

import pytest

from cluster.cli import main
from zoo_ingest.generate import GenerateError, generate


def quiet(zoo, out, n, seed=0, **kw):
    return generate(zoo, str(out), n, seed, workers=0, progress=False, summary=False, **kw)


def snapshot(folder) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.mark.parametrize(
    "zoo,n,kw,message",
    [
        ("digits-mlp", 3, {}, "unknown zoo 'digits-mlp'; choose from digits-cnn, digits-siren, digits-transformer"),
        ("digits-cnn", 0, {}, "n must be an integer >= 1, got 0"),
        ("digits-cnn", -4, {}, "n must be an integer >= 1, got -4"),
        ("digits-cnn", 2.5, {}, "n must be an integer >= 1, got 2.5"),
        ("digits-cnn", 3, {"seed": -1}, "seed must be an integer >= 0"),
        ("digits-cnn", 3, {"networks_per_task": 0}, "networks_per_task must be an integer >= 1"),
        ("digits-cnn", 3, {"copies": 2}, "--copies applies to digits-siren only"),
        ("digits-siren", 3, {"copies": 0}, "copies must be a positive integer"),
        ("digits-siren", 1798, {}, "at most 1797 networks"),
        ("digits-cnn", 3, {"block_size": 0}, "block_size must be an integer >= 1, got 0"),
        ("digits-cnn", 3, {"block_size": 2.5}, "block_size must be an integer >= 1, got 2.5"),
        ("digits-cnn", 3, {"block_memory_mb": 0}, "block_memory_mb must be an integer >= 1, got 0"),
        ("digits-cnn", 3, {"block_size": 4, "networks_per_task": 2}, "networks_per_task applies to the per-network"),
        ("digits-cnn", 3, {"options": {"activation": "gelu"}}, "--activation must be one of relu, tanh, got 'gelu'"),
        ("digits-siren", 3, {"options": {"activation": "relu"}}, "option 'activation' does not apply to digits-siren"),
        ("digits-siren", 3, {"options": {"copies": 2}},
         "copies is its own argument (generate(..., copies=K), --copies K)"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, zoo, n, kw, message):
    out = tmp_path / "zoo"
    seed = kw.pop("seed", 0)
    with pytest.raises(GenerateError) as info:
        quiet(zoo, out, n, seed, **kw)
    assert message in str(info.value)
    assert not out.exists()


def test_unusable_output_urls(tmp_path):
    with pytest.raises(GenerateError, match="cannot open output location nosuchfs://zoo"):
        quiet("digits-cnn", "nosuchfs://zoo", 2)
    with pytest.raises(GenerateError, match="out must be a folder path or URL"):
        quiet("digits-cnn", "  ", 2)


def test_a_zoo_without_a_batched_path_refuses_a_block_size(tmp_path, monkeypatch):
    import dataclasses

    from zoo_ingest.generators import ZOOS

    monkeypatch.setitem(ZOOS, "digits-cnn", dataclasses.replace(ZOOS["digits-cnn"], train_block=None))
    with pytest.raises(GenerateError, match="block_size 4: digits-cnn has no batched path; use block_size 1"):
        quiet("digits-cnn", tmp_path / "zoo", 2, block_size=4)
    assert not (tmp_path / "zoo").exists()


def test_a_folder_of_one_path_is_not_extended_by_the_other(tmp_path):
    quiet("digits-cnn", tmp_path, 2, block_size=2)
    before = snapshot(tmp_path)
    with pytest.raises(GenerateError, match=r"block_size: folder has 2, this run 1"):
        quiet("digits-cnn", tmp_path, 3, block_size=1)
    with pytest.raises(GenerateError, match=r"block_size: folder has 2, this run 3"):
        quiet("digits-cnn", tmp_path, 3, block_size=3)
    assert snapshot(tmp_path) == before
    again = quiet("digits-cnn", tmp_path, 3)  # no block size: the folder's
    assert again.trained == (2,)
    # A folder written before block sizes were recorded is a per-network one.
    quiet("digits-siren", tmp_path / "old", 1)
    manifest = json.loads((tmp_path / "old" / "generation.json").read_text())
    del manifest["block_size"], manifest["block_version"]
    (tmp_path / "old" / "generation.json").write_text(json.dumps(manifest))
    assert quiet("digits-siren", tmp_path / "old", 2, block_size=1).trained == (1,)


def test_negative_workers_are_refused(tmp_path):
    with pytest.raises(GenerateError, match="workers must be an integer >= 0"):
        generate("digits-cnn", str(tmp_path / "zoo"), 2, workers=-1, progress=False)


def test_output_location_that_is_a_file(tmp_path):
    target = tmp_path / "zoo.txt"
    target.write_text("not a folder")
    with pytest.raises(GenerateError, match="is a file, not a folder"):
        quiet("digits-cnn", target, 2)
    with pytest.raises(GenerateError, match="cannot write to output location"):
        quiet("digits-cnn", target / "inside", 2)
    assert target.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_location(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(GenerateError, match="cannot write to output location"):
            quiet("digits-cnn", locked / "zoo", 2)
    finally:
        locked.chmod(0o700)


def test_a_folder_with_other_files_is_not_mixed_into(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GenerateError, match="no generation.json: it is not a generated zoo"):
        quiet("digits-siren", tmp_path, 2)
    assert snapshot(tmp_path) == {"notes.txt": b"mine"}


def test_a_different_seed_or_zoo_into_the_same_folder_is_refused(tmp_path):
    quiet("digits-siren", tmp_path, 2, seed=0)
    before = snapshot(tmp_path)
    with pytest.raises(GenerateError, match=r"seed: folder has 0, this run 1"):
        quiet("digits-siren", tmp_path, 2, seed=1)
    with pytest.raises(GenerateError, match=r"options: folder has \{[^}]*'copies': 1,.*this run \{[^}]*'copies': 2,"):
        quiet("digits-siren", tmp_path, 2, copies=2)
    with pytest.raises(GenerateError, match=r"zoo: folder has 'digits-siren', this run 'digits-cnn'"):
        quiet("digits-cnn", tmp_path, 2)
    assert snapshot(tmp_path) == before


def test_a_smaller_n_than_the_folder_holds_is_refused(tmp_path):
    quiet("digits-siren", tmp_path, 3)
    with pytest.raises(GenerateError, match="holds files of networks up to 2 but n is 2"):
        quiet("digits-siren", tmp_path, 2)


def test_a_corrupt_manifest_is_reported(tmp_path):
    quiet("digits-siren", tmp_path, 1)
    (tmp_path / "generation.json").write_text('{"format": "metazoo-gen')
    with pytest.raises(GenerateError, match="generation.json is not valid JSON"):
        quiet("digits-siren", tmp_path, 1)


def test_manifest_records_the_zoo(tmp_path):
    quiet("digits-siren", tmp_path, 2, seed=7, copies=2)
    found = json.loads((tmp_path / "generation.json").read_text())
    options = {"augment": None, "copies": 2, "init": "shared", "psnr_floor": None, "size": None, "steps": None}
    assert (found["zoo"], found["seed"], found["options"], found["networks"]) == ("digits-siren", 7, options, 2)
    assert found["generator_version"] == 2


def test_cli_reports_errors_and_runs(tmp_path, capsys):
    assert main(["generate", "digits-mlp", "--out", str(tmp_path / "a")]) == 2
    assert "metazoo generate: error: unknown zoo 'digits-mlp'" in capsys.readouterr().err
    assert main(["generate", "digits-cnn", "--out", str(tmp_path / "a"), "--n", "0"]) == 2
    assert "n must be an integer >= 1" in capsys.readouterr().err
    out = tmp_path / "b"
    argv = ["generate", "digits-siren", "--out", str(out), "--n", "4", "--copies", "2", "--workers", "0",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "digits-siren: 4 networks (4 trained now, 0 already done)" in printed
    assert "final psnr: min" in printed
    lines = (out / "metadata.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("file,network_id,step,split,label,activation,psnr")


def test_a_fixed_activation_changes_only_the_activation(tmp_path):
    from zoo_ingest.generators import cnn

    for k in range(6):
        sampled, _, _ = cnn._start(k, 3)
        fixed, _, model = cnn._start(k, 3, activation="tanh")
        assert fixed == {**sampled, "activation": "tanh"} and model.activation == "tanh"
    # recorded only when given: a zoo made before the option existed keeps its manifest, and resumes
    quiet("digits-cnn", tmp_path / "mixed", 1, options={"activation": None})
    assert json.loads((tmp_path / "mixed" / "generation.json").read_text())["options"] == {}
    quiet("digits-cnn", tmp_path / "tanh", 2, options={"activation": "tanh"})
    found = json.loads((tmp_path / "tanh" / "generation.json").read_text())
    assert found["options"] == {"activation": "tanh"}
    metadata = (tmp_path / "tanh" / "metadata.csv").read_text()
    assert "relu" not in metadata and "tanh" in metadata
    refused = r"options: folder has \{'activation': 'tanh'\}, this run \{'activation': 'relu'\}"
    with pytest.raises(GenerateError, match=refused):
        quiet("digits-cnn", tmp_path / "tanh", 2, options={"activation": "relu"})
