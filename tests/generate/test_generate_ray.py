"""Generating zoos with Ray tasks: determinism, resumption, the accuracy spread, ingest."""

from __future__ import annotations

import csv
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
    a = run(zoo, tmp_path / "a", n, seed=5, workers=2, networks_per_task=1, **extra)
    b = run(zoo, tmp_path / "b", n, seed=5, workers=1, networks_per_task=n, **extra)
    c = run(zoo, tmp_path / "c", n, seed=5, workers=0, networks_per_task=3, **extra)  # in-process
    assert a.trained == b.trained == c.trained == tuple(range(n))
    fa = files(tmp_path / "a")
    assert len(fa) == a.checkpoints + 1
    assert fa == files(tmp_path / "b") == files(tmp_path / "c")
    other = run(zoo, tmp_path / "d", n, seed=6, workers=2, **extra)
    first = sorted(f for f in fa if f.endswith(".safetensors"))[0]
    assert other.checkpoints >= 1 and files(tmp_path / "d").get(first) != fa[first]


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

    second = run("digits-cnn", out, 10, seed=3, workers=2)
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


def test_a_killed_run_resumes_where_it_stopped(ray_local, tmp_path):
    out = tmp_path / "zoo"
    argv = [sys.executable, "-m", "cluster.cli", "generate", "digits-cnn", "--out", str(out), "--n", "12",
            "--seed", "4", "--workers", "0", "--networks-per-task", "1", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "_parts").is_dir() and len(os.listdir(out / "_parts")) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running: kill it mid-zoo
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metadata.csv").exists()
    finished = {int(name[4:10]) for name in os.listdir(out / "_parts")}
    resumed = run("digits-cnn", out, 12, seed=4, workers=2)
    assert set(resumed.trained) == set(range(12)) - finished and len(finished) >= 3
    clean = run("digits-cnn", tmp_path / "clean", 12, seed=4, workers=2)
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
