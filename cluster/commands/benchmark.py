"""`metazoo benchmark --config FILE [key=value ...]`: families x seeds as concurrent Ray Tune trials."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="benchmark YAML (see configs/benchmark-digits-cnn.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides such as seeds=[0,1] trials.max_concurrent=4")
    parser.add_argument("--no-progress", action="store_true")
    from cluster.console import add_console_arguments

    add_console_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from cluster.benchmark import main
    from cluster.benchmark_config import BenchmarkConfig
    from cluster.console import console, log_dir_for, publish_dir_for
    from training.config import load_config

    cfg = load_config(args.config, args.overrides, cls=BenchmarkConfig)
    with console("benchmark", log_dir_for(cfg.store), verbose=args.verbose, publish_to=publish_dir_for(cfg.store)):
        out = main(cfg, progress=not args.no_progress)
    return 1 if out["report"]["failed"] else 0
