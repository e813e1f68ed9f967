"""MLflow runs and the model registry, from the driver.

One experiment per zoo and task, one run per training. The best checkpoint's model is logged with a
signature (flat float32 weights in, raw outputs out), registered as the experiment's model name, and
the alias `champion` moves to it only when its validation metric beats the current champion's.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from metanets import NetworkSpec
from training.config import TrainConfig
from training.metrics import PRIMARY_METRIC, task_metrics
from training.model_io import FlatInputModel, example_input, load_metanet
from training.plots import predictions_plot
from training.tracking import ended_status, flatten_params, get_or_create_experiment, log_table_input

CHAMPION = "champion"


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def start_run(cfg: TrainConfig, tracking_uri: str, experiment: str, run_name: str, spec: NetworkSpec,
              arch_id: str) -> str:
    client = _client(tracking_uri)
    exp_id = get_or_create_experiment(client, experiment, cfg.mlflow.artifact_location)
    run = client.create_run(exp_id, run_name=run_name, tags={
        "metazoo.model": cfg.model.name, "metazoo.arch_id": arch_id, "metazoo.table": cfg.data.table,
        "metazoo.task": cfg.task.kind, "metazoo.activation": spec.activation,
        **cfg.mlflow.tags,  # a benchmark's child runs: metazoo.family, metazoo.seed
        **({"mlflow.parentRunId": cfg.mlflow.parent_run_id} if cfg.mlflow.parent_run_id else {}),
    })
    try:  # a run that cannot be set up is not left RUNNING
        _log_setup(client, run.info.run_id, cfg, arch_id)
    except BaseException as exc:
        client.set_terminated(run.info.run_id, status=ended_status(exc))
        raise
    return run.info.run_id


def _log_setup(client, run_id: str, cfg: TrainConfig, arch_id: str) -> None:
    """The run's parameters and its dataset inputs (the training rows it reads, the validation split)."""
    params = flatten_params(cfg.model_dump(mode="json"))
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=items[i : i + 90])
    from zoo_ingest import open_table

    table = open_table(cfg.data.table)
    subset = None
    if cfg.data.train_networks is not None:
        from training.driver import train_subset

        subset = train_subset(table, arch_id, cfg)
    log_table_input(client, run_id, table, cfg.data.train_split, arch_id, "training", subset)
    log_table_input(client, run_id, table, cfg.data.val_split, arch_id, "validation")


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def finish_run(cfg: TrainConfig, tracking_uri: str, run_id: str, experiment: str, ckpt: Path,
               final_metrics: dict, out) -> None:
    """Log the best checkpoint's model, plot and metrics; register it; maybe move the champion alias."""
    import mlflow
    from mlflow.models import infer_signature

    client = _client(tracking_uri)
    model, card = load_metanet(ckpt / "metanet")
    primary = PRIMARY_METRIC[cfg.task.kind]
    preds = np.load(ckpt / "val_predictions.npz")
    best = task_metrics(cfg.task.kind, preds["outputs"], preds["targets"], cfg.task.loss)
    summary = {f"best_val_{k}": v for k, v in best.items() if not math.isnan(v)}
    summary["num_params"] = float(model.num_params)
    summary["best_epoch"] = float(card.get("epoch", -1))
    mlflow.set_tracking_uri(tracking_uri)
    # the fluent API refuses a run outside the process's active experiment: make the run's one active
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(summary)
        mlflow.log_artifacts(str(ckpt / "metanet"), artifact_path="metanet")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "predictions.png"
            predictions_plot(cfg.task.kind, preds["outputs"], preds["targets"], png, cfg.task.loss,
                             title=f"{cfg.model.name} on {experiment}: validation split")
            mlflow.log_artifact(str(png), artifact_path="plots")
        flat = FlatInputModel(model)
        x = example_input(model.spec)
        import torch

        with torch.no_grad():
            y = flat(torch.from_numpy(x)).numpy()
        # pt2 (torch.export) is MLflow's pickle-free format; explicit requirements skip a slow inference
        info = mlflow.pytorch.log_model(flat, name="model", signature=infer_signature(x, y), input_example=x,
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    out.model_uri = info.model_uri
    out.metrics.update(summary)
    if cfg.mlflow.register_model:
        name = cfg.mlflow.registered_model or experiment
        version = _quietly(mlflow.register_model, info.model_uri, name, tags={"run_id": run_id})
        out.registered_model, out.version = name, str(version.version)
        score = best.get(primary, float("nan"))
        client.set_model_version_tag(name, version.version, f"val_{primary}", str(score))
        out.champion = maybe_promote(client, name, str(version.version), score)
    client.set_terminated(run_id, status="FINISHED")


def _quietly(fn, *args, **kwargs):
    """Call `fn`, sending what it prints to stderr ("Successfully registered model ...": MLflow prints
    it rather than logging it) to the `mlflow` logger, which the console sends to its log file."""
    import contextlib
    import io
    import logging

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return fn(*args, **kwargs)
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                logging.getLogger("mlflow").info(line)


def champion_score(client, name: str) -> float | None:
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion yet
        return None
    for key, value in (mv.tags or {}).items():
        if key.startswith("val_"):
            return float(value)
    return None


def maybe_promote(client, name: str, version: str, score: float) -> bool:
    """Point `champion` at `version` when its score beats the current champion's (or there is none)."""
    if math.isnan(score):
        return False
    current = champion_score(client, name)
    if current is not None and not math.isnan(current) and score <= current:
        return False
    client.set_registered_model_alias(name, CHAMPION, version)
    return True
