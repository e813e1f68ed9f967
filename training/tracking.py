"""Experiment tracking: MLflow when enabled, a no-op stand-in otherwise (the loop never branches).

The driver creates the run and logs what it knows (resolved config, final model, plots, registry);
rank 0 of the training workers logs per-epoch metrics to the same run by id.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def ended_status(exc: BaseException) -> str:
    """The MLflow status of a run stopped by `exc`: KILLED on Ctrl-C, else FAILED."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


class NoTracker:
    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class MLflowMetricsTracker:
    """Logs metrics to an existing run by id (used on rank 0), with MLflow system metrics."""

    def __init__(self, tracking_uri: str, run_id: str, system_metrics: bool = True):
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id
        self.monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the monitor logs through the fluent API
                self.monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1)
                self.monitor.start()
            except Exception as exc:  # system metrics are a nicety; training must not fail for them
                print(f"system metrics disabled: {exc}")
                self.monitor = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if not math.isnan(float(v))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()


def make_tracker(tracking_uri: str | None, run_id: str | None, system_metrics: bool = True):
    if tracking_uri and run_id:
        return MLflowMetricsTracker(tracking_uri, run_id, system_metrics)
    return NoTracker()


def check_tracking_server(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when an HTTP tracking server does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status != 200:
                raise ConnectionError(f"MLflow server at {tracking_uri} answered {resp.status} on /health")
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(f"cannot reach the MLflow tracking server at {tracking_uri}: {exc}") from None


def get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_location
    if location is None and not client.tracking_uri.startswith(("http://", "https://")):
        location = Path("mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def table_digest(table, split: str, arch_id: str, model_ids: list[str] | None = None) -> str:
    """A short digest of the rows of one split and architecture: sha256 over their sorted content hashes
    (`model_id`), so the same rows give the same digest wherever the table lives and however it is sharded.
    `model_ids`: a subset of those rows (`data.train_networks`), digested the same way."""
    import hashlib

    import pyarrow.dataset as ds

    paths = table.files(split, arch_id)
    h = hashlib.sha256(f"{arch_id}/{split}\n".encode())
    if model_ids is not None:
        for model_id in sorted(model_ids):
            h.update(model_id.encode() + b"\n")
    elif paths:
        afs, _ = table.location.arrow()
        ids = ds.dataset(paths, filesystem=afs, format="parquet").to_table(columns=["model_id"])
        for model_id in sorted(ids.column("model_id").to_pylist()):
            h.update(model_id.encode() + b"\n")
    return h.hexdigest()[:12]


def table_dataset(table, split: str, arch_id: str, model_ids: list[str] | None = None):
    """The weight table's rows of `split` and `arch_id` as an MLflow dataset (metadata only): named
    `<zoo>/<split>/arch=<arch_id>`, its source the table's URI, its digest `table_digest`."""
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    # local folders, s3://, gs://, ... by scheme; MLflow registers the local source type twice and warns
    # that a path "can be interpreted in multiple ways" unless given one candidate
    candidates = [s for s in get_registered_sources() if s._can_resolve(table.uri)]
    if candidates:
        source = resolve_dataset_source(table.uri, candidate_sources=candidates[:1])
    else:  # a scheme MLflow has no source type for: keep the URI, typed as a URL
        source = HTTPDatasetSource(table.uri)
    name = f"{table.zoo}/{split}/arch={arch_id}" + ("" if model_ids is None else f"/rows={len(model_ids)}")
    return MetaDataset(source, name=name, digest=table_digest(table, split, arch_id, model_ids))


def log_table_input(client, run_id: str, table, split: str, arch_id: str, context: str | None = None,
                    model_ids: list[str] | None = None) -> None:
    """Link the table's `split` rows of `arch_id` to the run as a dataset input (the UI's Dataset column);
    `context` (default: the split) says what the run did with them; `model_ids`: only these rows of it."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    entity = table_dataset(table, split, arch_id, model_ids)._to_mlflow_entity()
    rows = table.num_rows(split, arch_id) if model_ids is None else len(model_ids)
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context or split), InputTag("metazoo.split", split),
            InputTag("metazoo.arch_id", arch_id), InputTag("metazoo.rows", str(rows))]
    for attempt in range(DATASET_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])
            return
        except Exception as exc:  # noqa: BLE001 - only the dataset race is retried, the rest re-raised
            if attempt == DATASET_ATTEMPTS - 1 or not _dataset_race(exc):
                raise
            time.sleep(0.2 * (attempt + 1))


# Two runs (e.g. concurrent benchmark trials) that log the same new dataset at once both find it missing and
# both insert it; the store's unique key on (experiment, name, digest) refuses the second insert and rolls it
# back. Logging again then finds the dataset the other run created and links it.
DATASET_ATTEMPTS = 4
_RACE_MARKERS = ("UNIQUE constraint failed", "IntegrityError", "duplicate key value", "Duplicate entry")


def _dataset_race(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in _RACE_MARKERS)
