"""Compaction of the small per-chunk shards: same rows, ids and accounting; crash-safe on rerun."""

from __future__ import annotations

from collections import defaultdict

import pytest

from zoo_ingest import TableError, ingest, open_table
from zoo_ingest.compact import plan_bins

TARGET_MB = 0.1


def _ingest(zoo, out, **kw):
    # 200 checkpoints of 6.8 kB in 8 chunks: per chunk about 20 train rows (a full shard and a tail)
    # and 2-3 val and test rows, each a tiny shard of its own before compaction
    return ingest(
        str(zoo),
        str(out),
        "smallcnnzoo",
        use_ray=False,
        progress=False,
        chunk_rows=25,
        shard_mb=TARGET_MB,
        row_group_mb=0.02,
        compression="none",
        **kw,
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from tests.zoo_ingest.conftest import write_smallcnnzoo

    root = tmp_path_factory.mktemp("compact") / "zoo"
    write_smallcnnzoo(root, n=200, channels=16)
    return root


def _on_disk(table_dir):
    return sorted(str(p.relative_to(table_dir)) for p in table_dir.glob("arch=*/split=*/*"))


def test_small_shards_are_merged_with_the_same_rows_and_accounting(zoo, tmp_path, table_rows):
    _ingest(zoo, tmp_path / "raw", compact_mb=0)
    summary = _ingest(zoo, tmp_path / "compact")
    raw, packed = open_table(str(tmp_path / "raw")), open_table(str(tmp_path / "compact"))
    assert table_rows(str(tmp_path / "compact")) == table_rows(str(tmp_path / "raw"))  # same ids, values, splits
    assert packed.row_counts == raw.row_counts and packed.card["splits"] == raw.card["splits"]
    assert summary.inputs == 200 == summary.rows + summary.rejected
    target = TARGET_MB * 2**20
    for card, limit in ((raw.card, None), (packed.card, 1)):
        small = defaultdict(int)
        for arch in card["architectures"]:
            for f in arch["files"]:
                small[(arch["arch_id"], f["split"])] += f["bytes"] < target / 2
        if limit is None:
            assert max(small.values()) >= 4  # the problem: many tiny shards per partition
        else:
            assert max(small.values()) <= limit  # at most the last, partly filled one
    # merged shards come out near the target (their inputs add up to it, less the footers saved)
    merged = [f["bytes"] for a in packed.card["architectures"] for f in a["files"] if "-c" in f["path"]]
    assert merged and max(merged) < 2 * target
    n_raw = sum(len(a["files"]) for a in raw.card["architectures"])
    n_packed = sum(len(a["files"]) for a in packed.card["architectures"])
    assert n_packed <= n_raw - 10
    listed = sorted(f["path"] for a in packed.card["architectures"] for f in a["files"])
    assert _on_disk(tmp_path / "compact") == listed  # the merged inputs are gone, nothing else left
    assert packed.card["settings"]["write"]["compact_mb"] is None


@pytest.mark.parametrize("phase", ["merging", "written", "deleted"])
def test_interrupted_compaction_loses_and_doubles_nothing_on_rerun(zoo, tmp_path, table_rows, phase):
    _ingest(zoo, tmp_path / "ref")
    reference = table_rows(str(tmp_path / "ref"))

    def crash(at, bin_index):
        if at == phase and bin_index == 1:
            raise RuntimeError(f"injected fault: {at} bin {bin_index}")

    with pytest.raises(RuntimeError, match="injected fault"):
        _ingest(zoo, tmp_path / "t", compact_hook=crash)
    with pytest.raises(TableError, match="no zoo card"):
        open_table(str(tmp_path / "t"))  # no card: incomplete
    again = _ingest(zoo, tmp_path / "t")
    assert again.rows == 200 and again.resumed_chunks == 8
    assert table_rows(str(tmp_path / "t")) == reference
    assert _on_disk(tmp_path / "t") == _on_disk(tmp_path / "ref")  # same names, no stray or temporary file


def test_plan_bins_leaves_full_and_lonely_shards_alone():
    def f(path, size, split="val"):
        return {"path": f"arch=a/split={split}/{path}", "arch_id": "a", "split": split, "rows": 1, "bytes": size}

    files = [
        f("part-00000-000.parquet", 100),
        f("part-00001-000.parquet", 30),
        f("part-00002-000.parquet", 40),
        f("part-00003-000.parquet", 50),
        f("part-00004-000.parquet", 20),
        f("part-00000-000.parquet", 10, "test"),
    ]
    bins = plan_bins(files, target=100)
    assert [b["inputs"] for b in bins] == [
        [
            "arch=a/split=val/part-00001-000.parquet",
            "arch=a/split=val/part-00002-000.parquet",
            "arch=a/split=val/part-00003-000.parquet",
        ]
    ]  # 30+40+50 reach the target; 20 alone and the single test shard stay as they are
    assert bins[0]["out"] == "arch=a/split=val/part-00001-c000.parquet" and bins[0]["rows"] == 3
    with pytest.raises(ValueError, match="compact_mb"):
        ingest("x", "y", "smallcnnzoo", compact_mb=-1)
