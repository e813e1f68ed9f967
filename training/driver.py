"""`training.main(cfg)`: train one metanetwork on a weight table with DeepSpeed on Ray Train workers.

Checks everything that can be checked before a worker starts (table, architecture, split sizes, model,
MLflow server), creates the MLflow run, runs the TorchTrainer, then logs the best checkpoint's model,
its predictions plot, and registers it (moving the `champion` alias only when it beats the champion).
"""

from __future__ import annotations

import functools
import math
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from metanets import NetworkSpec, build_model
from training.batches import target_filter
from training.config import ConfigError, TrainConfig
from training.metrics import PRIMARY_METRIC
from training.model_io import make_card

OUTPUT_DIM = {"generalization": 1}


@dataclass
class TrainResult:
    run_id: str | None
    experiment: str
    model_uri: str | None
    registered_model: str | None
    version: str | None
    champion: bool
    metrics: dict = field(default_factory=dict)
    checkpoint_path: str | None = None
    metanet_path: str | None = None
    num_params: int = 0
    epochs_run: int = 0
    # the metrics of each epoch whose checkpoint Ray Train kept (`checkpoint.num_to_keep`), by epoch
    epoch_metrics: list[dict] = field(default_factory=list)


def _select_arch(table, cfg: TrainConfig) -> tuple[str, NetworkSpec]:
    archs = table.archs
    if not archs:
        raise ValueError(f"table {cfg.data.table!r} holds no architectures (empty table)")
    if cfg.data.activation is not None and cfg.data.arch is None:
        archs = {a: s for a, s in archs.items() if s.activation == cfg.data.activation.lower()}
        if not archs:
            raise ConfigError(f"'data.activation': no architecture of table {cfg.data.table!r} uses "
                              f"{cfg.data.activation!r}")
    if cfg.data.arch == "largest":  # the architecture with the most rows (after the activation filter)
        arch = max(archs, key=lambda a: (table.num_rows(arch=a), a))
        return arch, archs[arch]
    if cfg.data.arch is None:
        if len(archs) > 1:
            listing = ", ".join(f"{a} ({s.activation}, {s.num_params} params)" for a, s in archs.items())
            raise ConfigError(f"'data.arch': the table holds several architectures, choose one of: {listing}")
        return next(iter(archs.items()))
    if cfg.data.arch not in archs:
        raise ConfigError(f"'data.arch': {cfg.data.arch!r} is not in the table (it has {', '.join(archs)})")
    return cfg.data.arch, archs[cfg.data.arch]


def experiment_name(cfg: TrainConfig, zoo: str) -> str:
    return cfg.mlflow.experiment or f"metazoo-{zoo}-{cfg.task.kind}"


def prepare(cfg: TrainConfig):
    """All checks that need no worker: returns (table, arch_id, spec, rows per split, out_dim)."""
    from zoo_ingest import open_table

    table = open_table(cfg.data.table)
    arch_id, spec = _select_arch(table, cfg)
    if cfg.data.target != "label" and cfg.data.target not in table.metrics:
        raise ConfigError(f"'data.target': {cfg.data.target!r} is not a column of the table "
                          f"(metrics: {table.metrics}, or 'label')")
    rows = {}
    for split in (cfg.data.train_split, cfg.data.val_split):
        if split not in table.splits:
            raise ConfigError(f"'data': split {split!r} is not in the table (splits: {table.splits})")
        rows[split] = table.count_rows(split=split, arch=arch_id, steps=cfg.data.steps,
                                       where=target_filter(cfg.data.target))
        if rows[split] == 0:
            raise ValueError(
                f"split {split!r} of table {cfg.data.table!r} is empty after filtering "
                f"(arch={arch_id}, steps={cfg.data.steps}, target={cfg.data.target!r} not null)"
            )
    if cfg.data.train_networks is not None:
        keep = train_subset(table, arch_id, cfg)
        rows[cfg.data.train_split] = len(keep)
    if rows[cfg.data.train_split] < cfg.scaling.num_workers:
        raise ValueError(f"{rows[cfg.data.train_split]} training rows cannot feed {cfg.scaling.num_workers} workers")
    out_dim = OUTPUT_DIM.get(cfg.task.kind, cfg.task.num_classes)
    build_model(cfg.model.name, spec, out_dim=out_dim, **cfg.model.kwargs)  # fail now, not in a worker
    return table, arch_id, spec, rows, out_dim


