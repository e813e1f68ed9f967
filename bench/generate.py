"""Networks trained per second: the batched path against the per-network path, per zoo, in the same run.

    .venv/bin/python bench/generate.py [--zoos digits-cnn,digits-transformer] [--workers 0] \\
        [--reference 24] [--batched 256] [--block-sizes 64]

Each cell generates a zoo from scratch into a temporary folder, checkpoints and metadata included. The
per-network path (block size 1, the reference) trains `--reference` networks, the batched path
`--batched` networks per block size; both are timed in this process, one after the other, so they see
the same machine load. `--workers 0` trains in this process (one core, no Ray); `--workers 2` runs two
Ray tasks at once (2 cores), after warming up the Ray workers. Zoos without a batched path show only the
reference. On a shared machine, `--repeat 3` keeps the best of three runs per cell; the load average is
printed with the table.
Goal: batched digits-cnn at least 20x the per-network path on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rate(zoo: str, n: int, workers: int, seed: int, block_size: int) -> float:
    from zoo_ingest.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = generate(
            zoo, os.path.join(tmp, "zoo"), n, seed, workers=workers, block_size=block_size, progress=False,
            summary=False,
        )
        seconds = time.perf_counter() - started
    assert len(result.trained) == n
    return n / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoos", default="digits-cnn,digits-transformer,digits-siren")
    parser.add_argument("--reference", type=int, default=24, help="networks per per-network run")
    parser.add_argument("--batched", type=int, default=256, help="networks per batched run")
    parser.add_argument("--block-sizes", default="64", help="block sizes to time (comma-separated)")
    parser.add_argument("--workers", type=int, default=0, help="0: in this process; K: K Ray tasks at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is shown")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from zoo_ingest.generate import ZOOS

    sizes = [int(s) for s in args.block_sizes.split(",")]
    zoos = [z.strip() for z in args.zoos.split(",")]
    unknown = [z for z in zoos if z not in ZOOS]
    if unknown:
        parser.error(f"unknown zoo {unknown[0]!r}; choose from {', '.join(ZOOS)}")
    if args.workers:
        from zoo_ingest.ray_runtime import ensure_ray

        ensure_ray(num_cpus=args.workers)
        for zoo in zoos:  # warm-up: start the workers and import torch and the data in each
            rate(zoo, 2 * args.workers, args.workers, args.seed + 1, 1)

    header = ["zoo", "per-network/s"] + [f"block {s}/s" for s in sizes] + [f"speed-up {s}" for s in sizes]
    print(f"workers {args.workers}; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    def best(zoo: str, n: int, block: int) -> float:
        return max(rate(zoo, n, args.workers, args.seed, block) for _ in range(args.repeat))

    for zoo in zoos:
        reference = best(zoo, args.reference, 1)
        if ZOOS[zoo].train_block is None:
            rates = [None] * len(sizes)
        else:
            rates = [best(zoo, max(args.batched, s), s) for s in sizes]
        cells = [zoo, f"{reference:.2f}"] + ["-" if r is None else f"{r:.2f}" for r in rates]
        cells += ["-" if r is None else f"{r / reference:.1f}x" for r in rates]
        print(" | ".join(cells), flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
