"""Training throughput with 1 and 2 Ray Train workers, how much of each step waits for data, and start-up.

    python bench/train.py --table zoo_store/tables/digits-cnn [--model monomial_nfn] [--epochs 3]
                          [--cache auto|always|never] [--compile] [--workers 1,2] [--prefetch 0,2]

Runs `training.main` once per worker count and `data.prefetch` value in this process (1 worker, then 2;
for each, the prefetch values in the order given), MLflow off, a checkpoint every epoch (all kept, so the
first epoch's metrics can be read back), and prints networks/s in the last epoch (the first includes the
first read of the split), the 2-worker / 1-worker speed-up, the fraction of step time spent waiting for
the input pipeline (goal: under 10%), and the time to the first optimiser step: from the call to `training.main`
(table checks, Ray start on the first run, dataset set-up) and from the worker's start (DeepSpeed set-up,
compilation with --compile, the first batch). With several prefetch values it also prints, per worker
count, the first epoch's data wait and each value's networks/s and data wait against the first value's
(`--prefetch 0,2`: the inline input pipeline against a 2-batch background producer).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def run(table: str, model: str, hidden: int, workers: int, epochs: int, batch: int, activation: str | None,
        cache: str, compile_model: bool = False, prefetch: int = 2):
    from training import load_config, main

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"data.table={table}", f"model.name={model}", f"model.kwargs={{hidden: {hidden}}}", f"epochs={epochs}",
            f"batch_size={batch}", f"scaling.num_workers={workers}", "mlflow.enabled=false", "progress=false",
            f"checkpoint.storage_path={tmp}", "checkpoint.every_n_epochs=1", f"checkpoint.num_to_keep={epochs}",
            f"data.cache={cache}", f"model.compile={str(compile_model).lower()}", f"data.prefetch={prefetch}",
        ]
        if activation:
            overrides.append(f"data.activation={activation}")
        start = time.time()
        result = main(load_config(None, overrides))
    metrics = dict(result.metrics)
    metrics["first_step_s"] = metrics.get("first_step_unix_time", float("nan")) - start
    metrics["first_epoch_data_wait"] = _first_epoch_wait(result)
    return metrics


def _first_epoch_wait(result) -> float:
    """The data-wait fraction of the run's first epoch, from Ray Train's metrics history."""
    history = getattr(result, "metrics_dataframe", None)
    if history is None or "data_wait_fraction" not in history or history.empty:
        return float("nan")
    return float(history.sort_values("epoch")["data_wait_fraction"].iloc[0])


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
    parser.add_argument("--prefetch", default="2", help="comma-separated data.prefetch values (0: inline), "
                                                        "run in this order for each worker count")
    args = parser.parse_args()
    prefetches = [int(p) for p in args.prefetch.split(",")]
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        for prefetch in prefetches:
            m = run(args.table, args.model, args.hidden, workers, args.epochs, args.batch_size, args.activation,
                    args.cache, args.compile, prefetch)
            rows.append((workers, prefetch, m["train_networks_per_s"], m["data_wait_fraction"],
                         m["first_epoch_data_wait"], m["first_step_s"], m.get("worker_first_step_s", float("nan"))))
    print(f"{args.model} (hidden {args.hidden}), batch {args.batch_size} per worker, last epoch of {args.epochs}, "
          f"data.cache={args.cache}, model.compile={str(args.compile).lower()}")
    print(f"{'workers':>8}{'prefetch':>9}{'networks/s':>12}{'data wait':>11}{'1st epoch':>11}{'first step s':>14}"
          f"{'in worker s':>13}")
    for w, p, rate, wait, first_wait, first, in_worker in rows:
        print(f"{w:>8}{p:>9}{rate:>12.1f}{wait * 100:>10.1f}%{first_wait * 100:>10.1f}%{first:>14.1f}"
              f"{in_worker:>13.1f}")
    base = {w: (rate, wait) for w, p, rate, wait, *_ in reversed(rows) if p == prefetches[0]}
    for w, p, rate, wait, *_ in rows:
        if p != prefetches[0]:
            print(f"{w} worker(s), prefetch {p} / prefetch {prefetches[0]}: networks/s x{rate / base[w][0]:.2f}, "
                  f"data wait {wait * 100:.1f}% vs {base[w][1] * 100:.1f}%")
    same = [r for r in rows if r[1] == prefetches[-1]]
    if len(same) > 1:
        print(f"speed-up {same[1][0]} workers / {same[0][0]} worker(s) (prefetch {prefetches[-1]}): "
              f"{same[1][2] / same[0][2]:.2f}")
    print(f"data-wait fraction (goal < 10%), last epoch: {max(r[3] for r in same) * 100:.1f}% at most with "
          f"prefetch {prefetches[-1]}")
    print("time to the first step (the first run includes Ray's start): "
          + ", ".join(f"{r[0]} worker(s) prefetch {r[1]} {r[5]:.1f} s" for r in rows))


if __name__ == "__main__":
    main()
