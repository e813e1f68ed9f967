"""`metazoo eval --model URI --table TABLE_URI`: test metric, robustness to group actions, invariance audit."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, a run id, or a local folder")
    parser.add_argument("--table", required=True, help="weight-table URI")
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="keep checkpoints at these steps")
    parser.add_argument("--scales", type=int, nargs="*", default=[1, 2, 3, 4],
                        help="robustness scale ranges U[1, 10^k] for ReLU zoos (default 1 2 3 4)")
    parser.add_argument("--audit-samples", type=int, default=4, help="group elements per network in the audit")
    parser.add_argument("--audit-networks", type=int, default=256, help="networks in the audit")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here (default: eval-<model>.json)")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the results to the model's run")

    from cluster.console import add_console_arguments

    add_console_arguments(parser)

def run(args: argparse.Namespace) -> int:
    from cluster.console import console, log_dir_for
    from eval.api import evaluate_model
    from training.config import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    with console("eval", log_dir_for(None), verbose=args.verbose):
        result, json_path, text = evaluate_model(
            args.model, args.table, split=args.split, steps=args.steps, exponents=tuple(args.scales),
            audit_samples=args.audit_samples, audit_networks=args.audit_networks, batch_size=args.batch_size,
            seed=args.seed, json_path=args.json, tracking_uri=tracking_uri, log_mlflow=not args.no_mlflow,
        )
    print(text)
    print(f"results written to {json_path}")
    return 0
