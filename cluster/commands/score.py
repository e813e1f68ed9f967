"""`metazoo score CHECKPOINT... --model URI`: predict the generalisation of new checkpoints."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="checkpoint files (.safetensors/.pt/.pth) or zoo folders")
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, a run id, or a local folder")
    parser.add_argument("--format", default="checkpoints", help="format of folder arguments (as for ingest)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .pt/.pth files that need code to unpickle (only for files you trust)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--json", default=None, help="also write the scores as JSON here")

    from cluster.console import add_console_arguments

    add_console_arguments(parser)

def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from cluster.console import console, log_dir_for
    from eval.loading import load_model
    from eval.score import score

    with console("score", log_dir_for(None), verbose=args.verbose):
        model, card, _ = load_model(args.model, args.tracking_uri)
        scores = score(args.checkpoints, model, card, format=args.format, allow_pickle=args.allow_pickle)
    what = "predicted " + (card.get("target", "value") if card.get("task") == "generalization" else "class")
    width = max(len(s.source) for s in scores) if scores else 10
    print(f"{'checkpoint':<{width}}  {what}")
    for s in scores:
        shown = f"{s.value:.4f}" if isinstance(s.value, float) else str(s.value) if s.value is not None else "-"
        print(f"{s.source:<{width}}  {shown}" + (f"   ({s.error})" if s.error else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([s.__dict__ for s in scores], f, indent=2)
    failed = sum(s.error is not None for s in scores)
    if failed:
        print(f"{failed} of {len(scores)} checkpoints could not be scored", file=sys.stderr)
    return 1 if failed == len(scores) else 0
