"""Training throughput with 1 and 2 Ray Train workers, and how much of each step waits for data.

    python bench/train.py --table zoo_store/tables/digits-cnn [--model monomial_nfn] [--epochs 3]
                          [--cache auto|always|never]

Runs `training.main` twice in this process (1 worker, then 2), MLflow off, and prints networks/s in the
last epoch (the first includes start-up and, with `data.cache`, the read into the object store), the
2-worker / 1-worker speed-up, and the fraction of step time spent waiting for the input pipeline (goal:
under 10%).
"""

from __future__ import annotations

import argparse
import tempfile


def run(table: str, model: str, hidden: int, workers: int, epochs: int, batch: int, activation: str | None, cache: str):
    from training import load_config, main

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"data.table={table}",
            f"model.name={model}",
            f"model.kwargs={{hidden: {hidden}}}",
            f"epochs={epochs}",
            f"batch_size={batch}",
            f"scaling.num_workers={workers}",
            "mlflow.enabled=false",
            "progress=false",
            f"checkpoint.storage_path={tmp}",
            f"checkpoint.every_n_epochs={epochs}",
            f"data.cache={cache}",
        ]
        if activation:
            overrides.append(f"data.activation={activation}")
        result = main(load_config(None, overrides))
    return result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--model", default="monomial_nfn")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--activation", default="relu")
    parser.add_argument(
        "--cache",
        default="auto",
        choices=["auto", "always", "never"],
        help="data.cache: keep the training split in the object store across epochs",
    )
    args = parser.parse_args()
    rows = []
    for workers in (1, 2):
        m = run(args.table, args.model, args.hidden, workers, args.epochs, args.batch_size, args.activation, args.cache)
        rows.append((workers, m["train_networks_per_s"], m["data_wait_fraction"]))
    print(
        f"{args.model} (hidden {args.hidden}), batch {args.batch_size} per worker, last epoch of {args.epochs}, "
        f"data.cache={args.cache}"
    )
    print(f"{'workers':>8}{'networks/s':>12}{'data wait':>12}")
    for w, rate, wait in rows:
        print(f"{w:>8}{rate:>12.1f}{wait * 100:>11.1f}%")
    print(f"speed-up 2 workers / 1 worker: {rows[1][1] / rows[0][1]:.2f}")
    print(f"data-wait fraction (goal < 10%): {max(r[2] for r in rows) * 100:.1f}% at most")


if __name__ == "__main__":
    main()
