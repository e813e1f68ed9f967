"""Compaction of the small per-chunk shards: same rows, ids and accounting; crash-safe on rerun."""

from __future__ import annotations

from collections import defaultdict

import pytest

from zoo_ingest import TableError, ingest, open_table
from zoo_ingest.compact import plan_bins

TARGET_MB = 0.4


def _ingest(zoo, out, **kw):
    # 200 checkpoints of 6.8 kB in 8 chunks: per chunk and architecture about 10 train rows (70 kB,
    # not small) and 1-2 val and test rows, each a tiny shard of its own before compaction
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
                small[(arch["arch_id"], f["split"])] += f["bytes"] < target / 8
        if limit is None:
            assert max(small.values()) >= 4  # the problem: many tiny shards per partition
        else:
            assert max(small.values()) <= limit  # at most the last, partly filled one
    # merged shards come out near the target (their inputs add up to it, less the footers saved)
    merged = [f["bytes"] for a in packed.card["architectures"] for f in a["files"] if "-c" in f["path"]]
    assert merged and max(merged) < 2 * target
    n_raw = sum(len(a["files"]) for a in raw.card["architectures"])
    n_packed = sum(len(a["files"]) for a in packed.card["architectures"])
    assert n_packed <= n_raw - 8
    for arch in packed.card["architectures"]:  # here every val and test partition fits in one merged shard
        assert all(sum(f["split"] == split for f in arch["files"]) <= 1 for split in ("val", "test"))
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


def test_plan_bins_merges_only_small_shards_and_leaves_lonely_ones():
    def f(path, size, split="val"):
        return {"path": f"arch=a/split={split}/{path}", "arch_id": "a", "split": split, "rows": 1, "bytes": size}

    files = [
        f("part-00000-000.parquet", 100),  # not small: an eighth of the target or more
        f("part-00001-000.parquet", 30),
        f("part-00002-000.parquet", 40),
        f("part-00003-000.parquet", 20),
        f("part-00004-000.parquet", 45),
        f("part-00005-000.parquet", 10),
        f("part-00006-000.parquet", 10),
        f("part-00000-000.parquet", 10, "test"),
    ]
    bins = plan_bins(files, target=240)  # small: under 30
    assert [b["inputs"] for b in bins] == [
        [
            "arch=a/split=val/part-00003-000.parquet",
            "arch=a/split=val/part-00005-000.parquet",
            "arch=a/split=val/part-00006-000.parquet",
        ],
    ]  # 20+10+10 never reach the target: one partly filled bin; the single test shard stays as it is
    assert bins[0]["out"] == "arch=a/split=val/part-00003-c000.parquet" and bins[0]["rows"] == 3
    many = [f(f"part-{k:05d}-000.parquet", 20) for k in range(12)]
    assert [len(b["inputs"]) for b in plan_bins(many, target=200)] == [10, 2]  # closed on reaching the target
    with pytest.raises(ValueError, match="compact_mb"):
        ingest("x", "y", "smallcnnzoo", compact_mb=-1)


@pytest.mark.ray
def test_compaction_in_ray_tasks_gives_the_same_table(zoo, tmp_path, table_rows, ray_local):
    _ingest(zoo, tmp_path / "local")
    ingest(
        str(zoo),
        str(tmp_path / "ray"),
        "smallcnnzoo",
        progress=False,
        chunk_rows=25,
        shard_mb=TARGET_MB,
        row_group_mb=0.02,
        compression="none",
    )
    assert table_rows(str(tmp_path / "ray")) == table_rows(str(tmp_path / "local"))
    assert _on_disk(tmp_path / "ray") == _on_disk(tmp_path / "local")
