"""Early stopping on a validation metric (higher is better): the decision rank 0 makes each epoch.

The state is a plain dict so it travels in DeepSpeed's `client_state` (a restarted worker group resumes
with the same best value and count) and through a broadcast to the other ranks.
"""

from __future__ import annotations

import math

from training.config import TrainConfig
from training.metrics import PRIMARY_METRIC


def watched_metric(cfg: TrainConfig) -> str:
    return cfg.early_stopping.metric or f"val_{PRIMARY_METRIC[cfg.task.kind]}"


def initial_state() -> dict:
    return {"best": None, "bad_epochs": 0}


def update(state: dict, value: float, patience: int | None, min_delta: float) -> tuple[dict, bool]:
    """(new state, stop now?) after an epoch whose watched metric is `value`.

    An epoch improves when `value > best + min_delta` (the first finite value always does); a NaN
    value counts as no improvement. With `patience` None the state is tracked but never stops.
    """
    best, bad = state["best"], state["bad_epochs"]
    if not math.isnan(value) and (best is None or value > best + min_delta):
        best, bad = value, 0
    else:
        bad += 1
    stop = patience is not None and bad >= patience
    return {"best": best, "bad_epochs": bad}, stop


def broadcast(state: dict, stop: bool, world: int) -> tuple[dict, bool]:
    """Rank 0's decision and state on every rank (all ranks must leave the epoch loop together)."""
    if world == 1:
        return state, stop
    import torch

    best = float("nan") if state["best"] is None else float(state["best"])
    t = torch.tensor([float(stop), best, float(state["bad_epochs"])], dtype=torch.float64)
    torch.distributed.broadcast(t, src=0)
    best = None if math.isnan(float(t[1])) else float(t[1])
    return {"best": best, "bad_epochs": int(t[2])}, bool(t[0])
