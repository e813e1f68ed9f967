"""The console of `metazoo pipeline`: stage lines, epoch lines, tables; the libraries' logs in a file."""

from __future__ import annotations

import logging
import warnings

import pytest

from cluster import cli

# What the console showed before: Ray Train's controller and workers, DeepSpeed, torch warnings, MLflow.
NOISE = ("TrainingReport", "Failed to query Ray Train Controller", "FutureWarning", "DeprecationWarning",
         "real_accelerator", "Setting accelerator", "(TrainController", "(RayTrainWorker", "(PlacementGroupCleaner",
         "INFO mlflow", "parquet_datasource", "streaming_executor")


@pytest.mark.ray
def test_pipeline_console_is_for_people_and_the_log_file_has_rays_output(ray_local, tmp_path, capsys,
                                                                         monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("METAZOO_LOG_LEVEL", raising=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"store: {tmp_path / 'store'}\n"
        "zoo: {name: digits-cnn, n: 20, activation: relu}\n"
        "families: [{label: statnet, model: statnet}]\n"
        "train: {epochs: 2, batch_size: 16, scaling: {num_workers: 2}, mlflow: {system_metrics: false}}\n"
        "eval: {scales: [1], audit_samples: 1, audit_networks: 4}\n"
        f"tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}\n")
    assert cli.main(["pipeline", "--config", str(config), "--no-progress"]) == 0
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} reached the console:\n{shown}"
    for wanted in ("[1/5] generate digits-cnn", "[3/5] train statnet", "epoch 1/2: loss", "epoch 2/2: loss",
                   "networks/s", "data wait", "| statnet |"):
        assert wanted in shown, f"{wanted!r} missing from the console:\n{shown}"
    (log_file,) = (tmp_path / "store" / "logs").glob("pipeline-*.log")
    assert str(log_file) in captured.err  # its path is printed
    logged = log_file.read_text()
    assert "(RayTrainWorker pid=" in logged and "(TrainController pid=" in logged  # workers' and controller's output
    # the training run links the table's rows as MLflow datasets; the evaluation links the test split
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("metazoo-digits-cnn-generalization").experiment_id],
                                filter_string="tags.`metazoo.model` = 'statnet'")
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                for i in run.inputs.dataset_inputs}
    assert set(contexts) == {"training", "validation", "evaluation"}
    assert contexts["training"].name.startswith("digits-cnn/train/arch=")
    assert str(tmp_path / "store" / "tables" / "digits-cnn") in contexts["evaluation"].source
    # the console put the loggers back as it found them
    assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("mlflow").handlers)


def test_console_sends_library_logs_and_warnings_to_the_file_and_errors_name_it(tmp_path, capsys, monkeypatch):
    from cluster.console import console

    monkeypatch.delenv("METAZOO_LOG_LEVEL", raising=False)
    with pytest.raises(RuntimeError, match="boom"):
        with console("train", tmp_path / "logs") as path:
            logging.getLogger("mlflow.store").warning("a library notice")
            logging.getLogger("deepspeed").info("an accelerator notice")
            warnings.warn("a FutureWarning from torch", FutureWarning, stacklevel=1)
            print("a stage line")
            raise RuntimeError("boom")
    captured = capsys.readouterr()
    assert "a stage line" in captured.out
    assert "notice" not in captured.err + captured.out and "FutureWarning" not in captured.err
    assert f"logs of this run are in {path}" in captured.err
    text = path.read_text()
    assert "a library notice" in text and "an accelerator notice" in text and "a FutureWarning from torch" in text


def test_verbose_and_the_environment_keep_library_logs_on_the_console(tmp_path, capsys, monkeypatch):
    import sys

    from cluster.console import console

    monkeypatch.delenv("METAZOO_LOG_LEVEL", raising=False)
    handler = logging.StreamHandler(sys.stderr)  # as MLflow installs one when imported
    logging.getLogger("mlflow").addHandler(handler)
    try:
        _quiet_then_verbose(console, tmp_path, capsys, monkeypatch, handler)
    finally:
        logging.getLogger("mlflow").removeHandler(handler)


