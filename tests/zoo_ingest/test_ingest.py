"""Ingest end to end on a local Ray: the three formats, bad input, idempotence and crash safety."""

from __future__ import annotations

import json
import os
import shutil
import sys

import cloudpickle
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from zoo_ingest import IngestError, SourceError, TableError, ingest, open_table
from zoo_ingest.schema import model_ids

pytestmark = pytest.mark.ray
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # task hooks defined here run in Ray workers


def test_smallcnnzoo_table_holds_the_same_networks(tmp_path, zoo_writers, ray_local):
    info = zoo_writers.smallcnnzoo(tmp_path / "zoo", n=30, inf_rows=(4,), missing_metric_rows=(7,))
    summary = ingest(str(tmp_path / "zoo"), str(tmp_path / "table"), "smallcnnzoo", progress=False)
    assert (summary.inputs, summary.rows, summary.rejects) == (30, 29, {"non_finite": 1})
    assert "inputs 30 = rows 29 + rejects 1" in summary.format()
    table = open_table(str(tmp_path / "table"))
    card = table.card
    assert card["schema_version"] == 1 and card["format"] == "smallcnnzoo" and card["zoo"] == "zoo"
    assert card["rows"] == 29 and sum(card["splits"].values()) == 29
    assert card["columns"]["metrics"] == ["test_accuracy", "train_accuracy", "test_loss", "train_loss"]
    assert {a["activation"]: a["group"] for a in card["architectures"]} == {"relu": "perm_scale", "tanh": "perm_sign"}
    for arch in card["architectures"]:
        assert arch["arch_id"] == table.archs[arch["arch_id"]].arch_id  # NetworkSpec.arch_id
        assert [p["key"] for p in arch["params"]] == list(table.archs[arch["arch_id"]].keys)
        assert {p["key"]: p["shape"] for p in arch["params"]}["conv1.weight"] == [4, 1, 3, 2]
    x = torch.randn(5, 1, 9, 7)
    seen = set()
    for ws, targets in table.batches(batch_size=4):
        assert ws.weights[0].shape[1:] == (1, 4, 1, 3, 2)
        for sd, model_id, step, acc in zip(
            ws.to_state_dicts(), targets["model_id"], targets["step"], targets["test_accuracy"]
        ):
            i = next(i for i, s in enumerate(info["state_dicts"]) if torch.equal(s["fc.bias"], sd["fc.bias"]))
            seen.add(i)
            ref, got = zoo_writers.TinyCNN(info["activations"][i]), zoo_writers.TinyCNN(info["activations"][i])
            ref.load_state_dict(info["state_dicts"][i])
            got.load_state_dict(sd)
            torch.testing.assert_close(got(x), ref(x), rtol=0, atol=0)  # same function, bit for bit
            assert int(step) == info["steps"][i]
            if info["accuracy"][i] is None:
                assert np.isnan(float(acc))
            else:
                assert float(acc) == pytest.approx(info["accuracy"][i], rel=1e-6)  # float32 target
            spec = ws.spec
            flat = {k: info["state_dicts"][i][k].numpy().reshape(1, -1) for k in spec.keys}
            assert model_id == model_ids(spec.arch_id, flat, spec.keys)[0]
    assert seen == set(range(30)) - {4}
    assert table.rejects().to_pylist() == [
        {"source": "weights.npy[4]", "reason": "non_finite", "detail": "weights.npy[4]: conv1.weight holds NaN or Inf"}
    ]


def test_nfn_siren_with_published_index_split(tmp_path, zoo_writers, ray_local):
    written = zoo_writers.nfn_siren(tmp_path / "siren", per_label=4)  # indices 0..11
    (tmp_path / "split.json").write_text(
        json.dumps({"index_ranges": {"train": [0, 8], "val": [8, 10], "test": [10, None]}})
    )
    ingest(
        str(tmp_path / "siren"),
        str(tmp_path / "table"),
        "nfn-siren",
        split_file=str(tmp_path / "split.json"),
        progress=False,
    )
    table = open_table(str(tmp_path / "table"))
    (arch,) = table.archs
    assert table.archs[arch].activation == "sine" and table.row_counts[arch] == {"train": 8, "val": 2, "test": 2}
    for split, indices in (("train", range(8)), ("val", range(8, 10)), ("test", range(10, 12))):
        labels = []
        for ws, targets in table.batches(batch_size=100, split=split):
            labels += targets["label"].tolist()
            assert ws.weights[2].shape[1:] == (1, 1, 8)
        assert sorted(labels) == sorted(written[i][0] for i in indices)