def train_subset(table, arch_id: str, cfg: TrainConfig) -> list[str]:
    """The model_ids of the training rows of `data.train_networks` networks (see its description).

    A network is what the table's split keeps together (the card's `split.by`: a hyper-parameter such as
    `network_id` or `modeldir`); networks are ordered by the hash of `key=value`, whatever the seed. The
    driver, its checks and the MLflow run ask for the same subset; it is computed once per table and settings."""
    return list(_train_subset(table.uri, table.card.get("fingerprint"), arch_id, cfg.data.train_split,
                              tuple(cfg.data.steps or ()) or None, cfg.data.target, cfg.data.train_networks))


@functools.lru_cache(maxsize=8)
def _train_subset(uri: str, fingerprint, arch_id: str, split: str, steps, target: str, n: int) -> tuple[str, ...]:
    import hashlib

    from zoo_ingest import open_table
    from zoo_ingest.sources.base import SourceError
    from zoo_ingest.splits import INDEX, PER_CHECKPOINT, network_values

    table = open_table(uri)
    by = (table.card.get("settings") or {}).get("split", {}).get("by")
    if not by or by in (PER_CHECKPOINT, INDEX):
        raise ConfigError(f"'data.train_networks': table {uri!r} does not name its networks by a "
                          f"hyper-parameter (its split is by {by or 'a split file'!r}), so networks cannot be counted")
    rows = table.read_columns(["model_id", "hparams"], split, arch_id, steps=list(steps) if steps else None,
                              where=target_filter(target))
    model_ids = rows["model_id"].to_pylist()
    try:  # the same reading of the network key as the split's (zoo_ingest.splits)
        name, values = network_values(by, model_ids, None, rows["hparams"].to_pylist())
    except SourceError as exc:
        raise ConfigError(f"'data.train_networks': {exc}") from None
    networks: dict[str, list[str]] = {}
    for model_id, value in zip(model_ids, values):
        networks.setdefault(f"{name}={value}", []).append(model_id)
    if n > len(networks):
        raise ConfigError(f"'data.train_networks': {n} asked for, but split {split!r} of {uri!r} holds "
                          f"{len(networks)} networks (arch {arch_id})")
    order = sorted(networks, key=lambda key: hashlib.sha256(key.encode()).hexdigest())
    return tuple(sorted(m for key in order[:n] for m in networks[key]))


