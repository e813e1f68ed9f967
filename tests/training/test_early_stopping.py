"""Early stopping: the per-epoch decision, the config checks, and a real run that stops, logs `epochs_run`,
and keeps its early-stopping state across a worker restart from checkpoint."""

import math

import pytest

from training import early_stopping
from training.config import ConfigError, load_config


def test_update_counts_epochs_without_improvement():
    state = early_stopping.initial_state()
    state, stop = early_stopping.update(state, 0.5, patience=2, min_delta=0.01)
    assert state == {"best": 0.5, "bad_epochs": 0} and not stop
    state, stop = early_stopping.update(state, 0.505, patience=2, min_delta=0.01)  # not above best + min_delta
    assert state == {"best": 0.5, "bad_epochs": 1} and not stop
    state, stop = early_stopping.update(state, 0.52, patience=2, min_delta=0.01)  # improves: count resets
    assert state == {"best": 0.52, "bad_epochs": 0} and not stop
    state, _ = early_stopping.update(state, math.nan, patience=2, min_delta=0.01)  # NaN never improves
    state, stop = early_stopping.update(state, 0.1, patience=2, min_delta=0.01)
    assert state == {"best": 0.52, "bad_epochs": 2} and stop
    # without patience the state is tracked but never stops
    _, stop = early_stopping.update({"best": 1.0, "bad_epochs": 99}, 0.0, patience=None, min_delta=0.0)
    assert not stop


def test_config_names_a_bad_metric_or_patience():
    cfg = load_config(None, ["data.table=t"])
    assert cfg.early_stopping.patience is None  # disabled by default: earlier runs are unchanged
    assert early_stopping.watched_metric(cfg) == "val_kendall_tau"
    with pytest.raises(ConfigError, match="early_stopping.metric.*val_accuracy"):
        load_config(None, ["data.table=t", "early_stopping.metric=val_accuracy"])
    with pytest.raises(ConfigError, match="early_stopping.metric"):
        load_config(None, ["data.table=t", "early_stopping.metric=train_loss"])
    with pytest.raises(ConfigError, match="early_stopping.patience"):
        load_config(None, ["data.table=t", "early_stopping.patience=0"])


@pytest.mark.ray
@pytest.mark.ci  # about 50 s (a training, a killed worker and a restart): CI runs it after the default suite
def test_training_stops_early_and_resumes_its_state_after_a_restart(digits_cnn_table, tmp_path):
    """patience 2 with a huge min_delta: epoch 0 sets the best, epochs 1 and 2 do not improve -> stop
    after 3 of 6 epochs. The worker dies at the start of epoch 2 and the group resumes from a kept
    checkpoint (epoch 0's or 1's: Ray Train keeps the best-scored ones): only with the count restored from
    it does the run stop after epoch 2; a reset count would take the first epoch after the restart as a
    new best and run at least one epoch more."""
    from mlflow import MlflowClient

    from training import main

    cfg = load_config(None, [
        f"data.table={digits_cnn_table}", "data.activation=relu", "model.name=statnet", "epochs=6",
        "model.kwargs={standardize: true}", "model.bn_recompute_rows=16",  # also: precise BatchNorm, restarted
        "batch_size=16", "scaling.num_workers=1", "progress=false", "early_stopping.patience=2",
        "early_stopping.min_delta=1e9", "fault.fail_at_epoch=2", "checkpoint.max_failures=1",
        f"checkpoint.storage_path={tmp_path / 'runs'}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"mlflow.artifact_location={tmp_path / 'artifacts'}", "mlflow.system_metrics=false",
        "mlflow.register_model=false",
    ])
    result = main(cfg)
    assert result.epochs_run == 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(result.run_id).data.metrics["epochs_run"] == 3
    steps = [m.step for m in client.get_metric_history(result.run_id, "val_kendall_tau")]
    assert sorted(set(steps)) == [0, 1, 2] and steps[-1] == 2  # epochs after the restart point are redone
    # the saved model's BatchNorm was last set from the (refilled) reservoir's one batch of 16 rows before
    # validating, not left with the moving average over the epoch's steps (training/batchnorm.py)
    from training.batchnorm import batchnorm_layers
    from training.model_io import load_metanet

    (bn,) = batchnorm_layers(load_metanet(result.metanet_path)[0])
    assert math.ceil(result.metrics["train_rows"] / 16) > 1 and int(bn.num_batches_tracked) == 1
