"""Networks trained per second for each built-in zoo with 1 and 2 Ray workers, and the speed-up.

    .venv/bin/python bench/generate.py [--zoos digits-cnn,digits-siren] [--cnn 80] [--siren 300] [--transformer 40]

Each zoo is generated from scratch into a temporary folder once per worker count, on one local Ray with
as many CPUs as the most workers asked for; the Ray workers are warmed up first (torch and the digits data
imported), so the figures are steady-state training throughput including writing the checkpoints. The
in-process column trains in this process without Ray: the cost of Ray itself is the gap to it. On a
shared machine, `--repeat 3` shows the best of three runs per cell.
Goal: a speed-up of at least 1.7 on 2 cores for digits-cnn.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rate(zoo: str, n: int, workers: int, seed: int) -> float:
    from zoo_ingest.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = generate(zoo, os.path.join(tmp, "zoo"), n, seed, workers=workers, progress=False, summary=False)
        seconds = time.perf_counter() - started
    assert len(result.trained) == n
    return n / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoos", default="digits-cnn,digits-siren,digits-transformer")
    parser.add_argument("--cnn", type=int, default=80, help="networks per run for digits-cnn")
    parser.add_argument("--siren", type=int, default=300, help="networks per run for digits-siren")
    parser.add_argument("--transformer", type=int, default=40, help="networks per run for digits-transformer")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (the first is the baseline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process column")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per cell; the best is shown (less noise on a shared machine)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from zoo_ingest.generate import ZOOS
    from zoo_ingest.ray_runtime import ensure_ray

    counts = [int(w) for w in args.workers.split(",")]
    sizes = {"digits-cnn": args.cnn, "digits-siren": args.siren, "digits-transformer": args.transformer}
    zoos = [z.strip() for z in args.zoos.split(",")]
    unknown = [z for z in zoos if z not in ZOOS]
    if unknown:
        parser.error(f"unknown zoo {unknown[0]!r}; choose from {', '.join(ZOOS)}")
    ensure_ray(num_cpus=max(counts))
    for zoo in zoos:  # warm-up: start the workers and import torch and the data in each
        rate(zoo, 2 * max(counts), max(counts), seed=args.seed + 1)

    header = ["zoo", "n"] + ([] if args.no_in_process else ["in-process/s"])
    header += [f"{w} worker{'s' if w > 1 else ''}/s" for w in counts]
    header += [f"speed-up {w}/{counts[0]}" for w in counts[1:]]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for zoo in zoos:
        n = sizes[zoo]
        cells = [zoo, str(n)]
        if not args.no_in_process:
            cells.append(f"{max(rate(zoo, n, 0, args.seed) for _ in range(args.repeat)):.2f}")
        rates = [max(rate(zoo, n, w, args.seed) for _ in range(args.repeat)) for w in counts]
        cells += [f"{r:.2f}" for r in rates] + [f"{r / rates[0]:.2f}" for r in rates[1:]]
        print(" | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
