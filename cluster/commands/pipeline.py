"""`metazoo pipeline --config FILE [key=value ...]`: the main job, end to end."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline YAML (see configs/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides such as zoo.n=200 train.epochs=3")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from cluster.pipeline import run_pipeline
    from cluster.pipeline_config import PipelineConfig
    from training.config import load_config

    cfg = load_config(args.config, args.overrides, cls=PipelineConfig)
    for family in cfg.families:
        cfg.train_config(family)
    run_pipeline(cfg, progress=not args.no_progress)
    return 0
