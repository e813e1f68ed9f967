"""Typed training configuration: YAML file + `key=value` overrides, unknown keys rejected by name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    table: str = Field(description="weight-table URI (local path, s3://..., any fsspec URL)")
    arch: str | None = Field(None, description="arch_id to train on, or 'largest' (the one with most rows); "
                                               "None: the table's only architecture")
    activation: str | None = Field(None, description="pick the table's architecture with this activation")
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    steps: list[int] | None = Field(None, description="keep checkpoints at these steps only; None: all")
    train_networks: int | None = Field(
        None, ge=1, description="train on this many networks of the training split (all their checkpoints): "
                                "the first in a fixed order (hash of the table's network key), so a smaller "
                                "subset lies inside a bigger one and every family and seed gets the same "
                                "networks; validation and test splits are unchanged. None: all")
    target: str = Field("test_accuracy", description="metric column to regress, or 'label' to classify")
    shuffle_buffer: int = Field(512, ge=1, description="a streamed epoch draws each batch from at least this "
                                                       "many of the worker's rows (a kept split: from all)")
    prefetch: int = Field(
        2, ge=0, description="training batches a background thread per worker reads, converts and augments "
                             "ahead of the step (and the next epoch's read it starts while the epoch ends, "
                             "validates and checkpoints); 0: inline, in the step loop. The batches are the same")
    cache: Literal["auto", "always", "never"] = Field(
        "auto", description="keep the filtered training split in Ray's object store after the first read "
                            "(it spills to disk when full) instead of reading the Parquet shards every epoch; "
                            "auto: when it takes at most a quarter of the object store. A split that small "
                            "(auto or always) is also kept by each worker, its own rows in its own memory, "
                            "after its first complete epoch: later epochs shuffle them without a read")
    read_cpus: float | None = Field(
        None, gt=0, description="logical CPUs the training split's reading (Ray Data tasks) may hold at once; "
                                "None: what the cluster has free. Trials sharing a cluster each get a share "
                                "(`metazoo benchmark` sets it), so one trial's reads cannot starve another's")
    read_object_store_fraction: float | None = Field(
        None, gt=0, le=1, description="fraction of Ray's object store the training split's reading may fill; "
                                      "None: all of it. Set with read_cpus for trials sharing a cluster")


class TaskConfig(Strict):
    kind: Literal["generalization", "inr_classification"] = "generalization"
    loss: Literal["bce", "mse", "ce"] = "bce"
    num_classes: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _loss_fits_task(self):
        if self.kind == "generalization" and self.loss == "ce":
            raise ValueError("task.loss 'ce' is for inr_classification; use 'bce' or 'mse'")
        if self.kind == "inr_classification" and self.loss != "ce":
            self.loss = "ce"
        return self


class ModelConfig(Strict):
    name: str = "monomial_nfn"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    compile: bool = Field(False, description="torch.compile the metanetwork inside DeepSpeed's engine (CPU and GPU); "
                                             "the first steps pay the compile time, saved models stay uncompiled")
    bn_recompute_rows: int = Field(
        1024, ge=0, description="models with BatchNorm (standardize: true): before each validation, set its running "
                                "statistics to the average over this many of the worker's first training rows under "
                                "the current weights (training/batchnorm.py); 0: keep the moving averages")


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)


class AugmentConfig(Strict):
    enabled: bool = False
    permute: bool = True
    scale_log10_max: float = Field(0.0, ge=0, description="positive scales U[1, 10^k] for ReLU zoos")
    signs: bool = Field(True, description="random sign flips for tanh and sine zoos")
    phase: bool = Field(False, description="random pi phase shifts (k in {-1, 0, 1}) for sine zoos")
    omega_0: float = Field(30.0, gt=0, description="the sine zoo's frequency, for phase shifts")
    # INR augmentations after DWSNets; they change the function (not group actions) but keep a digit's label.
    # They act on the first layer, i.e. on the input coordinates x of an MLP INR: f'(x) = f(s R x + t)
    inr_translate: float = Field(0.0, ge=0, description="shift t ~ U[-k, k] per input coordinate: b_1 += W_1 t")
    inr_rotate_degrees: float = Field(0.0, ge=0, le=180, description="rotation R of 2-d inputs by U[-k, k] "
                                                                     "degrees: W_1 -> W_1 R")
    inr_scale: float = Field(0.0, ge=0, lt=1, description="input scaling s ~ U[1 - k, 1 + k]: W_1 -> s W_1")
    weight_dropout: float = Field(0.0, ge=0, lt=1, description="zero each weight entry (biases kept) with this "
                                                               "probability, without rescaling")


class DeepSpeedConfig(Strict):
    zero_stage: int = Field(0, ge=0, le=2)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"


class ScalingConfig(Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)


class CheckpointConfig(Strict):
    every_n_epochs: int = Field(1, ge=1)
    num_to_keep: int = Field(2, ge=1)
    storage_path: str = Field("./zoo_store/runs", description="where Ray Train keeps run folders")
    max_failures: int = Field(1, ge=0, description="worker failures to recover from by restarting")


class MLflowConfig(Strict):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment: str | None = Field(None, description="default: metazoo-<zoo>-<task>")
    artifact_location: str | None = Field(None, description="default for new experiments: ./mlartifacts")
    register_model: bool = True
    registered_model: str | None = Field(None, description="default: the experiment name")
    system_metrics: bool = True
    parent_run_id: str | None = Field(None, description="create the run as a nested child of this run "
                                                        "(tag mlflow.parentRunId; `metazoo benchmark` sets it)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on the run")


# What rank 0 logs after each epoch (training.metrics.task_metrics); higher is better for all of them.
VALIDATION_METRICS = {"generalization": ("val_kendall_tau", "val_r2"), "inr_classification": ("val_accuracy",)}


class EarlyStoppingConfig(Strict):
    """Stop when the validation metric has not improved by more than `min_delta` for `patience` epochs;
    `epochs` stays the cap. Disabled while `patience` is null."""

    metric: str | None = Field(None, description="validation metric to watch, e.g. val_kendall_tau "
                                                 "(higher is better); default: the task's primary one")
    patience: int | None = Field(None, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="an improvement must exceed this")

    @model_validator(mode="after")
    def _validation_metric(self):
        if self.metric is not None and not self.metric.startswith("val_"):
            raise ValueError(f"early_stopping.metric {self.metric!r} must be a validation metric (val_...)")
        return self


class FaultConfig(Strict):
    """Fault injection for tests: a worker process dies once, at the start of an epoch."""

    fail_at_epoch: int | None = None
    fail_rank: int = 0


class TrainConfig(Strict):
    data: DataConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    fault: FaultConfig = Field(default_factory=FaultConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    epochs: int = Field(5, ge=1, description="epochs to train (the cap when early stopping is on)")
    batch_size: int = Field(32, ge=1, description="micro-batch per worker")
    seed: int = 0
    run_name: str | None = None
    progress: bool = True

    @model_validator(mode="after")
    def _early_stopping_metric_exists(self):
        metric = self.early_stopping.metric
        known = VALIDATION_METRICS[self.task.kind]
        if metric is not None and metric not in known:
            raise ValueError(f"early_stopping.metric {metric!r} is not logged for task {self.task.kind!r} "
                             f"(choose from {', '.join(known)})")
        return self

    def tracking_uri(self) -> str:
        return resolve_tracking_uri(self.mlflow.tracking_uri)


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The MLflow tracking URI: `explicit`, else $MLFLOW_TRACKING_URI, else the embedded sqlite:///mlflow.db."""
    return absolute_tracking_uri(explicit or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")


def absolute_tracking_uri(uri: str) -> str:
    """`sqlite:///mlflow.db` names a file relative to the current directory; Ray workers run elsewhere,
    so relative SQLite (and file) stores are made absolute. Server URLs pass through unchanged."""
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme):
            path = uri[len(scheme):]
            if scheme == "sqlite:///" and path.startswith("/"):
                return uri
            if scheme == "file://" and path.startswith("/"):
                return uri
            return scheme + str(Path(path).expanduser().resolve())
    if "://" not in uri:
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        d = nxt
    d[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """['a.b=1', 'c=x'] -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        _set_path(out, key.strip(), yaml.safe_load(raw) if raw else "")
    return out


def merge_dicts(base: dict, extra: dict) -> dict:
    """`extra` over `base`, recursively for nested sections."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate_config(raw: dict, cls: type[BaseModel] = TrainConfig, source: str = "config"):
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key!r}: {msg}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, cls=TrainConfig):
    """Load a YAML config (or start empty), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = merge_dicts(raw, parse_overrides(overrides or []))
    return validate_config(raw, cls, str(path) if path else "config")
