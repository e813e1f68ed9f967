"""`metazoo ingest SOURCE_URI --format F --out TABLE_URI`: turn a model zoo into a weight table.

Credentials never go on the command line: S3 keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(or the usual AWS configuration); the endpoint and region from AWS_ENDPOINT_URL[_S3] / AWS_REGION or
the flags below.
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zoo_ingest.schema import DEFAULT_TENSOR_TYPE, TENSOR_TYPES
    from zoo_ingest.sources import FORMATS

    parser.add_argument("source", metavar="SOURCE_URI", help="zoo folder (or glob for --format checkpoints)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="layout of the zoo")
    parser.add_argument("--out", required=True, metavar="TABLE_URI", help="where to write the weight table")
    parser.add_argument("--zoo", help="zoo name recorded in the zoo card (default: the source folder name)")
    g = parser.add_argument_group("splits")
    g.add_argument("--split", default="80/10/10", help="train/val/test fractions, or 'none' (default 80/10/10)")
    g.add_argument("--split-file", help="published split: CSV (split + source|index|model_id), index order, JSON")
    g.add_argument("--split-seed", type=int, default=0, help="salt of the hash split (default 0)")
    g.add_argument("--split-by", metavar="HPARAM", help="hash this hyper-parameter (e.g. a run id), not model_id")
    g = parser.add_argument_group("source options")
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load .pt/.pth files that need pickled code (only for checkpoints you trust)",
    )
    g.add_argument("--activation", help="activation where the metadata gives none (relu, tanh, sine, ...)")
    g.add_argument("--metrics", help="comma-separated metric columns (default: numeric accuracy/loss/... columns)")
    g.add_argument("--metadata", help="checkpoints: metadata CSV (default SOURCE/metadata.csv)")
    g.add_argument("--glob", help="nfn-siren: files to take (default **/*.pth)")
    g.add_argument("--label-pattern", help=r"nfn-siren: regex on the folder name (default _(\d+)s?$)")
    g.add_argument("--index-pattern", help=r"nfn-siren: regex on the file name (default net(\d+)\.pth$)")
    g.add_argument("--layer-order", help="module prefixes in forward order, comma separated (e.g. conv1,conv2,fc)")
    g.add_argument(
        "--shapes",
        choices=("majority", "all"),
        default="majority",
        help="majority: reject checkpoints whose shapes differ from the rest of their keys (default)",
    )
    g = parser.add_argument_group("table layout")
    g.add_argument("--tensor-type", choices=TENSOR_TYPES, default=DEFAULT_TENSOR_TYPE)
    g.add_argument("--compression", default="zstd", help="Parquet compression (zstd, snappy, lz4, none)")
    g.add_argument("--shard-mb", type=float, default=128, help="target shard size in MiB (default 128)")
    g.add_argument("--row-group-mb", type=float, default=32, help="row group size in MiB (default 32)")
    g.add_argument(
        "--compact-mb",
        type=float,
        help="merge small per-chunk shards into shards of about this many MiB (default: --shard-mb; 0: keep them)",
    )
    g.add_argument("--chunk-rows", type=int, help="checkpoints per Ray task (default: about one shard)")
    g.add_argument("--overwrite", action="store_true", help="replace a complete table made from other input")
    g = parser.add_argument_group("storage and Ray")
    g.add_argument("--endpoint-url", help="S3 endpoint (overrides AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    g.add_argument("--region", help="S3 region (overrides AWS_REGION / AWS_DEFAULT_REGION)")
    g.add_argument("--ray-address", help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    g.add_argument("--num-cpus", type=int, help="CPUs of the local Ray")
    g.add_argument("--no-ray", action="store_true", help="run in this process (debugging, tiny zoos)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    from cluster.console import add_console_arguments

    add_console_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from zoo_ingest import IngestError, SourceError, StorageError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    storage = {k: v for k, v in dict(endpoint_url=args.endpoint_url, region=args.region).items() if v}
    source_options = {
        k: v
        for k, v in dict(
            metadata=args.metadata,
            glob=args.glob,
            label_pattern=args.label_pattern,
            index_pattern=args.index_pattern,
            layer_order=args.layer_order,
        ).items()
        if v
    }
    from cluster.console import console, log_dir_for

    try:
        with console("ingest", log_dir_for(None), verbose=args.verbose):
            summary = _ingest(args, storage, source_options)
    except (SourceError, StorageError, IngestError, ValueError, ConnectionError) as exc:  # ConnectionError: Ray
        print(f"metazoo ingest: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


def _ingest(args: argparse.Namespace, storage: dict, source_options: dict):
    from zoo_ingest import ingest

    return ingest(
        args.source,
        args.out,
        args.format,
        zoo=args.zoo,
        split=args.split,
        split_file=args.split_file,
        split_seed=args.split_seed,
        split_by=args.split_by,
        allow_pickle=args.allow_pickle,
        activation=args.activation,
        metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None,
        source_options=source_options,
        tensor_type=args.tensor_type,
        compression=args.compression,
        shard_mb=args.shard_mb,
        row_group_mb=args.row_group_mb,
        compact_mb=args.compact_mb,
        chunk_rows=args.chunk_rows,
        shapes=args.shapes,
        overwrite=args.overwrite,
        storage_options=storage,
        use_ray=not args.no_ray,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        progress=not args.no_progress,
    )
