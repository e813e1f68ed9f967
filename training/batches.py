"""Turning weight-table rows (Ray Data numpy batches) into `(WeightSpace, targets)`."""

from __future__ import annotations

import math

import numpy as np
import torch

from metanets import NetworkSpec, WeightSpace


def batch_to_weightspace(batch: dict, spec: NetworkSpec) -> WeightSpace:
    from zoo_ingest import to_weight_space

    return to_weight_space(batch, spec)


def batch_targets(batch: dict, target: str, kind: str) -> torch.Tensor:
    values = np.asarray(batch[target])
    if kind == "inr_classification":
        return torch.as_tensor(values.astype(np.int64))
    return torch.as_tensor(values.astype(np.float32))


def target_filter(target: str) -> dict[str, tuple[float | None, float | None]]:
    """A `where=` filter that keeps only rows whose target is present (labels are >= 0)."""
    return {target: (0, None)} if target == "label" else {target: (-math.inf, math.inf)}
