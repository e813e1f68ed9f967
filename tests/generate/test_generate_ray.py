"""Generating zoos with Ray tasks: determinism, resumption, the accuracy spread, ingest."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metanets import NetworkSpec
from zoo_ingest.generate import generate

pytestmark = pytest.mark.ray


def run(zoo, out, n, seed=0, **kw):
    return generate(zoo, str(out), n, seed, progress=False, summary=False, **kw)


def files(folder) -> dict[str, bytes]:
    """Every checkpoint and metadata.csv, by name (the internal _parts/ are left out)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors") or name == "metadata.csv":
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = f.read()
    return out


def read_metadata(folder) -> list[dict]:
    with open(os.path.join(folder, "metadata.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cnn_zoo(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "zoo"
    return out, run("digits-cnn", out, 50, seed=0, workers=2)


@pytest.mark.parametrize(
    "zoo,n,extra",
    [("digits-cnn", 8, {}), ("digits-siren", 6, {"copies": 2}), ("digits-transformer", 4, {})],
)
def test_same_seed_gives_identical_files_whatever_the_workers(ray_local, tmp_path, zoo, n, extra):
    # The per-network path (block size 1): any number of networks per task.
    a = run(zoo, tmp_path / "a", n, seed=5, workers=2, networks_per_task=1, **extra)
    b = run(zoo, tmp_path / "b", n, seed=5, workers=1, networks_per_task=n, **extra)
    c = run(zoo, tmp_path / "c", n, seed=5, workers=0, networks_per_task=3, **extra)  # in-process
    assert a.trained == b.trained == c.trained == tuple(range(n))
    fa = files(tmp_path / "a")
    assert len(fa) == a.checkpoints + 1
    assert fa == files(tmp_path / "b") == files(tmp_path / "c")
    other = run(zoo, tmp_path / "d", n, seed=6, workers=2, block_size=1, **extra)
    first = sorted(f for f in fa if f.endswith(".safetensors"))[0]
    assert other.checkpoints >= 1 and files(tmp_path / "d").get(first) != fa[first]


@pytest.mark.parametrize("zoo,n", [("digits-cnn", 10), ("digits-transformer", 6)])
def test_the_batched_path_gives_identical_files_whatever_the_workers(ray_local, tmp_path, zoo, n):
    a = run(zoo, tmp_path / "a", n, seed=5, workers=2, block_size=4)  # blocks [0, 4), [4, 8), [8, n)
    b = run(zoo, tmp_path / "b", n, seed=5, workers=1, block_size=4)
    c = run(zoo, tmp_path / "c", n, seed=5, workers=0, block_size=4)
    assert a.trained == b.trained == c.trained == tuple(range(n))
    fa = files(tmp_path / "a")
    assert len(fa) == a.checkpoints + 1
    assert fa == files(tmp_path / "b") == files(tmp_path / "c")
    # Same hparams, activations and step-0 weights as the per-network path; same metadata columns.
    run(zoo, tmp_path / "alone", n, seed=5, workers=2, block_size=1)
    fd = files(tmp_path / "alone")
    step0 = [f for f in fd if f.endswith("_step-00000.safetensors")]
    assert len(step0) == n and all(fa[f] == fd[f] for f in step0)
    batched, reference = read_metadata(tmp_path / "a"), read_metadata(tmp_path / "alone")
    assert list(batched[0]) == list(reference[0])  # the same columns, in the same order
    hparams = [c for c in reference[0] if c.startswith("hparam.") or c in ("network_id", "split", "activation")]
    assert {tuple(r[c] for c in hparams) for r in batched} == {tuple(r[c] for c in hparams) for r in reference}
    manifest = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert (manifest["block_size"], manifest["block_version"]) == (4, 1)
    assert json.loads((tmp_path / "alone" / "generation.json").read_text())["block_size"] == 1


def test_a_block_split_for_memory_trains_the_same_networks(tmp_path):
    from zoo_ingest.generators.worker import networks_at_once

    assert networks_at_once("digits-cnn", 8, block_memory=4 << 20) == 2  # 2 MB per CNN
    assert networks_at_once("digits-cnn", 8, block_memory=1) == 1
    assert networks_at_once("digits-cnn", 8) == 8  # what this machine has free
    whole = run("digits-cnn", tmp_path / "whole", 6, seed=2, workers=0, block_size=6)
    parts = run("digits-cnn", tmp_path / "parts", 6, seed=2, workers=0, block_size=6, block_memory_mb=4)
    assert parts.trained == whole.trained == tuple(range(6))
    a, b = read_metadata(tmp_path / "whole"), read_metadata(tmp_path / "parts")
    assert [r["file"] for r in a] == [r["file"] for r in b]
    for ra, rb in zip(a, b):  # companions change only the float rounding of the batched kernels
        assert float(ra["test_loss"]) == pytest.approx(float(rb["test_loss"]), abs=1e-3)
        sa, sb = load_file(tmp_path / "whole" / ra["file"]), load_file(tmp_path / "parts" / rb["file"])
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-3)


def test_rerun_trains_only_what_is_missing(ray_local, tmp_path):
    out = tmp_path / "zoo"
    first = run("digits-cnn", out, 10, seed=3, workers=2)
    assert first.trained == tuple(range(10))
    complete = files(out)
    parts = {k: out / "_parts" / f"net-{k:06d}.json" for k in range(10)}
    written = {k: p.stat().st_mtime_ns for k, p in parts.items()}
    # An interruption: network 3 lost its last checkpoint, network 7 wrote its checkpoints but not its
    # part, metadata.csv was cut mid-row and a temporary file was left behind.
    last_of_3 = sorted(f for f in complete if f.startswith("net-000003_"))[-1]
    (out / last_of_3).unlink()
    parts[7].unlink()
    text = (out / "metadata.csv").read_bytes()
    (out / "metadata.csv").write_bytes(text[: len(text) // 2])
    (out / ".net-000005_step-00000.safetensors.tmp-0123").write_bytes(b"partial")

    second = run("digits-cnn", out, 10, seed=3, workers=2)  # the batched path: one block [0, 10)
    assert second.trained == (3, 7)
    rewritten = sorted(k for k, p in parts.items() if p.stat().st_mtime_ns != written.get(k))
    assert rewritten == [3, 7]  # counted from the files, not from the driver's report
    assert files(out) == complete
    assert not [f for f in os.listdir(out) if ".tmp-" in f]

    third = run("digits-cnn", out, 12, seed=3, workers=1)
    assert third.trained == (10, 11)
    rows = read_metadata(out)
    assert sorted({int(r["network_id"]) for r in rows}) == list(range(12))
    assert [r for r in rows if int(r["network_id"]) < 10] == read_metadata_from(complete)


@pytest.mark.parametrize("path", [["--block-size", "1", "--networks-per-task", "1"], ["--block-size", "3"]])
def test_a_killed_run_resumes_where_it_stopped(ray_local, tmp_path, path):
    out = tmp_path / "zoo"
    argv = [sys.executable, "-m", "cluster.cli", "generate", "digits-cnn", "--out", str(out), "--n", "12",
            "--seed", "4", "--workers", "0", "--no-progress", *path]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "_parts").is_dir() and len(os.listdir(out / "_parts")) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running: kill it mid-zoo
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metadata.csv").exists()
    finished = {int(name[4:10]) for name in os.listdir(out / "_parts")}
    resumed = run("digits-cnn", out, 12, seed=4, workers=2)  # the folder's block size by default
    assert set(resumed.trained) == set(range(12)) - finished and len(finished) >= 3
    clean = run("digits-cnn", tmp_path / "clean", 12, seed=4, workers=2, block_size=int(path[1]))
    assert files(out) == files(tmp_path / "clean") and clean.checkpoints == resumed.checkpoints


def read_metadata_from(snapshot: dict[str, bytes]) -> list[dict]:
    return list(csv.DictReader(snapshot["metadata.csv"].decode().splitlines()))


def test_accuracy_spreads_from_chance_to_above_90_percent(cnn_zoo):
    out, result = cnn_zoo
    rows = read_metadata(out)
    final = {}
    for row in rows:
        k = int(row["network_id"])
        if k not in final or int(row["step"]) > int(final[k]["step"]):
            final[k] = row
    accuracy = np.array([float(r["test_accuracy"]) for r in final.values()])
    assert len(accuracy) == 50
    assert accuracy.min() < 0.2  # chance is 0.1
    assert accuracy.max() > 0.9
    q25, q75 = np.quantile(accuracy, [0.25, 0.75])
    assert q75 - q25 > 0.3  # spread across the range, not two clusters at the ends
    assert result.spread["min"] == accuracy.min() and result.spread["max"] == accuracy.max()
    assert {r["activation"] for r in final.values()} == {"relu", "tanh"}


def test_metadata_describes_every_checkpoint(cnn_zoo):
    out, result = cnn_zoo
    rows = read_metadata(out)
    assert len(rows) == result.checkpoints
    assert set(files(out)) - {"metadata.csv"} == {r["file"] for r in rows}
    for row in rows[:12]:
        sd = load_file(os.path.join(out, row["file"]))
        spec = NetworkSpec.from_state_dict(sd, activation=row["activation"])
        assert spec.num_params == 4970
        assert all(torch.isfinite(t).all() for t in sd.values())
    splits = {}
    for row in rows:
        splits.setdefault(row["network_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {s.pop() for s in splits.values()} == {"train", "val", "test"}


def test_a_generated_zoo_goes_through_ingest(cnn_zoo, tmp_path):
    zoo_ingest = pytest.importorskip("zoo_ingest")
    if not all(hasattr(zoo_ingest, name) for name in ("ingest", "open_table")):
        pytest.skip("zoo_ingest.ingest / zoo_ingest.open_table do not exist yet")
    out, result = cnn_zoo
    table_uri = str(tmp_path / "table")
    zoo_ingest.ingest(str(out), table_uri, "checkpoints", progress=False)
    table = zoo_ingest.open_table(table_uri)
    assert table.num_rows() == result.checkpoints
    assert table.rejects().num_rows == 0
    assert {"test_accuracy", "train_accuracy", "test_loss", "train_loss"} <= set(table.metrics)
    rows = read_metadata(out)
    specs = {
        NetworkSpec.from_state_dict(load_file(os.path.join(out, r["file"])), activation=r["activation"]).arch_id
        for r in rows
    }
    assert set(table.archs) == specs  # one architecture per activation
    # Every row's weights are exactly one checkpoint file's, with that file's step and accuracy.
    expected = {}
    for r in rows:
        sd = load_file(os.path.join(out, r["file"]))
        key = b"".join(sd[k].numpy().tobytes() for k in sorted(sd))
        expected[key] = (int(r["step"]), np.float32(float(r["test_accuracy"])))
    seen = 0
    for ws, targets in table.batches(128):
        for i, sd in enumerate(ws.to_state_dicts()):
            key = b"".join(sd[k].float().numpy().tobytes() for k in sorted(sd))
            assert expected[key] == (int(targets["step"][i]), np.float32(targets["test_accuracy"][i]))
            seen += 1
    assert seen == result.checkpoints
