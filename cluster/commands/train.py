"""`metazoo train --config FILE [key=value ...]`"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML training config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="config overrides such as epochs=3 model.name=hnp")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    from cluster.console import add_console_arguments

    add_console_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    import yaml

    from training import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"metazoo train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    from cluster.console import console, log_dir_for, publish_dir_for
    from training import main

    storage = cfg.checkpoint.storage_path
    with console("train", log_dir_for(storage), verbose=args.verbose, publish_to=publish_dir_for(storage)):
        result = main(cfg)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())
                        if k.startswith(("best_val", "val_")) and isinstance(v, float))
    print(f"trained {cfg.model.name} ({result.num_params} parameters): {metrics}")
    if result.metanet_path:  # what `metazoo eval --model` and `metazoo score --model` take without MLflow
        print(f"best model: {result.metanet_path}")
    if result.run_id:
        print(f"MLflow run {result.run_id} in experiment {result.experiment!r}"
              + (f"; registered {result.registered_model} v{result.version}"
                 + (" (champion)" if result.champion else "") if result.registered_model else ""))
        print(f"open the MLflow UI: mlflow ui --backend-store-uri {cfg.tracking_uri()} --host 127.0.0.1")
    return 0
