"""Training throughput with 1 and 2 Ray Train workers, how much of each step waits for data, and start-up.

    python bench/train.py --table zoo_store/tables/digits-cnn [--model monomial_nfn] [--epochs 3]
                          [--cache auto|always|never] [--compile] [--workers 1,2] [--prefetch 0,2]
                          [--set KEY=VALUE ...]

Runs `training.main` once per worker count and `data.prefetch` value in this process (1 worker, then 2;
for each, the prefetch values in the order given), MLflow off, a checkpoint every epoch (all kept, so every
epoch's metrics come back). Prints, per run, networks/s and the fraction of step time spent waiting for the
input pipeline (goal: under 10%) as the median of the epochs after the first, the first epoch's data wait
(it includes the first read of the split) and the seconds of it spent waiting for the first batch, and the
time to the first optimiser step: from the call to `training.main` (table checks, Ray start on the first
run, dataset set-up) and from the worker's start (DeepSpeed set-up, compilation with --compile, the first
batch). Then each prefetch value's networks/s and data wait against the first value's (`--prefetch 0,2`:
the inline input pipeline against a 2-batch background producer; `0,2,0,2` compares medians of two runs
each) and the 2-worker / 1-worker speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from cluster.console import add_console_arguments, console


def run(table: str, model: str, hidden: int, workers: int, epochs: int, batch: int, activation: str | None,
        cache: str, compile_model: bool = False, prefetch: int = 2, extra: tuple[str, ...] = ()):
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
        overrides += list(extra)
        start = time.time()
        result = main(load_config(None, overrides))
    metrics = dict(result.metrics)
    metrics["first_step_s"] = metrics.get("first_step_unix_time", float("nan")) - start
    history = result.epoch_metrics  # every epoch's: a checkpoint each epoch, all kept
    if len(history) != epochs or [m["epoch"] for m in history] != list(range(epochs)):
        raise RuntimeError(f"expected the metrics of epochs 0-{epochs - 1}, got epochs {[m['epoch'] for m in history]}")
    metrics["first_epoch_data_wait"] = history[0]["data_wait_fraction"]
    metrics["first_batch_wait_s"] = history[0].get("first_batch_wait_s", float("nan"))  # of the first epoch's wait
    steady = history[1:] or history  # the epochs after the first read of the split
    metrics["steady_networks_per_s"] = statistics.median(m["train_networks_per_s"] for m in steady)
    metrics["steady_data_wait"] = statistics.median(m["data_wait_fraction"] for m in steady)
    metrics["epoch_data_waits"] = [m["data_wait_fraction"] for m in history]
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--model", default="monomial_nfn")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--cache", default="auto", choices=["auto", "always", "never"],
                        help="data.cache: keep the training split in the object store across epochs "
                             "(and a small one in each worker's memory after its first epoch)")
    parser.add_argument("--compile", action="store_true", help="model.compile=true")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, run in this order")
    parser.add_argument("--prefetch", default="2",
                        help="comma-separated data.prefetch values (0: inline), run in this order for each worker "
                             "count; a value may repeat (0,2,0,2), its runs' medians are compared")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a further training override, e.g. --set data.train_networks=2400 (repeatable)")
    add_console_arguments(parser)
    args = parser.parse_args()
    prefetches = [int(p) for p in args.prefetch.split(",")]
    rows = []
    with console("bench-train", verbose=args.verbose):  # Ray's and DeepSpeed's own logs go to a file
        for workers in [int(w) for w in args.workers.split(",")]:
            for prefetch in prefetches:
                m = run(args.table, args.model, args.hidden, workers, args.epochs, args.batch_size, args.activation,
                        args.cache, args.compile, prefetch, tuple(args.set))
                rows.append((workers, prefetch, m["steady_networks_per_s"], m["steady_data_wait"],
                             m["first_epoch_data_wait"], m["first_batch_wait_s"], m["first_step_s"],
                             m.get("worker_first_step_s", float("nan")), m["epoch_data_waits"]))
        import ray

        if ray.is_initialized():
            ray.shutdown()  # inside the console, so that Ray Train's clean-up messages go to the log file too
    print(f"{args.model} (hidden {args.hidden}), batch {args.batch_size} per worker, {args.epochs} epochs, "
          f"data.cache={args.cache}, model.compile={str(args.compile).lower()}; networks/s and data wait: "
          f"median of the epochs after the first")
    print(f"{'workers':>8}{'prefetch':>9}{'networks/s':>12}{'data wait':>11}{'1st epoch':>11}{'1st batch s':>13}"
          f"{'first step s':>14}{'in worker s':>13}")
    for w, p, rate, wait, first_wait, first_batch, first, in_worker, _ in rows:
        print(f"{w:>8}{p:>9}{rate:>12.1f}{wait * 100:>10.1f}%{first_wait * 100:>10.1f}%{first_batch:>13.2f}"
              f"{first:>14.1f}{in_worker:>13.1f}")
    for w, p, *_, waits in rows:  # a median can hide slow epochs (e.g. every other one)
        print(f"data wait by epoch, {w} worker(s), prefetch {p}: " + " ".join(f"{x * 100:.1f}%" for x in waits))

    def median(w, p, k):
        return statistics.median(r[k] for r in rows if r[0] == w and r[1] == p)

    base = prefetches[0]
    for w in dict.fromkeys(r[0] for r in rows):
        for p in dict.fromkeys(prefetches[1:]):
            if p == base:
                continue
            ratio = median(w, p, 2) / median(w, base, 2)
            print(f"{w} worker(s), prefetch {p} / prefetch {base}: networks/s x{ratio:.2f}"
                  f"; data wait {median(w, p, 3) * 100:.1f}% vs {median(w, base, 3) * 100:.1f}%, first epoch "
                  f"{median(w, p, 4) * 100:.1f}% vs {median(w, base, 4) * 100:.1f}%")
    last = prefetches[-1]
    counts = list(dict.fromkeys(r[0] for r in rows))
    if len(counts) > 1:
        print(f"speed-up {counts[1]} workers / {counts[0]} worker(s) (prefetch {last}): "
              f"{median(counts[1], last, 2) / median(counts[0], last, 2):.2f}")
    print(f"data-wait fraction (goal < 10%) with prefetch {last}: median "
          f"{max(r[3] for r in rows if r[1] == last) * 100:.1f}% at most; slowest epoch after the first "
          f"{max(max(r[8][1:] or r[8]) for r in rows if r[1] == last) * 100:.1f}%")
    print("time to the first step (the first run includes Ray's start): "
          + ", ".join(f"{r[0]} worker(s) prefetch {r[1]} {r[6]:.1f} s" for r in rows))


if __name__ == "__main__":
    main()
