"""The benchmark's MLflow parent run: created once per benchmark and reused by its reruns, so every
trial's training run (a nested child: tag `mlflow.parentRunId`) hangs under one run."""

from __future__ import annotations

import json
import time

PARENT_FILE = "parent.json"


def parent_run(cfg, first_trial_cfg, zoo: str, tracking_uri: str, folder) -> dict:
    """{run_id, experiment}: the run recorded in `<folder>/parent.json` when it still exists on this
    tracking server, else a new run in the trials' experiment (default metazoo-<zoo>-<task>)."""
    from mlflow import MlflowClient

    from training.driver import experiment_name
    from training.tracking import get_or_create_experiment

    client = MlflowClient(tracking_uri)
    experiment = experiment_name(first_trial_cfg, zoo)
    exp_id = get_or_create_experiment(client, experiment, first_trial_cfg.mlflow.artifact_location)
    if folder.exists(PARENT_FILE):
        saved = json.loads(folder.read_bytes(PARENT_FILE))
        if saved.get("tracking_uri") == tracking_uri:
            try:
                run = client.get_run(saved["run_id"])
            except Exception:  # deleted, or another store
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                client.update_run(run.info.run_id, status="RUNNING")
                # no trial of this benchmark runs yet: a child still RUNNING lost its process earlier
                stale = end_running_children(client, run, "KILLED")
                if stale:
                    print(f"marked {stale} trial run(s) of an earlier, stopped run of this benchmark KILLED",
                          flush=True)
                return {"run_id": run.info.run_id, "experiment": saved.get("experiment", experiment)}
    run = client.create_run(exp_id, run_name=f"benchmark-{cfg.folder}-{time.strftime('%Y%m%d-%H%M%S')}", tags={
        "metazoo.kind": "benchmark", "metazoo.zoo": zoo, "metazoo.table": cfg.table_uri(),
        "metazoo.families": ",".join(f.label for f in cfg.families),
        "metazoo.seeds": ",".join(str(s) for s in cfg.all_seeds())})
    saved = {"run_id": run.info.run_id, "experiment": experiment, "tracking_uri": tracking_uri}
    folder.write_bytes(PARENT_FILE, json.dumps(saved, indent=1).encode())
    return {"run_id": run.info.run_id, "experiment": experiment}


def metric_key(label: str) -> str:
    """A family label as MLflow accepts it in a metric name (`statnet@800` -> `statnet_800`)."""
    import re

    return re.sub(r"[^\w\-. :/]", "_", label)


def log_summary(tracking_uri: str, run_id: str, summary: dict, files: list, failed: int) -> None:
    """Summary metrics (mean per family, no action), the report files, and the run's end state."""
    import math

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    metrics = []
    for fam, st in summary["stats"].items():
        for key in ("mean", "std", "lo", "hi"):
            v = st["no action"][key]
            if math.isfinite(v):
                metrics.append(Metric(f"{metric_key(fam)}.test_{summary['metric']}_{key}", float(v), now, 0))
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "metazoo.failed_trials", str(failed))
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path="benchmark")
    client.set_terminated(run_id, status="FINISHED")


def end_running_children(client, parent, status: str) -> int:
    """End the parent's child runs still RUNNING with `status`; returns how many. Ray Tune kills a stopped
    trial's process, so its training run cannot end itself."""
    children = client.search_runs([parent.info.experiment_id], max_results=5000, filter_string=(
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'RUNNING'"))
    for child in children:
        client.set_terminated(child.info.run_id, status=status)
    return len(children)


def end_parent(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark the parent run, and its trials' runs still RUNNING, ended (FAILED/KILLED) when the benchmark stops
    on an error; an MLflow error here is logged, not raised, so the benchmark's own error is the one the
    user sees."""
    import logging

    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        client.set_terminated(run_id, status=status)
        end_running_children(client, client.get_run(run_id), status)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        logging.getLogger(__name__).warning("could not mark benchmark run %s %s: %s", run_id, status, exc)
