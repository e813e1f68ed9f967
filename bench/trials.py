"""Benchmark trial scheduling: N trials run concurrently against the same N trials one after another.

    python bench/trials.py --table zoo_store/tables/digits-cnn [--trials 4] [--concurrent 2] [--epochs 2]
                           [--model statnet] [--activation relu]

Runs `cluster.benchmark.main` twice in this process on the same table, one family x N seeds (1-worker
trials, MLflow off, fresh stores so nothing is skipped): first with `trials.max_concurrent=1`, then with
`--concurrent`. Prints both wall times (the report included) and the sequential / concurrent ratio. On a
machine with C free cores, C concurrent 1-worker trials approach a ratio of C when the trials are long
next to the per-trial start-up (Ray Train worker group, DeepSpeed, dataset materialisation).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def run(table: str, trials: int, concurrent: int, epochs: int, model: str, activation: str | None) -> float:
    from cluster.benchmark import main
    from cluster.benchmark_config import BenchmarkConfig
    from training.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"store={tmp}", f"table={table}", f"families=[{{label: {model}, model: {model}}}]",
            f"seeds={list(range(trials))}", f"trials.max_concurrent={concurrent}", "trials.workers_per_trial=1",
            f"train={{epochs: {epochs}, batch_size: 32, mlflow: {{enabled: false}}}}",
            "eval={scales: [1], audit_samples: 1, audit_networks: 16}",
        ]
        if activation:
            overrides.append(f"zoo.activation={activation}")
        started = time.perf_counter()
        out = main(load_config(None, overrides, cls=BenchmarkConfig), progress=False)
        seconds = time.perf_counter() - started
    if out["report"]["failed"]:
        raise SystemExit(f"{out['report']['failed']} trials failed; see the report above")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="statnet")
    parser.add_argument("--activation", default="relu")
    args = parser.parse_args()
    sequential = run(args.table, args.trials, 1, args.epochs, args.model, args.activation)
    concurrent = run(args.table, args.trials, args.concurrent, args.epochs, args.model, args.activation)
    print(f"\n{args.trials} trials ({args.model}, {args.epochs} epochs, 1 worker each):")
    print(f"  one after another: {sequential:.1f} s")
    print(f"  {args.concurrent} at a time:       {concurrent:.1f} s")
    print(f"  ratio sequential / concurrent: {sequential / concurrent:.2f}x")


if __name__ == "__main__":
    main()