def main(cfg: TrainConfig) -> TrainResult:
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training import registry
    from training.tracking import check_tracking_server, ended_status
    from zoo_ingest.ray_runtime import ensure_ray

    cfg = cfg.model_copy(deep=True)
    if "://" not in cfg.data.table:  # workers run in other directories: pass local paths absolute
        cfg.data.table = str(Path(cfg.data.table).expanduser().resolve())
    table, arch_id, spec, rows, out_dim = prepare(cfg)
    zoo = table.zoo
    tracking_uri = cfg.tracking_uri() if cfg.mlflow.enabled else None
    if tracking_uri:
        check_tracking_server(tracking_uri)
    ensure_ray()

    run_name = cfg.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    experiment = experiment_name(cfg, zoo)
    run_id = registry.start_run(cfg, tracking_uri, experiment, run_name, spec, arch_id) if tracking_uri else None
    try:  # a run that fails before training starts is ended, not left RUNNING
        storage, storage_fs = _run_storage(cfg.checkpoint.storage_path)
        marker = None
        if cfg.fault.fail_at_epoch is not None:  # the marker must outlive the worker it kills: a local file
            marker_dir = Path(storage) if storage_fs is None else Path(".metazoo") / "faults"
            marker = str((marker_dir / run_name / "fault_injected").resolve())
            Path(marker).parent.mkdir(parents=True, exist_ok=True)

        filters = dict(arch=arch_id, steps=cfg.data.steps, where=target_filter(cfg.data.target))
        columns = list(spec.keys) + [cfg.data.target]
        import ray.data

        data_ctx = ray.data.DataContext.get_current()
        data_ctx.enable_progress_bars = False  # one progress bar (rank 0's), not one per operator
        data_ctx.print_on_execution_start = False
        store_bytes = ray.cluster_resources().get("object_store_memory", 0)
        # set every time: a process that trains twice must not keep the previous run's caps
        data_ctx.execution_options.resource_limits = read_limits(cfg, store_bytes)
        # rank 0 reads the (small) validation split straight from the table; training rows stream via Ray Data
        model_ids = train_subset(table, arch_id, cfg) if cfg.data.train_networks is not None else None
        train = table.to_ray_dataset(split=cfg.data.train_split, columns=columns, model_ids=model_ids, **filters)
        if cache_training_split(cfg, spec, rows[cfg.data.train_split], store_bytes):
            train = train.materialize()
        datasets = {"train": train}
        card = make_card(cfg.model.name, dict(cfg.model.kwargs, out_dim=out_dim), spec, task=cfg.task.kind,
                         loss=cfg.task.loss, target=cfg.data.target, zoo=zoo, table=cfg.data.table)
        primary = f"val_{PRIMARY_METRIC[cfg.task.kind]}"
        from training.progress import ProgressRelay

        relay = ProgressRelay()  # rank 0's bar and epoch lines, drawn here (workers' output goes to the log)
        trainer = TorchTrainer(
            _worker_entry,
            train_loop_config={
                "cfg": cfg.model_dump(mode="json"), "spec": spec.to_dict(), "out_dim": out_dim, "card": card,
                "train_rows_per_worker": rows[cfg.data.train_split] // cfg.scaling.num_workers,
                "keep_rows": keep_rows_in_workers(cfg, spec, rows[cfg.data.train_split], store_bytes),
                "tracking_uri": tracking_uri, "run_id": run_id, "fault_marker": marker, "arch_id": arch_id,
                "progress": relay.sink,
            },
            torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                resources_per_worker=_resources(cfg),
            ),
            run_config=RunConfig(
                name=run_name, storage_path=str(storage), storage_filesystem=storage_fs,
                failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
                checkpoint_config=CheckpointConfig(
                    num_to_keep=cfg.checkpoint.num_to_keep, checkpoint_score_attribute=primary,
                    checkpoint_score_order="max",
                ),
            ),
            datasets=datasets,
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"], enable_shard_locality=False),
        )
    except BaseException as exc:
        if run_id:
            registry.end_run(tracking_uri, run_id, ended_status(exc))
        raise
    try:
        with relay:
            result = trainer.fit()
    except BaseException as exc:
        if run_id:
            registry.end_run(tracking_uri, run_id, ended_status(exc))
        raise
    best = _best_checkpoint(result, primary)
    final_metrics = dict(result.metrics or {})
    out = TrainResult(run_id=run_id, experiment=experiment, model_uri=None, registered_model=None, version=None,
                      champion=False, metrics=final_metrics, checkpoint_path=best.path if best else None,
                      num_params=build_model(cfg.model.name, spec, out_dim=out_dim, **cfg.model.kwargs).num_params,
                      epochs_run=int(final_metrics.get("epochs_run", 0)),
                      epoch_metrics=sorted((dict(m) for _, m in result.best_checkpoints or []),
                                           key=lambda m: m.get("epoch", -1)))
    scratch = None
    try:
        if best is not None:
            local, scratch = _local_checkpoint(best)
            out.metanet_path = _durable_metanet_path(cfg, best, local)
            if run_id:
                registry.finish_run(cfg, tracking_uri, run_id, experiment, local, final_metrics, out)
        elif run_id:
            registry.end_run(tracking_uri, run_id, "FINISHED")
    except BaseException as exc:
        if run_id:
            registry.end_run(tracking_uri, run_id, ended_status(exc))
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return out


