"""Ingest progress moves per batch of rows read and written, and log records stay out of the bar."""

from __future__ import annotations

import logging
import time

import pytest

from zoo_ingest import ingest
from zoo_ingest.runner import ChunkProgress


def test_progress_counts_every_batch_in_process(tmp_path, zoo_writers):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=60, inf_rows=(13,))
    seen = []
    ingest(
        str(tmp_path / "zoo"),
        str(tmp_path / "t"),
        "smallcnnzoo",
        use_ray=False,
        chunk_rows=30,
        source_options={"block_rows": 10},
        progress=lambda done, total: seen.append((done, total)),
    )
    # 2 chunks of 3 blocks of 10 rows (each block yields its relu rows and its tanh rows as two
    # batches): the count moves by at most a block at a time, rejects included, and ends at the total
    done = [n for n, _ in seen]
    assert {t for _, t in seen} == {60} and done[-1] == 60 and len(done) >= 6
    assert all(0 < b - a <= 10 for a, b in zip([0, *done], done))
    assert {10, 20, 30, 40, 50} <= set(done)  # every block boundary is shown


@pytest.mark.ray
def test_progress_moves_before_a_ray_chunk_finishes(tmp_path, zoo_writers, ray_local):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=60, channels=16)
    seen = []

    def slow_publish(chunk, n_files):  # in the task: each published shard takes a while
        time.sleep(0.4)

    ingest(
        str(tmp_path / "zoo"),
        str(tmp_path / "t"),
        "smallcnnzoo",
        chunk_rows=60,
        shard_mb=0.02,
        row_group_mb=0.01,
        compact_mb=0,
        source_options={"block_rows": 10},
        task_hook=slow_publish,
        progress=lambda done, total: seen.append(done),
    )
    assert seen[-1] == 60 and seen == sorted(seen)
    assert any(0 < n < 60 for n in seen), seen  # one chunk, yet the count moved while it ran


def test_log_records_print_above_the_bar(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bar = ChunkProgress(100, True)
    with bar.logging_above():
        bar.set(0, 40)
        logging.getLogger("ray").warning("Token authentication is disabled for this Ray cluster.")
        bar.set(0, 100, final=True)
    bar.close()
    err = capsys.readouterr().err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    assert "Token authentication is disabled for this Ray cluster." in [line.strip() for line in lines]
    assert all("Token" not in line or "ingest" not in line for line in lines)  # never inside a bar line
    assert "100/100" in err
