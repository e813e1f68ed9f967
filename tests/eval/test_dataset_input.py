"""Runs link the weight table they read as an MLflow dataset input: source URI, content digest, split, arch."""

from __future__ import annotations

import csv
from types import SimpleNamespace

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


@pytest.fixture
def store(tables, tmp_path):
    """Table "a" with its one arch and split, and an experiment in a fresh SQLite tracking store."""
    from mlflow import MlflowClient

    table = tables["a"]
    (arch,) = table.archs
    (split,) = table.splits
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    return SimpleNamespace(table=table, arch=arch, split=split, client=client, exp=exp)


def test_digest_follows_the_rows_not_the_files(tables):
    from training.tracking import table_digest

    a, b, c = tables["a"], tables["b"], tables["c"]
    (arch,) = a.archs
    (split,) = a.splits
    assert a.uri != b.uri
    assert table_digest(a, split, arch) == table_digest(b, split, arch)  # same rows, other shards/folder
    assert table_digest(c, split, arch) != table_digest(a, split, arch)  # one network fewer


def test_training_and_evaluation_runs_link_the_same_dataset(store):
    from training.tracking import log_table_input, table_digest

    table, arch, split, client, exp = store.table, store.arch, store.split, store.client, store.exp
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


def test_two_runs_logging_a_new_dataset_at_once_both_link_it(store, monkeypatch):
    """Concurrent trials: run B looks the dataset up before run A's insert commits, then inserts it too and
    the store's unique key refuses it (a real sqlite IntegrityError). Logging again links A's dataset."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from sqlalchemy.orm import Query

    from training import tracking

    table, arch, split, client, exp = store.table, store.arch, store.split, store.client, store.exp
    run_a, run_b = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    tracking.log_table_input(client, run_a, table, split, arch, "training")

    real_all, stale = Query.all, {"left": 1}

    def all_(query):  # run B's first look-up still misses the dataset run A has just written
        if stale["left"] and query.column_descriptions[0]["entity"] is SqlDataset:
            stale["left"] -= 1
            return []
        return real_all(query)

    monkeypatch.setattr(Query, "all", all_)
    with monkeypatch.context() as m:  # without the retry, the race is an error
        m.setattr(tracking, "DATASET_ATTEMPTS", 1)
        with pytest.raises(MlflowException, match="UNIQUE constraint failed"):
            tracking.log_table_input(client, run_b, table, split, arch, "training")
    stale["left"] = 1
    tracking.log_table_input(client, run_b, table, split, arch, "training")
    assert stale["left"] == 0  # the stale look-up did happen
    (a,), (b,) = (client.get_run(r).inputs.dataset_inputs for r in (run_a, run_b))
    assert (a.dataset.name, a.dataset.digest) == (b.dataset.name, b.dataset.digest)


def test_other_errors_of_logging_a_dataset_are_not_retried(tables):
    from mlflow.exceptions import MlflowException

    from training.tracking import log_table_input

    table = tables["a"]
    (arch,) = table.archs
    (split,) = table.splits

    class Refusing:
        calls = 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            raise MlflowException(f"Run '{run_id}' not found")

    client = Refusing()
    with pytest.raises(MlflowException, match="not found"):
        log_table_input(client, "r1", table, split, arch)
    assert client.calls == 1


def test_a_run_whose_set_up_fails_is_not_left_running(tables, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from training import load_config, registry

    table = tables["a"]
    (arch,) = table.archs
    (split,) = table.splits
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"data.table={table.uri}", "model.name=statnet", f"data.train_split={split}",
                             f"data.val_split={split}"])

    def refuse(*args, **kwargs):
        raise MlflowException("the tracking store refused the dataset")

    monkeypatch.setattr(registry, "log_table_input", refuse)
    with pytest.raises(MlflowException, match="refused the dataset"):
        registry.start_run(cfg, uri, "e", "r", SimpleNamespace(activation="relu"), arch)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.info.run_name == "r" and run.info.status == "FAILED"