def _local_checkpoint(best) -> tuple[Path, Path | None]:
    """(a local folder holding the checkpoint, a scratch folder to delete afterwards or None).

    A checkpoint in a local storage path is used where it is; one in an object store is downloaded
    into a scratch folder (`Checkpoint.to_directory()` without a path would leave a copy in /tmp)."""
    import pyarrow.fs

    if isinstance(best.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(best.path), None
    scratch = Path(tempfile.mkdtemp(prefix="metazoo-checkpoint-"))
    best.to_directory(str(scratch))
    return scratch, scratch


def _durable_metanet_path(cfg: TrainConfig, best, local: Path) -> str:
    """Where the best model stays after this call: inside the run's checkpoint under the storage path."""
    storage = cfg.checkpoint.storage_path
    if "://" in storage and not storage.startswith("file://"):
        return f"{storage.split('://', 1)[0]}://{best.path.rstrip('/')}/metanet"
    return str(local / "metanet")


def _run_storage(path: str):
    """(storage path, pyarrow filesystem or None) for Ray Train: local folders are made absolute; object
    stores get a filesystem configured like the rest of the project (AWS_* variables, endpoint)."""
    if "://" not in path or path.startswith("file://"):
        return str(Path(path.removeprefix("file://")).expanduser().resolve()), None
    from zoo_ingest.storage import Location

    fs, root = Location(path.rstrip("/")).arrow()
    return root, fs


def _worker_entry(config: dict) -> None:
    from training.worker import train_loop_per_worker

    train_loop_per_worker(config)


def _resources(cfg: TrainConfig) -> dict:
    res = {"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker}
    if cfg.scaling.use_gpu:
        res["GPU"] = cfg.scaling.gpus_per_worker
    return res


def read_limits(cfg: TrainConfig, object_store_bytes: float):
    """Ray Data resource limits of the training split's reading (`data.read_cpus`,
    `data.read_object_store_fraction`); what is not set stays unlimited (Ray Data's own defaults apply)."""
    from ray.data import ExecutionResources

    fraction = cfg.data.read_object_store_fraction
    return ExecutionResources.for_limits(  # not ExecutionResources(...): its unset fields mean 0, not no limit
        cpu=cfg.data.read_cpus,
        object_store_memory=fraction * object_store_bytes if fraction is not None and object_store_bytes else None)


def cache_training_split(cfg: TrainConfig, spec, rows: int, object_store_bytes: float) -> bool:
    """Whether to keep the training rows in the object store across epochs (`data.cache`).

    Every epoch re-executes the dataset: without a cache that means reading, decoding and filtering the
    shards again, on the same CPUs as the training step. Small splits are kept; large ones stream.
    """
    if cfg.data.cache != "auto":
        return cfg.data.cache == "always"
    return _split_bytes(spec, rows) <= 0.25 * object_store_bytes


def keep_rows_in_workers(cfg: TrainConfig, spec, rows: int, object_store_bytes: float) -> bool:
    """Whether each worker keeps its rows in its own memory after its first complete epoch
    (`training.inputs.ShardRows`), so later epochs read nothing: for a split of at most a quarter of the
    object store (the `auto` caching rule; each worker holds its share), unless `data.cache` is `never`."""
    return cfg.data.cache != "never" and _split_bytes(spec, rows) <= 0.25 * object_store_bytes


def _split_bytes(spec, rows: int) -> float:
    return rows * (spec.num_params * 4 + 256)  # float32 weights plus the target and row overhead


def _best_checkpoint(result, primary: str):
    scored = [(m.get(primary), c) for c, m in (result.best_checkpoints or [])]
    scored = [(s, c) for s, c in scored if s is not None and not math.isnan(s)]
    if scored:
        return max(scored, key=lambda sc: sc[0])[1]
    return result.checkpoint
