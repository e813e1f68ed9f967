"""Training throughput with 1 and 2 Ray Train workers, how much of each step waits for data, and start-up.

    python bench/train.py --table zoo_store/tables/digits-cnn [--model monomial_nfn] [--epochs 3]
                          [--cache auto|always|never] [--compile] [--workers 1,2]

Runs `training.main` once per worker count in this process (1 worker, then 2), MLflow off, and prints
networks/s in the last epoch (the first includes start-up and, with `data.cache`, the read into the
object store), the 2-worker / 1-worker speed-up, the fraction of step time spent waiting for the input
pipeline (goal: under 10%), and the time to the first optimiser step: from the call to `training.main`
(table checks, Ray start on the first run, dataset set-up) and from the worker's start (DeepSpeed set-up,
compilation with --compile, the first batch).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def run(table: str, model: str, hidden: int, workers: int, epochs: int, batch: int, activation: str | None,
        cache: str, compile_model: bool = False):
    from training import load_config, main

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"data.table={table}", f"model.name={model}", f"model.kwargs={{hidden: {hidden}}}", f"epochs={epochs}",
            f"batch_size={batch}", f"scaling.num_workers={workers}", "mlflow.enabled=false", "progress=false",
            f"checkpoint.storage_path={tmp}", f"checkpoint.every_n_epochs={epochs}", f"data.cache={cache}",
            f"model.compile={str(compile_model).lower()}",
        ]
        if activation:
            overrides.append(f"data.activation={activation}")
        start = time.time()
        result = main(load_config(None, overrides))
    metrics = dict(result.metrics)
    metrics["first_step_s"] = metrics.get("first_step_unix_time", float("nan")) - start
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--model", default="monomial_nfn")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--cache", default="auto", choices=["auto", "always", "never"],
                        help="data.cache: keep the training split in the object store across epochs")
    parser.add_argument("--compile", action="store_true", help="model.compile=true")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, run in this order")
    args = parser.parse_args()
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        m = run(args.table, args.model, args.hidden, workers, args.epochs, args.batch_size, args.activation,
                args.cache, args.compile)
        rows.append((workers, m["train_networks_per_s"], m["data_wait_fraction"], m["first_step_s"],
                     m.get("worker_first_step_s", float("nan"))))
    print(f"{args.model} (hidden {args.hidden}), batch {args.batch_size} per worker, last epoch of {args.epochs}, "
          f"data.cache={args.cache}, model.compile={str(args.compile).lower()}")
    print(f"{'workers':>8}{'networks/s':>12}{'data wait':>12}{'first step s':>14}{'in worker s':>13}")
    for w, rate, wait, first, in_worker in rows:
        print(f"{w:>8}{rate:>12.1f}{wait * 100:>11.1f}%{first:>14.1f}{in_worker:>13.1f}")
    if len(rows) > 1:
        print(f"speed-up {rows[1][0]} workers / {rows[0][0]} worker(s): {rows[1][1] / rows[0][1]:.2f}")
    print(f"data-wait fraction (goal < 10%): {max(r[2] for r in rows) * 100:.1f}% at most")
    print("time to the first step (the first run includes Ray's start): "
          + ", ".join(f"{r[0]} worker(s) {r[3]:.1f} s" for r in rows))


if __name__ == "__main__":
    main()
