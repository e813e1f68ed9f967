"""Default splits keep every network's checkpoints in one split (no train/test leakage)."""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
import torch

from zoo_ingest import SourceError, ingest, open_table


def _splits_by(table, key_of):
    """{network key: set of splits holding its checkpoints}, reading every shard."""
    afs, _ = table.location.arrow()
    found = defaultdict(set)
    for split in table.splits:
        for path in table.files(split):
            for row in pq.read_table(path, columns=["source", "hparams"], filesystem=afs).to_pylist():
                found[key_of(row)].add(split)
    return found


def test_small_cnn_zoo_keeps_each_run_in_one_split(tmp_path, zoo_writers):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=120)  # 40 networks of 3 checkpoints, published columns
    summary = ingest(str(tmp_path / "zoo"), str(tmp_path / "t"), "smallcnnzoo", use_ray=False, progress=False)
    table = open_table(str(tmp_path / "t"))
    assert summary.rows == 120
    by_run = _splits_by(table, lambda r: json.loads(r["hparams"])["modeldir"])
    assert len(by_run) == 40 and all(len(s) == 1 for s in by_run.values())
    assert {s for splits in by_run.values() for s in splits} == {"train", "val", "test"}
    split = table.card["settings"]["split"]
    assert split["by"] == "modeldir" and "per network" in split["rule"] and "modeldir" in split["rule"]
    # the same zoo split per checkpoint (asked for explicitly) separates runs: what the default prevents
    ingest(
        str(tmp_path / "zoo"), str(tmp_path / "per"), "smallcnnzoo", split_by="model_id", use_ray=False, progress=False
    )
    per = _splits_by(open_table(str(tmp_path / "per")), lambda r: json.loads(r["hparams"])["modeldir"])
    assert sum(len(s) > 1 for s in per.values()) > 0
    assert "per checkpoint" in open_table(str(tmp_path / "per")).card["settings"]["split"]["rule"]


def test_small_cnn_zoo_without_modeldir_asks_for_split_by(tmp_path, zoo_writers):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=12, modeldir=False)
    with pytest.raises(SourceError, match=r"metrics.csv.gz has no 'modeldir' column.*--split-by HPARAM"):
        ingest(str(tmp_path / "zoo"), str(tmp_path / "t"), "smallcnnzoo", use_ray=False, progress=False)
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())
    ok = ingest(str(tmp_path / "zoo"), str(tmp_path / "t"), "smallcnnzoo", split="none", use_ray=False, progress=False)
    assert ok.rows == 12


def test_nfn_siren_copies_of_one_image_share_a_split(tmp_path, zoo_writers):
    root = tmp_path / "siren"
    written = zoo_writers.nfn_siren(root, per_label=10)  # randinit_smaller_<label>s/net<idx>.pth, 30 images
    for idx, (label, _) in written.items():  # NFN's augmented copies: other SIRENs fitted to the same image
        for aug in range(2):
            folder = root / f"randinit_smaller_aug{aug}_{label}s"
            folder.mkdir(exist_ok=True)
            torch.save(zoo_writers.siren_state_dict(seed=5000 + 100 * aug + idx), folder / f"net{idx}.pth")
    ingest(str(root), str(tmp_path / "t"), "nfn-siren", split="60/20/20", use_ray=False, progress=False)
    table = open_table(str(tmp_path / "t"))
    assert table.num_rows() == 90
    by_image = _splits_by(table, lambda r: int(r["source"].rsplit("net", 1)[1].removesuffix(".pth")))
    assert len(by_image) == 30 and all(len(s) == 1 for s in by_image.values())
    assert {s for splits in by_image.values() for s in splits} == {"train", "val", "test"}
    assert table.card["settings"]["split"]["by"] == "index" and "image" in table.card["settings"]["split"]["rule"]


def test_nfn_siren_file_without_an_index_is_named(tmp_path, zoo_writers):
    root = tmp_path / "siren"
    zoo_writers.nfn_siren(root, per_label=1)
    torch.save(zoo_writers.siren_state_dict(seed=9), root / "randinit_smaller_0s" / "extra.pth")
    with pytest.raises(SourceError, match=r"randinit_smaller_0s/extra.pth has no index"):
        ingest(str(root), str(tmp_path / "t"), "nfn-siren", use_ray=False, progress=False)


def test_checkpoints_without_a_network_column_ask_for_split_by(tmp_path, zoo_writers):
    zoo_writers.checkpoints(tmp_path / "ck", n=4)
    with pytest.raises(SourceError, match="no 'network_id' column.*--split-by"):
        ingest(str(tmp_path / "ck"), str(tmp_path / "t"), "checkpoints", use_ray=False, progress=False)
    # a run directory is in the file names only; an hparams column names it once the user adds one
    ok = ingest(
        str(tmp_path / "ck"),
        str(tmp_path / "t"),
        "checkpoints",
        split_by="learning_rate",
        use_ray=False,
        progress=False,
    )
    assert ok.rows == 4 and open_table(str(tmp_path / "t")).card["settings"]["split"]["by"] == "learning_rate"
