"""Runs link the weight table they read as an MLflow dataset input: source URI, content digest, split, arch."""

from __future__ import annotations

import csv

import pytest
import torch

from zoo_ingest import ingest, open_table


def _zoo(root, n):
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ckpt_file", "test_accuracy", "activation"])
        for i in range(n):
            g = torch.Generator().manual_seed(i)
            sd = {"0.weight": torch.randn(5, 3, generator=g), "0.bias": torch.randn(5, generator=g),
                  "2.weight": torch.randn(2, 5, generator=g), "2.bias": torch.randn(2, generator=g)}
            save_file(sd, root / f"net{i}.safetensors")
            w.writerow([f"net{i}.safetensors", 0.5 + i / 100, "relu"])


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    _zoo(root / "zoo", 12)
    _zoo(root / "smaller", 11)
    out = {}
    for name, src, chunk in (("a", "zoo", 3), ("b", "zoo", 12), ("c", "smaller", 12)):
        ingest(str(root / src), str(root / name), "checkpoints", zoo="toy", split="none", use_ray=False,
               chunk_rows=chunk, progress=False)
        out[name] = open_table(str(root / name))
    return out


def test_digest_follows_the_rows_not_the_files(tables):
    from training.tracking import table_digest

    a, b, c = tables["a"], tables["b"], tables["c"]
    (arch,) = a.archs
    (split,) = a.splits
    assert a.uri != b.uri
    assert table_digest(a, split, arch) == table_digest(b, split, arch)  # same rows, other shards/folder
    assert table_digest(c, split, arch) != table_digest(a, split, arch)  # one network fewer


def test_training_and_evaluation_runs_link_the_same_dataset(tables, tmp_path):
    from mlflow import MlflowClient

    from training.tracking import log_table_input, table_digest

    table = tables["a"]
    (arch,) = table.archs
    (split,) = table.splits
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    train_run, eval_run = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    log_table_input(client, train_run, table, split, arch, "training")
    log_table_input(client, eval_run, table, split, arch, "evaluation")
    seen = []
    for run_id, context in ((train_run, "training"), (eval_run, "evaluation")):
        (inp,) = client.get_run(run_id).inputs.dataset_inputs
        tags = {t.key: t.value for t in inp.tags}
        assert tags["mlflow.data.context"] == context and tags["metazoo.split"] == split
        assert tags["metazoo.arch_id"] == arch and tags["metazoo.rows"] == "12"
        ds = inp.dataset
        assert ds.name == f"toy/{split}/arch={arch}" and ds.digest == table_digest(table, split, arch)
        assert table.location.path in ds.source and ds.source_type == "local"
        seen.append((ds.name, ds.digest, ds.source))
    assert seen[0] == seen[1]