def _bad_checkpoints(tmp_path, zoo_writers):
    root = tmp_path / "ck"
    zoo_writers.checkpoints(root, n=6)
    torch.save(zoo_writers.mlp_state_dict(seed=50), root / "whole.pt")
    data = (root / "whole.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "garbage.safetensors").write_bytes(b"not a safetensors file")
    zoo_writers.pickled_with_code(root / "needs_code.pt", zoo_writers.mlp_state_dict(seed=51))
    nan = zoo_writers.mlp_state_dict(seed=52)
    nan["fc2.bias"][1] = float("nan")
    torch.save(nan, root / "nan.pt")
    torch.save(zoo_writers.mlp_state_dict(hidden=16, seed=53), root / "wider.pt")
    return root


def test_bad_checkpoints_are_rejected_with_reasons(tmp_path, zoo_writers, ray_local):
    root = _bad_checkpoints(tmp_path, zoo_writers)
    with open(root / "metadata.csv", "a") as f:
        f.write("whole.pt,7,,0.2,relu,0.01\n")  # test_accuracy missing: a null, not a reject
    bare = ingest(str(root), str(tmp_path / "bare"), "checkpoints", split_by="model_id", progress=False)
    assert bare.rejects["no_activation"] == 2  # nan.pt and wider.pt have no metadata row
    summary = ingest(
        str(root), str(tmp_path / "table"), "checkpoints", activation="relu", split_by="model_id", progress=False
    )
    assert summary.inputs == 12 and summary.rows == 7
    assert summary.rejects == {"corrupt": 2, "needs_pickle": 1, "non_finite": 1, "shape_mismatch": 1}
    table = open_table(str(tmp_path / "table"))
    reasons = {r["source"]: (r["reason"], r["detail"]) for r in table.rejects().to_pylist()}
    assert reasons["truncated.pt"][0] == "corrupt" and reasons["garbage.safetensors"][0] == "corrupt"
    assert reasons["needs_code.pt"][0] == "needs_pickle" and "--allow-pickle" in reasons["needs_code.pt"][1]
    assert reasons["nan.pt"] == ("non_finite", "nan.pt: fc2.bias holds NaN or Inf")
    assert reasons["wider.pt"][0] == "shape_mismatch" and "fc1.weight (16, 5) vs (8, 5)" in reasons["wider.pt"][1]
    assert len(table.archs) == 1
    rows = {}
    for _, targets in table.batches(batch_size=100):
        rows.update(zip(targets["model_id"], targets["test_accuracy"].tolist()))
    assert sum(np.isnan(v) for v in rows.values()) == 1 and len(rows) == 7
    trusted = ingest(
        str(root),
        str(tmp_path / "trusted"),
        "checkpoints",
        activation="relu",
        allow_pickle=True,
        split_by="model_id",
        progress=False,
    )
    assert trusted.rows == 8 and "needs_pickle" not in trusted.rejects
    kept = ingest(
        str(root),
        str(tmp_path / "all_shapes"),
        "checkpoints",
        activation="relu",
        shapes="all",
        split_by="model_id",
        progress=False,
    )
    assert kept.rows == 8 and len(open_table(str(tmp_path / "all_shapes")).archs) == 2


def test_rerun_is_idempotent_and_same_input_gives_same_rows(tmp_path, zoo_writers, table_rows, ray_local):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=20)
    first = ingest(str(tmp_path / "zoo"), str(tmp_path / "a"), "smallcnnzoo", progress=False)
    card = (tmp_path / "a/_zoo.json").read_bytes()
    again = ingest(str(tmp_path / "zoo"), str(tmp_path / "a"), "smallcnnzoo", progress=False)
    assert again.already_complete and (tmp_path / "a/_zoo.json").read_bytes() == card
    ingest(str(tmp_path / "zoo"), str(tmp_path / "b"), "smallcnnzoo", use_ray=False, chunk_rows=7, progress=False)
    rows_a, rows_b = table_rows(str(tmp_path / "a")), table_rows(str(tmp_path / "b"))
    assert len(rows_a) == first.rows == 20 and rows_a == rows_b
    assert len({r["model_id"] for r in rows_a}) == 20


