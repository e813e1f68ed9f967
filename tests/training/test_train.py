"""training.main end to end: DeepSpeed on 2 Ray Train CPU workers, MLflow run + registry, recovery."""

import math
import tempfile
import time
from pathlib import Path

import pytest

from training import main
from training.config import ConfigError, load_config

pytestmark = pytest.mark.ray


def _cfg(table, tmp_path, *extra):
    return load_config(None, [
        f"data.table={table}", "data.activation=relu", "model.name=monomial_nfn", "model.kwargs={hidden: 4}",
        "epochs=2", "batch_size=16", "scaling.num_workers=2", "progress=false", "deepspeed.zero_stage=1",
        f"checkpoint.storage_path={tmp_path / 'runs'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"mlflow.artifact_location={tmp_path / 'artifacts'}", "mlflow.system_metrics=false", *extra,
    ])


def test_two_workers_train_log_and_register(digits_cnn_table, tmp_path):
    from mlflow import MlflowClient

    from eval.loading import load_model

    scratch_before = set(Path(tempfile.gettempdir()).glob("checkpoint_tmp_*"))
    result = main(_cfg(digits_cnn_table, tmp_path))
    # the best model stays in the run's checkpoint under the storage path; no copy is left in /tmp
    assert Path(result.metanet_path).is_relative_to(tmp_path / "runs")
    assert (Path(result.metanet_path) / "metanet.json").exists()
    assert set(Path(tempfile.gettempdir()).glob("checkpoint_tmp_*")) <= scratch_before
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "monomial_nfn" and run.data.params["scaling.num_workers"] == "2"
    history = client.get_metric_history(result.run_id, "val_kendall_tau")
    assert [m.step for m in history] == [0, 1]
    # both epochs' checkpoints are kept (num_to_keep 2): the result carries their metrics, by epoch
    assert [m["epoch"] for m in result.epoch_metrics] == [0, 1]
    assert [m["val_kendall_tau"] for m in result.epoch_metrics] == pytest.approx([m.value for m in history])
    assert all(0 <= m["data_wait_fraction"] <= 1 for m in result.epoch_metrics)
    assert all(-1 <= m.value <= 1 for m in history)
    assert run.data.metrics["num_params"] == result.num_params > 0
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"metanet", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/predictions.png"]
    # registered, champion (first version), and loadable without pickle from the registry
    assert result.registered_model == "metazoo-digits-cnn-generalization" and result.version == "1"
    assert result.champion
    mv = client.get_model_version_by_alias(result.registered_model, "champion")
    assert str(mv.version) == "1" and mv.run_id == result.run_id
    model, card, run_id = load_model("models:/metazoo-digits-cnn-generalization@champion",
                                     tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run_id == result.run_id and card["model"] == "monomial_nfn" and model.num_params == result.num_params
    # the MLflow model (pt2, signature: flat weights) predicts
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    x = np.zeros((3, 4970), dtype=np.float32)
    assert np.asarray(pyfunc.predict(x)).shape == (3, 1)


def test_champion_moves_only_when_beaten(tmp_path):
    from mlflow import MlflowClient

    from training.registry import maybe_promote

    client = MlflowClient(f"sqlite:///{tmp_path / 'reg.db'}")
    client.create_registered_model("m")
    versions = [client.create_model_version("m", f"file://{tmp_path}/{k}", run_id=None).version for k in range(3)]
    for v, score in zip(versions, (0.5, 0.4, 0.7)):
        client.set_model_version_tag("m", v, "val_kendall_tau", str(score))
    assert maybe_promote(client, "m", versions[0], 0.5)
    assert not maybe_promote(client, "m", versions[1], 0.4)
    assert str(client.get_model_version_by_alias("m", "champion").version) == str(versions[0])
    assert not maybe_promote(client, "m", versions[1], math.nan)
    assert maybe_promote(client, "m", versions[2], 0.7)
    assert str(client.get_model_version_by_alias("m", "champion").version) == str(versions[2])


@pytest.mark.ci  # about 100 s (two full trainings and a restart): CI runs it after the default suite
def test_dead_worker_resumes_from_checkpoint_with_same_steps(digits_cnn_table, tmp_path):
    """A worker process is killed at the start of epoch 2; Ray Train restarts and resumes from epoch 1.
    The reference run keeps its (small) training split in the object store; the killed one streams it
    from the shards every epoch: both paths give the same number of steps."""
    cfg = _cfg(digits_cnn_table, tmp_path, "epochs=3", "fault.fail_at_epoch=2", "fault.fail_rank=1",
               "mlflow.register_model=false", "data.cache=never")
    reference = main(_cfg(digits_cnn_table, tmp_path, "epochs=3", "mlflow.enabled=false"))
    result = main(cfg)
    markers = list((tmp_path / "runs").glob("*/fault_injected"))
    assert len(markers) == 1, "the fault must really have been injected"
    assert result.metrics["epoch"] == 2
    assert result.metrics["global_step"] == reference.metrics["global_step"] > 0


def test_bad_input_fails_before_any_worker_starts(digits_cnn_table, tmp_path):
    from zoo_ingest import TableError

    started = time.monotonic()
    with pytest.raises(TableError, match="zoo.json"):
        main(_cfg(tmp_path / "no-table", tmp_path))
    with pytest.raises(ValueError, match="empty after filtering"):
        main(_cfg(digits_cnn_table, tmp_path, "data.steps=[999]"))
    with pytest.raises(ConfigError, match="data.arch"):
        main(_cfg(digits_cnn_table, tmp_path, "data.arch=0123456789abcdef"))
    with pytest.raises(ConfigError, match="data.target"):
        main(_cfg(digits_cnn_table, tmp_path, "data.target=psnr"))
    with pytest.raises(ValueError, match="unknown model"):
        main(_cfg(digits_cnn_table, tmp_path, "model.name=transformer"))
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        main(_cfg(digits_cnn_table, tmp_path, "mlflow.tracking_uri=http://127.0.0.1:9"))
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists(), "no run may have started"


def test_training_against_a_real_mlflow_server(digits_cnn_table, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    from training.driver import prepare, train_subset

    # on a subset of the training networks (data.train_networks): trained on and logged as such
    cfg = _cfg(digits_cnn_table, tmp_path, "epochs=1", f"mlflow.tracking_uri={mlflow_server}",
               "mlflow.experiment=server-test", "data.train_networks=6")
    result = main(cfg)
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and "val_kendall_tau" in run.data.metrics
    table, arch_id, *_ = prepare(cfg)
    subset = train_subset(table, arch_id, cfg)
    # Ray's equal split may leave out up to (workers - 1) rows
    assert len(subset) - 1 <= run.data.metrics["train_rows"] <= len(subset) < table.num_rows("train", arch_id)
    (training,) = [d for d in run.inputs.dataset_inputs
                   if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "training"]
    assert {t.key: t.value for t in training.tags}["metazoo.rows"] == str(len(subset))
    assert "train_networks_per_s" in run.data.metrics and 0 <= run.data.metrics["data_wait_fraction"] <= 1
    assert {a.path for a in client.list_artifacts(result.run_id)} >= {"metanet", "plots"}
    assert str(client.get_model_version_by_alias("server-test", "champion").version) == result.version


def test_best_model_path_points_into_the_checkpoint_storage(tmp_path):
    """Local storage: the checkpoint folder itself; object stores: the checkpoint's URI (nothing in /tmp)."""
    from types import SimpleNamespace

    from training.driver import _durable_metanet_path

    best = SimpleNamespace(path="bucket/e2e/runs/run-1/checkpoint_000001")
    s3 = load_config(None, ["data.table=t", "model.name=monomial_nfn", "checkpoint.storage_path=s3://bucket/e2e/runs"])
    assert _durable_metanet_path(s3, best, tmp_path) == "s3://bucket/e2e/runs/run-1/checkpoint_000001/metanet"
    local = load_config(None, ["data.table=t", "model.name=monomial_nfn", f"checkpoint.storage_path={tmp_path}"])
    assert _durable_metanet_path(local, best, tmp_path / "ck") == str(tmp_path / "ck" / "metanet")



def test_a_run_that_fails_before_training_starts_is_ended_failed(digits_cnn_table, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from training import driver

    def broken(*args, **kwargs):
        raise RuntimeError("dataset set-up failed")

    monkeypatch.setattr(driver, "cache_training_split", broken)  # runs after the MLflow run is created
    cfg = _cfg(digits_cnn_table, tmp_path, "scaling.num_workers=1")
    with pytest.raises(RuntimeError, match="dataset set-up failed"):
        main(cfg)
    client = MlflowClient(cfg.tracking_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
