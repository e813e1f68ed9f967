"""The pipeline's typed configuration (`metazoo pipeline --config FILE [key=value ...]`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from training.config import Strict, TrainConfig, merge_dicts, validate_config

# How each built-in zoo is split: by network (checkpoints of one network never straddle splits) or by
# image (SIREN copies of one image stay together), and what its models learn.
ZOO_DEFAULTS = {
    "digits-cnn": {"split_by": "network_id", "task": "generalization", "target": "test_accuracy"},
    "digits-siren": {"split_by": "hparam.image_index", "task": "inr_classification", "target": "label"},
    "digits-transformer": {"split_by": "network_id", "task": "generalization", "target": "test_accuracy"},
}


class ZooStage(Strict):
    name: str = Field("digits-cnn", description="built-in zoo to generate, or the zoo name of `uri`")
    folder: str | None = Field(None, description="folder name under the store's zoos/, tables/, reports/ "
                                                 "(default: the zoo name); tells zoos of one kind apart")
    uri: str | None = Field(None, description="an existing zoo to ingest instead of generating one")
    format: str = Field("checkpoints", description="ingest format of the zoo")
    n: int = Field(300, ge=1, description="networks to generate")
    seed: int = 0
    copies: int | None = Field(None, description="digits-siren: fits per image")
    options: dict[str, Any] = Field(default_factory=dict, description="the generator's options (digits-cnn: "
                                    "activation; digits-siren: init, size, steps, augment, psnr_floor)")
    split_by: str | None = Field(None, description="hparams key to split by (default: per zoo)")
    split: str = Field("80/10/10", description="train/val/test fractions")
    activation: str | None = Field(None, description="train on the architecture with this activation")


class Family(Strict):
    label: str
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="training settings for this family only, "
                                                              "over the shared `train` section")


class EvalStage(Strict):
    split: str = "test"
    scales: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])
    audit_samples: int = Field(4, ge=1)
    audit_networks: int = Field(256, ge=1)


class PipelineConfig(Strict):
    store: str = Field("zoo_store", description="folder or URL for zoos, tables, runs and reports")
    zoo: ZooStage = Field(default_factory=ZooStage)
    table: str | None = Field(None, description="weight-table URI (default: <store>/tables/<zoo>)")
    families: list[Family]
    train: dict[str, Any] = Field(default_factory=dict, description="training config shared by all families")
    eval: EvalStage = Field(default_factory=EvalStage)
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")

    @field_validator("families")
    @classmethod
    def _unique_labels(cls, v):
        labels = [f.label for f in v]
        if len(set(labels)) != len(labels):
            raise ValueError(f"family labels must be unique, got {labels}")
        if not v:
            raise ValueError("name at least one family to train")
        return v

    @property
    def folder(self) -> str:
        return self.zoo.folder or self.zoo.name

    def table_uri(self) -> str:
        return self.table or f"{self.store.rstrip('/')}/tables/{self.folder}"

    def zoo_uri(self) -> str:
        return self.zoo.uri or f"{self.store.rstrip('/')}/zoos/{self.folder}"

    def train_config(self, family: Family) -> TrainConfig:
        """The full training config of one family, validated (errors name the `train.` key)."""
        defaults = ZOO_DEFAULTS.get(self.zoo.name, {})
        raw = merge_dicts({
            "data": {"table": self.table_uri(), "activation": self.zoo.activation,
                     "target": defaults.get("target", "test_accuracy")},
            "task": {"kind": defaults.get("task", "generalization")},
            "checkpoint": {"storage_path": f"{self.store.rstrip('/')}/runs"},
            "mlflow": {"tracking_uri": self.tracking_uri},
        }, merge_dicts(self.train, family.train))
        raw = merge_dicts(raw, {"model": {"name": family.model, "kwargs": family.kwargs}, "run_name": None})
        return validate_config(raw, TrainConfig, source=f"pipeline 'train' section (family {family.label})")