class FailAfter:
    """Task hook: fail chunk `chunk` once it has published `files` shards (raise, or kill the worker)."""

    def __init__(self, chunk: int, files: int, flag: str | None = None, kill: bool = False):
        self.chunk, self.files, self.flag, self.kill = chunk, files, flag, kill

    def __call__(self, chunk: int, published: int) -> None:
        if chunk != self.chunk or published < self.files:
            return
        if self.flag is not None:
            if os.path.exists(self.flag):
                return  # only the first attempt dies
            open(self.flag, "w").close()
        if self.kill:
            os._exit(1)
        raise RuntimeError("simulated crash")


def test_crash_leaves_no_partial_files_and_rerun_finishes(tmp_path, zoo_writers, table_rows, ray_local):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=40)
    ingest(str(tmp_path / "zoo"), str(tmp_path / "ref"), "smallcnnzoo", chunk_rows=5, progress=False)
    out = tmp_path / "table"
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(
            str(tmp_path / "zoo"),
            str(out),
            "smallcnnzoo",
            chunk_rows=5,
            use_ray=False,
            progress=False,
            task_hook=FailAfter(chunk=3, files=1),
        )
    assert not (out / "_zoo.json").exists() and (out / "_manifest/_chunk-00002.json").exists()
    assert list(out.glob("arch=*/split=*/part-00003-*.parquet"))  # published before the crash
    (out / "arch=x/split=train").mkdir(parents=True)
    (out / "arch=x/split=train/.part-00009-000.parquet.abc.tmp").write_bytes(b"PAR1 half")  # killed writer
    for path in out.glob("arch=*/split=*/*.parquet"):
        pq.ParquetFile(path)  # every visible shard is complete
    with pytest.raises(TableError, match="no zoo card"):
        open_table(str(out))
    summary = ingest(str(tmp_path / "zoo"), str(out), "smallcnnzoo", chunk_rows=5, progress=False)
    assert summary.resumed_chunks == 3 and summary.rows == 40
    assert table_rows(str(out)) == table_rows(str(tmp_path / "ref"))
    assert not list(out.glob("arch=*/split=*/.*"))  # the leftover temporary file is gone


def test_killed_worker_is_retried_without_duplicates(tmp_path, zoo_writers, table_rows, ray_local):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=24)
    hook = FailAfter(chunk=1, files=1, flag=str(tmp_path / "killed-once"), kill=True)
    summary = ingest(
        str(tmp_path / "zoo"), str(tmp_path / "table"), "smallcnnzoo", chunk_rows=6, progress=False, task_hook=hook
    )
    assert (tmp_path / "killed-once").exists()  # the worker really died mid-chunk
    rows = table_rows(str(tmp_path / "table"))
    assert summary.rows == len(rows) == 24 and len({r["source"] for r in rows}) == 24


def test_complete_table_survives_failed_reruns(tmp_path, zoo_writers, table_rows, ray_local):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=12)
    ingest(str(tmp_path / "zoo"), str(tmp_path / "table"), "smallcnnzoo", progress=False)
    before, card = table_rows(str(tmp_path / "table")), (tmp_path / "table/_zoo.json").read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "zoo", broken)
    (broken / "layout.csv").unlink()
    with pytest.raises(SourceError, match="layout.csv: file not found"):
        ingest(str(broken), str(tmp_path / "table"), "smallcnnzoo", overwrite=True, progress=False)
    with pytest.raises(IngestError, match="already holds a complete weight table"):
        ingest(str(tmp_path / "zoo"), str(tmp_path / "table"), "smallcnnzoo", split="50/25/25", progress=False)
    assert (tmp_path / "table/_zoo.json").read_bytes() == card and table_rows(str(tmp_path / "table")) == before
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/notes.txt").write_text("mine")
    with pytest.raises(IngestError, match="not part of a weight table"):
        ingest(str(tmp_path / "zoo"), str(tmp_path / "elsewhere"), "smallcnnzoo", progress=False)
    assert (tmp_path / "elsewhere/notes.txt").read_text() == "mine"


def test_split_none_and_csv_split_file(tmp_path, zoo_writers, ray_local):
    zoo_writers.checkpoints(tmp_path / "ck", n=4)
    ingest(str(tmp_path / "ck"), str(tmp_path / "none"), "checkpoints", split="none", progress=False)
    table = open_table(str(tmp_path / "none"))
    assert table.splits == ["all"] and table.num_rows("all") == 4
    (tmp_path / "split.csv").write_text("source,split\nrun0/epoch_0.safetensors,test\nrun0/epoch_1.pt,train\n")
    summary = ingest(
        str(tmp_path / "ck"),
        str(tmp_path / "filed"),
        "checkpoints",
        split_file=str(tmp_path / "split.csv"),
        progress=False,
    )
    assert summary.rejects == {"not_in_split_file": 2} and summary.rows == 2
    assert open_table(str(tmp_path / "filed")).card["splits"] == {"train": 1, "val": 0, "test": 1}


