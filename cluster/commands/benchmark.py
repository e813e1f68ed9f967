"""`metazoo benchmark --config FILE [key=value ...]`: families x seeds as concurrent Ray Tune trials."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="benchmark YAML (see configs/benchmark-digits-cnn.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides such as seeds=[0,1] trials.max_concurrent=4")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cluster.benchmark import main
    from cluster.benchmark_config import BenchmarkConfig
    from training.config import load_config

    cfg = load_config(args.config, args.overrides, cls=BenchmarkConfig)
    out = main(cfg, progress=not args.no_progress)
    return 1 if out["report"]["failed"] else 0
