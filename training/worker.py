"""The per-worker training loop that Ray Train runs: DeepSpeed engine, streaming shards, checkpoints.

Reads top to bottom: build the model, wrap it in DeepSpeed, resume from the last checkpoint if Ray
Train restarted us, then for each epoch: train on this worker's shard, validate on rank 0, save a
DeepSpeed checkpoint on every rank and report it with the metrics.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from metanets import build_model
from metanets.specs import spec_from_dict
from training import early_stopping
from training.batches import target_filter
from training.batchnorm import BatchReservoir, batchnorm_layers, recompute_batchnorm
from training.config import TrainConfig
from training.engine import compile_engine, skip_shm_comm_op
from training.inputs import TrainingInputs
from training.metrics import PRIMARY_METRIC, task_metrics
from training.model_io import save_metanet
from training.tracking import NoTracker, make_tracker


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    ds = cfg.deepspeed
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "train_batch_size": cfg.batch_size * ds.grad_accum * world_size,
        "gradient_accumulation_steps": ds.grad_accum,
        "gradient_clipping": ds.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warmup = cfg.optim.warmup_steps

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def compute_loss(cfg: TrainConfig, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = out.float()
    if cfg.task.kind == "inr_classification":
        return F.cross_entropy(out, y)
    if cfg.task.loss == "bce":
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y.clamp(0, 1))
    return F.mse_loss(out.reshape(-1), y)


def evaluate(engine, cfg: TrainConfig, config: dict, device, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs and targets over the whole validation split, read straight from the table."""
    from zoo_ingest import open_table

    table = open_table(cfg.data.table)
    target = cfg.data.target
    batches = table.batches(
        cfg.batch_size, split=cfg.data.val_split, arch=config["arch_id"], steps=cfg.data.steps,
        where=target_filter(target), targets=[] if target == "label" else [target],
    )
    engine.eval()
    outs, targets = [], []
    with torch.no_grad():
        for ws, t in batches:
            outs.append(engine(ws.to(device=device, dtype=dtype)).float().cpu().numpy())
            targets.append(t[target].numpy())
    engine.train()
    if not outs:
        return np.zeros((0, 1)), np.zeros((0,))
    return np.concatenate(outs), np.concatenate(targets)


