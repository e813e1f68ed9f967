"""`metazoo generate ZOO --out URI [--n N] [--seed S] [--workers K] [--block-size S]`: train a built-in zoo.

Writes one .safetensors file per checkpoint and metadata.csv under URI (see docs/zoos.md), then prints
the spread of the zoo's final metric. Rerunning the same command after an interruption trains only the
networks that are missing. S3 credentials come from the standard AWS variables, never from flags.
"""

from __future__ import annotations

import argparse
import sys

ZOO_NAMES = ("digits-cnn", "digits-siren", "digits-transformer")  # zoo_ingest.generators.ZOOS, without torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zoo", metavar="ZOO", help=f"the zoo to train: {', '.join(ZOO_NAMES)}")
    parser.add_argument("--out", required=True, metavar="URI", help="output folder (local path or fsspec URL)")
    parser.add_argument("--n", type=int, default=100, help="number of networks (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="zoo seed: network k depends on (seed, k) only")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="Ray tasks running at once (default: the cluster's CPUs; 0: in this process, without Ray)",
    )
    parser.add_argument("--networks-per-task", type=int, default=None, metavar="M",
                        help="per-network path only: networks per Ray task (default: chosen from N and the workers)")
    parser.add_argument("--block-size", type=int, default=None, metavar="S",
                        help="networks trained at once per Ray task, in fixed blocks of ids (default 128 for zoos "
                             "with a batched path; 1: the per-network reference path)")
    parser.add_argument("--block-memory-mb", type=int, default=None, metavar="MB",
                        help="memory one block may use; a bigger block is split (default: 1/4 of what is free)")
    parser.add_argument("--activation", choices=("relu", "tanh"), default=None,
                        help="digits-cnn only: every network gets this activation (default: sampled per network; "
                             "the other hyper-parameters are drawn as without it)")
    parser.add_argument("--copies", type=int, default=None,
                        help="digits-siren only: fits per image from different initialisations (default 1)")
    parser.add_argument("--init", choices=("shared", "independent"), default=None,
                        help="digits-siren only: one initialisation per zoo (shared, default) or per network")
    parser.add_argument("--image-size", type=int, default=None, metavar="S",
                        help="digits-siren only: fit images upsampled to S x S (default 8 shared, 28 independent)")
    parser.add_argument("--steps", type=int, default=None,
                        help="digits-siren only: Adam steps per INR (default 100 shared, 500 independent)")
    parser.add_argument("--psnr-floor", type=float, default=None, metavar="DB",
                        help="digits-siren only: INRs below this PSNR keep no label (default: none)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.add_argument("--endpoint-url", help="S3 endpoint (overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    parser.add_argument("--region", help="S3 region (overrides AWS_REGION / AWS_DEFAULT_REGION)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from cluster.console import add_console_arguments

    add_console_arguments(parser)


def _zoo_options(args: argparse.Namespace) -> dict:
    given = dict(init=args.init, size=args.image_size, steps=args.steps, psnr_floor=args.psnr_floor,
                 activation=args.activation)
    return {key: value for key, value in given.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    from cluster.console import console, log_dir_for
    from zoo_ingest.generate import GenerateError, generate

    storage = {k: v for k, v in dict(endpoint_url=args.endpoint_url, region=args.region).items() if v}
    try:
        with console("generate", log_dir_for(None), verbose=args.verbose):
            result = generate(
                args.zoo, args.out, args.n, args.seed, workers=args.workers,
                networks_per_task=args.networks_per_task, block_size=args.block_size,
                block_memory_mb=args.block_memory_mb, copies=args.copies, options=_zoo_options(args),
                address=args.address, storage_options=storage, progress=not args.no_progress, summary=False,
            )
    except (GenerateError, ConnectionError) as exc:
        print(f"metazoo generate: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0
