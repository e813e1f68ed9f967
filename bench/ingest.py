"""Ingest and read throughput of weight tables, as ratios against plain pyarrow in the same run.

    .venv/bin/python bench/ingest.py              # 20,000 checkpoints (about 400 MB of float32)
    .venv/bin/python bench/ingest.py --n 2000     # quick run

1. Generates a Small-CNN-Zoo-format folder (weights.npy N x 4970 in TensorFlow order, metrics.csv.gz,
   layout.csv with the real variable names), outside the timings.
2. Tensor column types: writes and reads a sample of the zoo with each candidate Arrow type (and a few
   compressions) into torch tensors, with pyarrow and with Ray Data's numpy batch conversion.
3. Write: `zoo_ingest.ingest` (Ray tasks: read, convert to torch order, hash, split, write shards) against
   plain pyarrow writing the same float32 arrays, with the same Parquet options, into one file; and
   the same ingest without compaction (`compact_mb=0`), with the shard counts of both tables.
4. Read: `open_table(...).batches()` into WeightSpaces against plain pyarrow iterating the plain file
   into torch tensors.
Goals (issue 3): write >= 0.5 and read >= 0.7 of plain pyarrow.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zoo_ingest import ingest, open_table  # noqa: E402
from zoo_ingest.schema import DEFAULT_TENSOR_TYPE, TENSOR_TYPES, tensor_array, tensor_values  # noqa: E402
from zoo_ingest.sources.smallcnnzoo import spec_of  # noqa: E402
from zoo_ingest.writer import WriteSettings, parquet_options  # noqa: E402

VARIABLES = [  # (TF name, TF shape): the Small CNN Zoo's 4,970 parameters
    ("sequential/conv2d/kernel:0", (3, 3, 1, 16)),
    ("sequential/conv2d/bias:0", (16,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_1/bias:0", (16,)),
    ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)),
    ("sequential/conv2d_2/bias:0", (16,)),
    ("sequential/dense/kernel:0", (16, 10)),
    ("sequential/dense/bias:0", (10,)),
]
WIDTH = sum(int(np.prod(s)) for _, s in VARIABLES)
BLOCK = 1024


def make_zoo(root: str, n: int, seed: int = 0) -> None:
    """A Small CNN Zoo folder of n checkpoints (9 steps per run, relu and tanh runs)."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = np.lib.format.open_memmap(
        os.path.join(root, "weights.npy"), mode="w+", dtype=np.float32, shape=(n, WIDTH)
    )
    for lo in range(0, n, 4096):
        hi = min(n, lo + 4096)
        weights[lo:hi] = rng.standard_normal((hi - lo, WIDTH), dtype=np.float32) * 0.1
    weights.flush()
    del weights
    with open(os.path.join(root, "layout.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        pos = 0
        for name, shape in VARIABLES:
            size = int(np.prod(shape))
            w.writerow([name, pos, pos + size, str(shape)])
            pos += size
    with gzip.open(os.path.join(root, "metrics.csv.gz"), "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "step",
                "test_accuracy",
                "train_accuracy",
                "test_loss",
                "train_loss",
                "config.activation",
                "config.learning_rate",
                "config.optimizer",
                "config.dataset",
                "modeldir",
            ]
        )
        for i in range(n):
            run = i // 9
            w.writerow(
                [
                    (i % 9) * 10,
                    rng.uniform(0.1, 0.99),
                    rng.uniform(0.1, 0.99),
                    rng.uniform(0, 3),
                    rng.uniform(0, 3),
                    "relu" if run % 2 else "tanh",
                    10 ** rng.uniform(-4, -1),
                    "adam",
                    "mnist",
                    f"/tmp/zoo/run-{run:06d}",
                ]
            )


def tf_columns(rows: np.ndarray) -> list[tuple[str, tuple, np.ndarray]]:
    """The same float32 arrays as the zoo's variables, sliced from TF-order rows (no conversion)."""
    out, pos = [], 0
    for name, shape in VARIABLES:
        size = int(np.prod(shape))
        out.append((name, shape, rows[:, pos : pos + size]))
        pos += size
    return out


def plain_write(src: str, path: str, tensor_type: str, settings: WriteSettings) -> float:
    """Plain pyarrow: the zoo's arrays, one column per variable, one file, same Parquet options."""
    weights = np.load(os.path.join(src, "weights.npy"), mmap_mode="r")
    spec = _spec()
    start = time.perf_counter()
    rows_per_group = int(settings.row_group_mb * (1 << 20)) // (4 * WIDTH)
    writer = None
    for lo in range(0, len(weights), rows_per_group):
        block = np.asarray(weights[lo : lo + rows_per_group])
        cols = tf_columns(block)
        table = pa.table({key: tensor_array(a, tensor_type, shape) for key, (_, shape, a) in zip(spec.keys, cols)})
        if writer is None:
            schema = pa.schema([pa.field(f.name, f.type) for f in table.schema])
            writer = pq.ParquetWriter(path, schema, **parquet_options(schema, spec, settings))
        writer.write_table(table, row_group_size=table.num_rows)
    writer.close()
    return time.perf_counter() - start


def plain_read(path: str, batch_size: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and its threads, rows)."""
    start, cpu, rows = time.perf_counter(), time.process_time(), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            tensors = [torch.from_numpy(tensor_values(batch.column(i))) for i in range(batch.num_columns)]
            rows += len(batch)
            del tensors
    return time.perf_counter() - start, time.process_time() - cpu, rows


def table_read(uri: str, batch_size: int) -> tuple[float, float, int]:
    start, cpu, rows = time.perf_counter(), time.process_time(), 0
    for ws, _ in open_table(uri).batches(batch_size):
        rows += ws.batch_size
    return time.perf_counter() - start, time.process_time() - cpu, rows


def _spec():
    from zoo_ingest.sources.smallcnnzoo import Variable, parse_layout  # noqa: F401

    table = pa.table(
        {
            "varname": [n for n, _ in VARIABLES],
            "shape": [str(s) for _, s in VARIABLES],
            "start_idx": np.cumsum([0] + [int(np.prod(s)) for _, s in VARIABLES])[:-1],
            "end_idx": np.cumsum([int(np.prod(s)) for _, s in VARIABLES]),
        }
    )
    return spec_of(parse_layout(table, "layout.csv", WIDTH), "relu")


def compare_tensor_types(src: str, work: str, n: int, batch_size: int, rounds: int) -> dict:
    """Write + read a sample with each candidate type / compression, into torch; the candidates take
    turns for `rounds` rounds and the best time of each is kept. Returns {(type, compression): figures}."""
    rows = np.asarray(np.load(os.path.join(src, "weights.npy"), mmap_mode="r")[:n])
    sample = os.path.join(work, "sample")
    os.makedirs(sample, exist_ok=True)
    np.save(os.path.join(sample, "weights.npy"), rows)
    mb = rows.nbytes / 1e6
    candidates = [(t, "zstd") for t in TENSOR_TYPES] + [(DEFAULT_TENSOR_TYPE, c) for c in ("none", "snappy")]
    best = {c: [float("inf"), float("inf")] for c in candidates}
    for _ in range(rounds):
        for kind, compression in candidates:
            settings = WriteSettings(kind, compression, 1 if compression == "zstd" else None)
            path = os.path.join(work, f"types-{kind}-{compression}.parquet")
            best[(kind, compression)][0] = min(best[(kind, compression)][0], plain_write(sample, path, kind, settings))
            best[(kind, compression)][1] = min(best[(kind, compression)][1], plain_read(path, batch_size)[0])
    return {
        (kind, comp): {
            "write": mb / w,
            "read": mb / r,
            "size": os.path.getsize(os.path.join(work, f"types-{kind}-{comp}.parquet")) / rows.nbytes,
        }
        for (kind, comp), (w, r) in best.items()
    }


def ray_batch_conversion(path: str, batch_size: int) -> float:
    """Seconds for Ray Data's Arrow -> numpy batch conversion (what `iter_batches(batch_format="numpy")`
    does to every block) plus torch tensors, on a file already in memory: the part of a Ray Data read
    that depends on the tensor type, without the scheduling noise of a whole Ray Data pipeline."""
    from ray.data.block import BlockAccessor

    table = pq.read_table(path)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for offset in range(0, table.num_rows, batch_size):
            batch = BlockAccessor.for_block(table.slice(offset, batch_size)).to_batch_format("numpy")
            for value in batch.values():
                torch.from_numpy(np.stack(list(value)) if value.dtype == object else value)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="checkpoints in the generated zoo (default 20000)")
    p.add_argument("--sample", type=int, default=4000, help="checkpoints for the tensor-type comparison")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (best kept)")
    p.add_argument("--work", help="working folder (default: a temporary folder, removed at the end)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="metazoo-bench-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "zoo")
    try:
        print(f"generating a Small-CNN-Zoo-format folder of {args.n} checkpoints in {work} ...", flush=True)
        make_zoo(src, args.n)
        mb = args.n * WIDTH * 4 / 1e6

        sample = min(args.sample, args.n)
        results = compare_tensor_types(src, work, sample, args.batch_size, args.repeat + 2)

        sample_mb = sample * WIDTH * 4 / 1e6
        for kind in TENSOR_TYPES:
            path = os.path.join(work, f"types-{kind}-zstd.parquet")
            seconds = min(ray_batch_conversion(path, args.batch_size) for _ in range(args.repeat))
            results[(kind, "zstd")]["ray"] = sample_mb / seconds
        print(f"\ntensor column types ({sample} checkpoints into torch tensors, best of {args.repeat + 2}, MB/s):")
        print(
            f"  {'type':20s} {'compression':12s} {'write':>7s} {'pyarrow read':>13s} {'Ray batches':>12s} {'size':>6s}"
        )
        for (kind, comp), r in results.items():
            ray_read = f"{r['ray']:12.0f}" if "ray" in r else f"{'':12s}"
            print(f"  {kind:20s} {comp:12s} {r['write']:7.0f} {r['read']:13.0f} {ray_read} {r['size']:6.2f}")
        zstd = {k[0]: v for k, v in results.items() if k[1] == "zstd"}
        fastest = max(zstd, key=lambda k: zstd[k]["read"])
        spread = max(v["read"] for v in zstd.values()) / min(v["read"] for v in zstd.values()) - 1
        print(
            f"  fastest pyarrow reader: {fastest} (the three are within {spread:.0%}); fastest Ray Data batch "
            f"conversion: {max(zstd, key=lambda k: zstd[k]['ray'])}; tables use {DEFAULT_TENSOR_TYPE}\n"
            "  (Ray batches: Ray Data's Arrow -> numpy batch conversion + torch, on data already read)"
        )

        from zoo_ingest.ray_runtime import ensure_ray

        ensure_ray(num_cpus=args.num_cpus)
        make_zoo(os.path.join(work, "warmup"), 64, seed=1)  # start Ray's workers outside the timings
        shutil.rmtree(os.path.join(work, "warmup-table"), ignore_errors=True)
        ingest(os.path.join(work, "warmup"), os.path.join(work, "warmup-table"), "smallcnnzoo", progress=False)

        settings = WriteSettings(DEFAULT_TENSOR_TYPE)
        plain_path, table_uri = os.path.join(work, "plain.parquet"), os.path.join(work, "table")
        raw_uri = os.path.join(work, "table-raw")
        t_plain_w = t_ingest = t_raw = t_plain_r = t_table_r = cpu_plain_r = cpu_table_r = float("inf")
        for _ in range(args.repeat):  # alternate the contenders; keep the best of each
            t_plain_w = min(t_plain_w, plain_write(src, plain_path, DEFAULT_TENSOR_TYPE, settings))
            shutil.rmtree(table_uri, ignore_errors=True)
            start = time.perf_counter()
            summary = ingest(src, table_uri, "smallcnnzoo", progress=False)
            t_ingest = min(t_ingest, time.perf_counter() - start)
            assert summary.rows == args.n and not summary.already_complete, summary.format()
            shutil.rmtree(raw_uri, ignore_errors=True)
            start = time.perf_counter()
            ingest(src, raw_uri, "smallcnnzoo", progress=False, compact_mb=0)  # the per-chunk shards as written
            t_raw = min(t_raw, time.perf_counter() - start)
            seconds, cpu, n_plain = plain_read(plain_path, args.batch_size)
            t_plain_r, cpu_plain_r = min(t_plain_r, seconds), min(cpu_plain_r, cpu)
            seconds, cpu, n_table = table_read(table_uri, args.batch_size)
            t_table_r, cpu_table_r = min(t_table_r, seconds), min(cpu_table_r, cpu)
            assert n_plain == n_table == args.n
        print(f"\n{summary.format()}")

        def line(what, seconds):
            return f"  {what:34s} {seconds:7.2f} s {args.n / seconds:9.0f} ckpt/s {mb / seconds:8.0f} MB/s"

        print(f"\nwrite ({args.n} checkpoints, {mb:.0f} MB of float32, best of {args.repeat}):")
        print(line("plain pyarrow, one file", t_plain_w))
        print(line("zoo_ingest.ingest (Ray tasks)", t_ingest))
        print(f"  ratio {t_plain_w / t_ingest:.2f} of plain pyarrow (goal >= 0.5)")
        print(line("ingest without compaction", t_raw))
        print(f"  compaction: the ingest takes {t_ingest / t_raw:.2f} times as long as without it")
        for name, uri in (("compacted", table_uri), ("per-chunk", raw_uri)):
            files = [f for a in open_table(uri).card["architectures"] for f in a["files"]]
            small = sum(f["bytes"] < settings.shard_mb * 2**20 / 8 for f in files)
            print(f"  {name:10s} shards: {len(files):4d}, {small:4d} under an eighth of the target")
        print(f"\nread into torch (batches of {args.batch_size}):")
        print(line("plain pyarrow iter_batches", t_plain_r))
        print(line("open_table().batches -> WeightSpace", t_table_r))
        print(f"  ratio {t_plain_r / t_table_r:.2f} of plain pyarrow (goal >= 0.7)")
        print(
            f"  CPU seconds (less sensitive to a shared machine): plain {cpu_plain_r:.2f}, table {cpu_table_r:.2f}, "
            f"ratio {cpu_plain_r / cpu_table_r:.2f}"
        )
        return 0
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
