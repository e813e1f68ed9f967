"""Reading tables: filters, sharding across ranks, bounded memory, tensor types, other Arrow readers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from zoo_ingest import TENSOR_TYPES, TableError, ingest, open_table, to_weight_space


@pytest.fixture(scope="module")
def cnn_table(tmp_path_factory, zoo_writers):
    """A 60-checkpoint Small CNN Zoo table in small row groups (in-process ingest: no Ray needed)."""
    root = tmp_path_factory.mktemp("cnn")
    info = zoo_writers.smallcnnzoo(root / "zoo", n=60, missing_metric_rows=(5, 6))
    ingest(str(root / "zoo"), str(root / "table"), "smallcnnzoo", use_ray=False, progress=False, row_group_mb=0.002)
    return open_table(str(root / "table")), info


def collect(batches):
    out = {}
    for ws, targets in batches:
        for sd, model_id, step, acc in zip(
            ws.to_state_dicts(), targets["model_id"], targets["step"].tolist(), targets["test_accuracy"].tolist()
        ):
            assert model_id not in out
            out[model_id] = (sd, step, acc)
    return out


def test_filters_by_split_arch_step_and_metric(cnn_table):
    table, info = cnn_table
    everything = collect(table.batches(7))
    assert len(everything) == 60 == table.num_rows()
    train = collect(table.batches(7, split="train"))
    assert len(train) == table.num_rows("train") and set(train) < set(everything)
    relu = next(a for a, s in table.archs.items() if s.activation == "relu")
    only_relu = collect(table.batches(7, arch=relu))
    assert len(only_relu) == table.num_rows(arch=relu) == info["activations"].count("relu")
    step2 = collect(table.batches(7, steps=2))
    assert len(step2) == info["steps"].count(2) and {v[1] for v in step2.values()} == {2}
    steps01 = collect(table.batches(7, steps=[0, 1]))
    assert len(steps01) == 60 - len(step2)
    good = collect(table.batches(7, where={"test_accuracy": (0.5, None)}))
    expected = sum(1 for a in info["accuracy"] if a is not None and a >= 0.5)
    assert len(good) == expected and min(v[2] for v in good.values()) >= 0.5
    assert sum(np.isnan(v[2]) for v in everything.values()) == 2  # missing metrics stay, as NaN
    window = collect(table.batches(7, where={"test_accuracy": (0.2, 0.4)}))
    assert all(0.2 <= v[2] <= 0.4 + 1e-6 for v in window.values()) and window
    assert table.count_rows(where={"test_accuracy": (0.2, 0.4)}) == len(window)
    assert table.count_rows("train", steps=[0, 1]) == len(collect(table.batches(7, split="train", steps=[0, 1])))
    assert table.count_rows(arch=relu) == len(only_relu)


def test_batches_have_the_asked_size_and_one_architecture(cnn_table):
    table, _ = cnn_table
    sizes = {}
    for ws, targets in table.batches(8, drop_last=True):
        assert ws.batch_size == 8 == len(targets["model_id"]) == len(targets["step"])
        sizes[ws.spec.arch_id] = sizes.get(ws.spec.arch_id, 0) + 8
        assert ws.weights[0].dtype == torch.float32
    for arch, n in sizes.items():
        assert n == table.num_rows(arch=arch) // 8 * 8


def test_ranks_read_disjoint_row_groups_covering_the_table(cnn_table):
    table, _ = cnn_table
    parts = [set(collect(table.batches(5, rank=r, world_size=3))) for r in range(3)]
    assert all(parts) and sum(map(len, parts)) == 60 and len(set.union(*parts)) == 60
    order = [t["model_id"] for _, t in table.batches(60, shuffle=True, seed=1)]
    again = [t["model_id"] for _, t in table.batches(60, shuffle=True, seed=1)]
    plain = [t["model_id"] for _, t in table.batches(60)]
    assert order == again and order != plain and sorted(sum(order, [])) == sorted(sum(plain, []))


def test_unknown_names_are_errors(cnn_table):
    table, _ = cnn_table
    with pytest.raises(TableError, match="no split 'holdout'"):
        next(table.batches(4, split="holdout"))
    with pytest.raises(TableError, match="no architecture"):
        next(table.batches(4, arch="feedbeef"))
    with pytest.raises(TableError, match="no metric column 'val_acc'"):
        next(table.batches(4, targets=["val_acc"]))
    with pytest.raises(TableError, match="holds 2 architectures"):
        table.to_ray_dataset()


def test_memory_stays_bounded_while_streaming(tmp_path, zoo_writers):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=800, channels=32)  # 6,499 params: 20 MB of tensors
    ingest(
        str(tmp_path / "zoo"),
        str(tmp_path / "t"),
        "smallcnnzoo",
        use_ray=False,
        progress=False,
        row_group_mb=0.5,
        compression="none",
    )
    table = open_table(str(tmp_path / "t"))
    total = table.num_rows() * 4 * next(iter(table.archs.values())).num_params
    base, peak, seen = pa.total_allocated_bytes(), 0, 0
    for ws, _ in table.batches(16):
        seen += ws.batch_size
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert seen == 800 and total > 20e6
    assert peak < total / 5, f"peak Arrow memory {peak / 1e6:.1f} MB for a {total / 1e6:.1f} MB table"


@pytest.mark.parametrize("tensor_type", [t for t in TENSOR_TYPES if t != "fixed_shape_tensor"])
def test_every_tensor_type_reads_back_the_same(tensor_type, cnn_table, tmp_path):
    table, _ = cnn_table
    source = table.card["source"]
    ingest(source, str(tmp_path / "t"), "smallcnnzoo", tensor_type=tensor_type, use_ray=False, progress=False)
    other = open_table(str(tmp_path / "t"))
    assert other.tensor_type == tensor_type
    a, b = collect(table.batches(9)), collect(other.batches(9))
    assert a.keys() == b.keys()
    for model_id, (sd, *_rest) in a.items():
        for key, value in sd.items():
            assert torch.equal(value, b[model_id][0][key])


def test_other_arrow_readers_read_the_table(cnn_table):
    table, info = cnn_table
    arch = sorted(table.archs)[0]
    spec = table.archs[arch]
    afs, root = table.location.arrow()
    data = ds.dataset(f"{root}/arch={arch}", filesystem=afs, format="parquet", partitioning="hive").to_table()
    assert data.num_rows == table.num_rows(arch=arch)
    assert set(data["split"].to_pylist()) <= {"train", "val", "test"}
    weights = data["conv2.weight"].combine_chunks()
    assert weights.type.shape == list(spec.param_shapes()["conv2.weight"])  # canonical fixed-shape tensor
    assert weights.to_numpy_ndarray().shape == (data.num_rows, 4, 4, 3, 2)
    whole = ds.dataset(root, filesystem=afs, format="parquet", partitioning="hive", exclude_invalid_files=True)
    assert whole.count_rows() >= data.num_rows  # _zoo.json and _-prefixed folders are skipped
    frame = pq.read_table(table.files(arch=arch)[0], filesystem=afs).to_pandas()
    assert list(frame.columns[:4]) == ["model_id", "source", "step", "label"]


@pytest.mark.ray
def test_ray_dataset_reads_the_same_rows(cnn_table, ray_local):
    table, _ = cnn_table
    arch = sorted(table.archs)[0]
    spec = table.archs[arch]
    expected = collect(table.batches(64, split="train", arch=arch, steps=[1, 2]))
    dataset = table.to_ray_dataset(split="train", arch=arch, steps=[1, 2])
    assert dataset.count() == len(expected)
    got = 0
    for batch in dataset.iter_batches(batch_size=5, batch_format="numpy"):
        assert batch["conv2.weight"].shape[1:] == (4, 4, 3, 2) and set(batch["split"]) == {"train"}
        ws = to_weight_space(batch, spec)
        for sd, model_id in zip(ws.to_state_dicts(), batch["model_id"]):
            assert all(torch.equal(sd[k], expected[model_id][0][k]) for k in spec.keys)
            got += 1
    assert got == len(expected)


def test_arbitrary_filter_expression(cnn_table):
    import pyarrow.compute as pc

    table, info = cnn_table
    expr = pc.field("source") == "weights.npy[7]"
    (only,) = list(table.batches(4, filter=expr, targets=[]))
    assert only[0].batch_size == 1 and only[1]["step"].tolist() == [info["steps"][7]]
    assert table.count_rows(filter=expr) == 1


def test_object_columns_of_numpy_batches_read_as_plain_columns(cnn_table):
    """Ray Data hands tensor columns as object arrays of per-row arrays when it cannot prove the rows equal in
    shape: the weight space and the training batches read them as the plain columns they stand for."""
    from training.inputs import _dense
    from zoo_ingest.table import numpy_column

    table, _ = cnn_table
    arch = sorted(table.archs)[0]
    spec = table.archs[arch]
    plain = next(iter(table.batches(6, split="train", arch=arch)))[0]
    columns = {}
    for layer, w, b in zip(spec.layers, plain.weights, plain.biases):
        columns[layer.weight_key] = w[:, 0].numpy()
        if layer.bias_key is not None:
            columns[layer.bias_key] = b[:, 0].numpy()
    as_objects = {}
    for key, col in columns.items():
        obj = np.empty(len(col), dtype=object)
        for i, row in enumerate(col):
            obj[i] = row
        as_objects[key] = obj
    ws = to_weight_space(as_objects, spec)
    assert all(torch.equal(a, b) for a, b in zip(ws.weights, plain.weights))
    assert all(torch.equal(a, b) for a, b in zip(ws.biases, plain.biases))
    dense = _dense(as_objects)
    assert all(dense[k].dtype == np.float32 and np.array_equal(dense[k], columns[k]) for k in columns)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((3, 2), np.float32), np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"column 'fc.weight': its rows differ in shape: \[\(2, 2\), \(3, 2\)\]"):
        numpy_column(ragged, "fc.weight")
