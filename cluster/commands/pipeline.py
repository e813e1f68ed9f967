"""`metazoo pipeline --config FILE [key=value ...]`: the main job, end to end."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML (see configs/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides such as zoo.n=200 train.epochs=3")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    from cluster.console import add_console_arguments

    add_console_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from cluster.console import console, log_dir_for, publish_dir_for
    from cluster.pipeline import run_pipeline
    from cluster.pipeline_config import PipelineConfig
    from training.config import load_config

    cfg = load_config(args.config, args.overrides, cls=PipelineConfig)
    for family in cfg.families:
        cfg.train_config(family)
    with console("pipeline", log_dir_for(cfg.store), verbose=args.verbose, publish_to=publish_dir_for(cfg.store)):
        run_pipeline(cfg, progress=not args.no_progress)
    return 0