def test_generated_zoo_layout_with_its_published_split(tmp_path, zoo_writers, ray_local):
    """The `metazoo generate` layout (docs/zoos.md): flat safetensors, metadata.csv with `file`, `split`,
    `hparam.*` columns; the metadata itself is the split file, so a network's checkpoints stay together."""
    from safetensors.torch import save_file

    root = tmp_path / "gen"
    root.mkdir()
    lines = ["file,network_id,step,split,label,activation,train_accuracy,test_accuracy,hparam.learning_rate"]
    for k in range(5):
        for step in range(3):
            name = f"net-{k:06d}_step-{step:05d}.safetensors"
            save_file(dict(zoo_writers.mlp_state_dict(seed=10 * k + step)), root / name)
            split = ("train", "train", "train", "val", "test")[k]
            lines.append(f"{name},{k},{step},{split},,relu,0.{k}{step},0.{k},0.001")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    ingest(str(root), str(tmp_path / "table"), "checkpoints", split_file=str(root / "metadata.csv"), progress=False)
    table = open_table(str(tmp_path / "table"))
    assert table.card["splits"] == {"train": 9, "val": 3, "test": 3}
    assert table.hparam_keys == ["network_id", "split", "learning_rate"]
    assert table.metrics == ["train_accuracy", "test_accuracy"]
    for ws, targets in table.batches(20, split="val"):
        assert targets["step"].tolist() == [0, 1, 2] and ws.batch_size == 3
    by_run = ingest(str(root), str(tmp_path / "by_run"), "checkpoints", split_by="network_id", progress=False)
    splits_of = {}
    for split in open_table(str(tmp_path / "by_run")).splits:
        for path in open_table(str(tmp_path / "by_run")).files(split):
            for h in pq.read_table(path, columns=["hparams"])["hparams"].to_pylist():
                splits_of.setdefault(json.loads(h)["network_id"], set()).add(split)
    assert by_run.rows == 15 and all(len(s) == 1 for s in splits_of.values())


def test_shards_roll_over_at_the_configured_size(tmp_path, zoo_writers, table_rows):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=200, channels=16)  # 1,699 params: 6.8 kB a row
    ingest(
        str(tmp_path / "zoo"),
        str(tmp_path / "t"),
        "smallcnnzoo",
        use_ray=False,
        progress=False,
        split="none",
        chunk_rows=200,
        shard_mb=0.2,
        row_group_mb=0.05,
        compression="none",
    )
    table = open_table(str(tmp_path / "t"))
    sizes = [f["bytes"] for a in table.card["architectures"] for f in a["files"]]
    assert len(sizes) >= 6 and max(sizes) < 0.2 * 2**20 + 0.06 * 2**20  # at most one row group over
    names = sorted(p.name for p in (tmp_path / "t").glob("arch=*/split=all/*.parquet"))
    assert "part-00000-001.parquet" in names and len(table_rows(str(tmp_path / "t"))) == 200


def test_copies_of_a_network_share_model_id_and_split(tmp_path, zoo_writers):
    root = tmp_path / "ck"
    zoo_writers.checkpoints(root, n=6, with_metadata=False)
    for copy in range(3):
        shutil.copy(root / "run0/epoch_1.pt", root / f"copy{copy}.pt")  # the same network, three more times
    summary = ingest(
        str(root),
        str(tmp_path / "t"),
        "checkpoints",
        activation="relu",
        split_by="model_id",
        use_ray=False,
        progress=False,
    )
    table = open_table(str(tmp_path / "t"))
    assert summary.duplicates == 3 and table.card["duplicates"] == {"rows": 3, "model_ids": 1}
    placed = {}
    for split in table.splits:
        for _, targets in table.batches(50, split=split):
            for model_id in targets["model_id"]:
                placed.setdefault(model_id, []).append(split)
    copies = [splits for splits in placed.values() if len(splits) > 1]
    assert len(copies) == 1 and len(copies[0]) == 4 and len(set(copies[0])) == 1