def _quiet_then_verbose(console, tmp_path, capsys, monkeypatch, handler):
    with console("train", tmp_path / "quiet"):
        logging.getLogger("mlflow").warning("a quiet notice")
    assert "a quiet notice" not in capsys.readouterr().err
    assert handler in logging.getLogger("mlflow").handlers  # given back on exit
    with console("train", tmp_path / "logs", verbose=True) as path:
        logging.getLogger("mlflow").warning("a library notice")
    assert path is None and "a library notice" in capsys.readouterr().err
    monkeypatch.setenv("METAZOO_LOG_LEVEL", "warning")
    with console("train", tmp_path / "logs") as path:
        logging.getLogger("mlflow").warning("another notice")
    assert path is None and "another notice" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()  # verbose: no log file
    monkeypatch.setenv("METAZOO_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="METAZOO_LOG_LEVEL"):
        with console("train", tmp_path / "logs"):
            pass


def test_epoch_line_says_loss_validation_throughput_and_data_wait():
    from training.progress import epoch_line

    line = epoch_line({"epochs": 8, "metrics": {
        "epoch": 2, "global_step": 30, "train_loss": 0.24123, "train_networks_per_s": 1163.2,
        "data_wait_fraction": 0.049, "skipped_steps": 0, "val_kendall_tau": 0.48731, "val_r2": 0.2}})
    assert line == ("epoch 3/8: loss 0.2412  val_kendall_tau 0.4873  val_r2 0.2000  1,163 networks/s  "
                    "data wait 4.9%")


def test_log_folders_and_the_copy_for_an_object_store(tmp_path, monkeypatch):
    from pathlib import Path

    from cluster.console import console, log_dir_for, publish_dir_for

    monkeypatch.delenv("METAZOO_LOG_LEVEL", raising=False)
    assert log_dir_for("zoo_store") == Path("zoo_store/logs") and publish_dir_for("zoo_store") is None
    assert log_dir_for("s3://bucket/store") == Path(".metazoo/logs")
    assert publish_dir_for("s3://bucket/store/") == "s3://bucket/store/logs"
    target = (tmp_path / "published").as_uri()
    with console("pipeline", tmp_path / "logs", publish_to=target) as path:
        logging.getLogger("mlflow").warning("kept with the store")
    assert "kept with the store" in (tmp_path / "published" / path.name).read_text()


def test_worker_progress_without_a_relay_draws_locally(capsys):
    from training.progress import WorkerProgress

    progress = WorkerProgress(None, total=4, initial=0, desc="train x", epochs=2, bar=False)
    for step in range(4):
        progress.update(1)
        progress.set_postfix(epoch=step // 2, loss=0.5)
        if step % 2 == 1:
            progress.epoch({"epoch": step // 2, "train_loss": 0.5, "train_networks_per_s": 10.0,
                            "data_wait_fraction": 0.5, "skipped_steps": 1 - step // 2})
    progress.close()
    out = capsys.readouterr().out.splitlines()
    assert out == ["epoch 1/2: loss 0.5000  10 networks/s  data wait 50.0%  1 steps skipped (non-finite gradients)",
                   "epoch 2/2: loss 0.5000  10 networks/s  data wait 50.0%"]


def test_repeated_worker_lines_collapse_in_the_log_file(tmp_path):
    from ray._private.ray_logging import LogDeduplicator

    from zoo_ingest.ray_runtime import _append, _write_worker_lines

    path = str(tmp_path / "ray.log")
    dedup = {"out": LogDeduplicator(60, None, None), "err": LogDeduplicator(60, None, None)}
    warning = "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable."
    for pid in range(5):
        _write_worker_lines(path, dedup, {"lines": [warning], "pid": 100 + pid, "ip": "127.0.0.1", "is_err": True,
                                          "actor_name": "PlacementGroupCleaner"})
    _write_worker_lines(path, dedup, {"lines": ["Setting up process group"], "pid": 7, "is_err": False,
                                      "actor_name": "RayTrainWorker"})
    _append(path, dedup["err"].flush())
    lines = open(path).read().splitlines()
    assert sum(warning in line for line in lines) == 2  # the first, then one summary
    assert "[repeated 4x across cluster]" in lines[-1]
    assert any("(RayTrainWorker pid=7) Setting up process group" in line for line in lines)


def test_raylet_warnings_go_to_the_log_file_and_the_printer_comes_back(ray_local, tmp_path, capsys):
    """The raylet's warnings ("N PYTHON worker processes have been started ...") reach the driver through a
    thread that calls `ray._private.worker.print_to_stdstream` itself, not the log dispatcher."""
    from ray._private import worker as ray_worker

    from zoo_ingest.ray_runtime import route_ray_output

    original = ray_worker.print_to_stdstream
    path = str(tmp_path / "ray.log")
    warning = "WARNING: 8 PYTHON worker processes have been started on node: abc"
    route_ray_output(path)
    try:
        ray_worker.print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    finally:
        route_ray_output(None)
    captured = capsys.readouterr()
    assert warning not in captured.out + captured.err
    assert warning in open(path).read()
    assert ray_worker.print_to_stdstream is original
