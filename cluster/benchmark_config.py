"""`metazoo benchmark`'s typed configuration: the pipeline's sections plus seeds and trial resources."""

from __future__ import annotations

from pydantic import Field, field_validator

from cluster.pipeline_config import Family, PipelineConfig
from training.config import Strict, TrainConfig, merge_dicts, validate_config


class TrialResources(Strict):
    max_concurrent: int = Field(2, ge=1, description="trials running at once (Ray Tune max_concurrent_trials)")
    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers of each trial's training")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="> 0 trains on GPUs (NCCL)")
    share_reads: bool = Field(True, description="give trials running at once equal shares of the free CPUs and "
                                                "object store for their data reads (false: each plans for all)")


def _check_seeds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("name at least one seed, e.g. seeds: [0, 1, 2, 3, 4]")
    repeated = sorted({s for s in v if v.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds must be distinct; repeated: {repeated}")
    return v


class BenchmarkFamily(Family):
    seeds: list[int] | None = Field(None, description="this family's seeds instead of the benchmark's `seeds`: "
                                                       "more seeds where trials are cheap, fewer where not")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        return v if v is None else _check_seeds(v)


class BenchmarkConfig(PipelineConfig):
    families: list[BenchmarkFamily]
    seeds: list[int] = Field(description="one trial per family and seed; the seed is the training seed")
    trials: TrialResources = Field(default_factory=TrialResources)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        return _check_seeds(v)

    def family_seeds(self, family: BenchmarkFamily) -> list[int]:
        return family.seeds if family.seeds is not None else self.seeds

    def all_seeds(self) -> list[int]:
        """Every seed some family runs, sorted."""
        return sorted({s for f in self.families for s in self.family_seeds(f)})

    def trial_config(self, family: Family, seed: int) -> TrainConfig:
        """One trial's training config: the family's (`train` section) with this seed, the trial's
        resources (the `trials` section wins over `train.scaling`), tagged for MLflow."""
        raw = self.train_config(family).model_dump(mode="json")
        t = self.trials
        raw = merge_dicts(raw, {
            "seed": seed, "progress": False,
            "scaling": {"num_workers": t.workers_per_trial, "cpus_per_worker": t.cpus_per_worker,
                        "use_gpu": t.gpus_per_worker > 0, "gpus_per_worker": t.gpus_per_worker or 1.0},
            "mlflow": {"tags": {**raw["mlflow"]["tags"], "metazoo.family": family.label,
                                "metazoo.seed": str(seed)}},
        })
        return validate_config(raw, TrainConfig, source=f"benchmark trial (family {family.label}, seed {seed})")