def _maybe_inject_fault(cfg: TrainConfig, epoch: int, rank: int, marker: str | None) -> None:
    """Kill this worker process once (tests use it to exercise recovery from a dead worker)."""
    if cfg.fault.fail_at_epoch != epoch or cfg.fault.fail_rank != rank or not marker:
        return
    if Path(marker).exists():
        return
    Path(marker).write_text(f"worker {rank} killed at epoch {epoch}\n")
    os._exit(1)


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    worker_start = time.time()
    cfg = TrainConfig.model_validate(config["cfg"])
    spec = spec_from_dict(config["spec"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if cfg.deepspeed.precision == "bf16" else torch.float32
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    checkpoint = ray.train.get_checkpoint()
    inputs = TrainingInputs(ray.train.get_dataset_shard("train"), cfg, spec, rank=rank, device=device, dtype=dtype,
                            keep=bool(config.get("keep_rows")))
    if checkpoint is None:  # a fresh run starts at epoch 0: its first read overlaps the model's set-up
        inputs.start(0)
    try:
        _train(config, cfg, spec, rank, world, device, dtype, checkpoint, inputs, worker_start)
    finally:  # stops the input producer on an error, after early stopping and at the end
        inputs.close()


def _train(config: dict, cfg: TrainConfig, spec, rank: int, world: int, device, dtype, checkpoint,
           inputs: TrainingInputs, worker_start: float) -> None:
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    first_step_at = None
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model.name, spec, out_dim=config["out_dim"], **cfg.model.kwargs)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    steps_per_epoch = max(1, math.ceil(config["train_rows_per_worker"] / cfg.batch_size))
    total_steps = max(1, cfg.epochs * steps_per_epoch // cfg.deepspeed.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    skip_shm_comm_op()  # a CPU op training never uses; building it cost ~1 min at start-up (training/engine.py)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world), dist_init_required=False,
    )
    if cfg.model.compile:
        compile_engine(engine)  # in place: parameter and checkpoint names stay those of the plain model

    # eval mode standardises with the current weights' statistics, not a lagging moving average (batchnorm.py)
    reservoir = BatchReservoir(cfg.model.bn_recompute_rows) \
        if cfg.model.bn_recompute_rows and batchnorm_layers(model) else None
    start_epoch, global_step, stopping = 0, 0, early_stopping.initial_state()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            _, client_state = engine.load_checkpoint(d, tag="state")
        start_epoch, global_step = client_state["epoch"] + 1, client_state["global_step"]
        stopping = client_state.get("early_stopping", stopping)
        if client_state.get("stopped"):  # the run had already stopped early before the restart
            start_epoch = cfg.epochs
    inputs.start(start_epoch)

    tracker = make_tracker(config.get("tracking_uri"), config.get("run_id"), cfg.mlflow.system_metrics) \
        if rank == 0 else NoTracker()
    primary = PRIMARY_METRIC[cfg.task.kind]
    progress = None
    if rank == 0:  # the bar (when cfg.progress) and the per-epoch line, drawn by the driver's relay
        from training.progress import WorkerProgress

        progress = WorkerProgress(config.get("progress"), total=cfg.epochs * steps_per_epoch,
                                  initial=start_epoch * steps_per_epoch, desc=f"train {cfg.model.name}",
                                  epochs=cfg.epochs, bar=cfg.progress)

    for epoch in range(start_epoch, cfg.epochs):
        _maybe_inject_fault(cfg, epoch, rank, config.get("fault_marker"))
        losses, rows, waited, first_wait = [], 0, 0.0, None
        skipped_before = engine.skipped_steps
        epoch_start = tick = time.perf_counter()
        for ws, y in inputs.epoch(epoch):  # read, converted and augmented inline or by the prefetcher
            if reservoir is not None:
                reservoir.offer(ws)
            wait = time.perf_counter() - tick  # time the step spent waiting for its input
            waited += wait
            first_wait = wait if first_wait is None else first_wait
            loss = compute_loss(cfg, engine(ws), y)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            first_step_at = first_step_at or time.time()
            rows += ws.batch_size
            global_step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
            tick = time.perf_counter()
        seconds = time.perf_counter() - epoch_start
        stats = torch.tensor([sum(losses), len(losses), rows, waited, seconds, first_wait or 0.0],
                             dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(stats)
        # DeepSpeed skips (and counts) a step whose gradients are not finite; the overflow check is
        # all-reduced, so every rank holds the same count
        skipped = engine.skipped_steps - skipped_before
        metrics = {
            "epoch": epoch, "global_step": global_step, "train_loss": float(stats[0] / max(stats[1], 1)),
            "train_rows": float(stats[2]),  # checkpoints trained on this epoch, all workers together
            "train_networks_per_s": float(stats[2] / max(stats[4] / world, 1e-9)),
            "data_wait_fraction": float(stats[3] / max(stats[4], 1e-9)),
            "first_batch_wait_s": float(stats[5] / world),  # of it, the wait for the epoch's first batch
            "skipped_steps": skipped,
        }
        if first_step_at is not None:  # start-up: DeepSpeed set-up, compilation, the first batch
            metrics.update(worker_first_step_s=first_step_at - worker_start, first_step_unix_time=first_step_at)
        if skipped and rank == 0:
            print(f"warning: epoch {epoch}: {skipped} optimiser steps skipped (non-finite gradients)",
                  file=sys.stderr, flush=True)
        if reservoir is not None:
            recompute_batchnorm(engine.module, reservoir.batches, all_reduce=world > 1)
        val_out = val_y = None
        stop = False
        if rank == 0:
            val_out, val_y = evaluate(engine, cfg, config, device, dtype)
            val_metrics = task_metrics(cfg.task.kind, val_out, val_y, cfg.task.loss)
            metrics.update({f"val_{k}": v for k, v in val_metrics.items()})
            stopping, stop = early_stopping.update(stopping, metrics[early_stopping.watched_metric(cfg)],
                                                   cfg.early_stopping.patience, cfg.early_stopping.min_delta)
        stopping, stop = early_stopping.broadcast(stopping, stop, world)
        metrics["epochs_run"] = epoch + 1
        if rank == 0:
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
            progress.epoch(metrics)
        last = epoch == cfg.epochs - 1 or stop
        if (epoch + 1) % cfg.checkpoint.every_n_epochs == 0 or last:
            with tempfile.TemporaryDirectory() as tmp:
                engine.save_checkpoint(tmp, tag="state", client_state={
                    "epoch": epoch, "global_step": global_step, "early_stopping": stopping, "stopped": stop})
                if rank == 0:
                    save_metanet(Path(tmp) / "metanet", engine.module, config["card"] | {"epoch": epoch})
                    np.savez(Path(tmp) / "val_predictions.npz", outputs=val_out, targets=val_y)
                metrics[f"val_{primary}"] = metrics.get(f"val_{primary}", float("nan"))
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if stop:
            if rank == 0 and epoch < cfg.epochs - 1:
                print(f"early stopping after epoch {epoch}: {early_stopping.watched_metric(cfg)} did not improve "
                      f"by more than {cfg.early_stopping.min_delta} for {cfg.early_stopping.patience} epochs",
                      flush=True)
            break
    if progress is not None:
        progress.close()
    tracker.close()
