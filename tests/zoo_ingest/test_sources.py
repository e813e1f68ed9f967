"""Sources, without Ray: plans, TF -> torch conversion, path parsing, metadata joins, safe loading."""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pytest
import torch

from zoo_ingest.sources import Reject, SourceError, WeightBatch, make_source
from zoo_ingest.sources.loading import LoadError, load_state_dict
from zoo_ingest.sources.smallcnnzoo import NpyRows, parse_layout, spec_of
from zoo_ingest.storage import Location


def read_all(source, inputs):
    batches, rejects = [], []
    for item in source.read(inputs):
        (rejects if isinstance(item, Reject) else batches).append(item)
    return batches, rejects


def rows_of(batches: list[WeightBatch]) -> dict[int, tuple]:
    out = {}
    for b in batches:
        for j, r in enumerate(b.rows):
            out[int(r)] = (b.spec, {k: v[j] for k, v in b.tensors.items()})
    return out


def test_smallcnnzoo_converts_tf_order_to_torch(tmp_path, zoo_writers):
    info = zoo_writers.smallcnnzoo(tmp_path / "zoo", n=12, missing_metric_rows=(2,))
    source = make_source("smallcnnzoo", Location(str(tmp_path / "zoo")), block_rows=5)
    plan = source.plan()
    assert plan.inputs.num_rows == 12 and plan.metrics == ["test_accuracy", "train_accuracy", "test_loss", "train_loss"]
    assert plan.hparam_keys == ["learning_rate", "dataset", "random_seed", "modeldir"]
    assert plan.inputs["test_accuracy"][2].as_py() is None  # missing metric: null, not a reject
    assert plan.inputs["step"].to_pylist() == info["steps"]
    batches, rejects = read_all(source, plan.inputs)
    assert not rejects
    rows = rows_of(batches)
    for i, sd in enumerate(info["state_dicts"]):
        spec, tensors = rows[i]
        assert spec.activation == info["activations"][i]
        assert spec.keys == ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias")
        assert spec.param_shapes()["conv1.weight"] == (4, 1, 3, 2)
        for key, value in sd.items():
            np.testing.assert_array_equal(tensors[key], value.numpy().reshape(-1), err_msg=key)
    relu = {b.spec.arch_id for b in batches if b.spec.activation == "relu"}
    tanh = {b.spec.arch_id for b in batches if b.spec.activation == "tanh"}
    assert len(relu) == len(tanh) == 1 and relu != tanh  # same shapes, other group: other architecture


def test_real_small_cnn_zoo_layout_maps_to_torch_keys():
    shapes = [(3, 3, 1, 16), (16,), (3, 3, 16, 16), (16,), (3, 3, 16, 16), (16,), (16, 10), (10,)]
    names = [
        "sequential/conv2d/kernel:0",
        "sequential/conv2d/bias:0",
        "sequential/conv2d_1/kernel:0",
        "sequential/conv2d_1/bias:0",
        "sequential/conv2d_2/kernel:0",
        "sequential/conv2d_2/bias:0",
        "sequential/dense/kernel:0",
        "sequential/dense/bias:0",
    ]
    rows, pos = [], 0
    for name, shape in zip(names, shapes):
        size = int(np.prod(shape))
        rows.append((name, pos, pos + size, str(shape)))
        pos += size
    table = pa.table({k: [r[i] for r in rows] for i, k in enumerate(["varname", "start_idx", "end_idx", "shape"])})
    variables = parse_layout(table, "layout.csv", 4970)
    spec = spec_of(variables, "relu")
    assert spec.num_params == 4970 and spec.group == "perm_scale"
    assert spec.keys == (
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "conv3.weight",
        "conv3.bias",
        "fc.weight",
        "fc.bias",
    )
    assert spec.param_shapes()["conv2.weight"] == (16, 16, 3, 3) and spec.param_shapes()["fc.weight"] == (10, 16)
    with pytest.raises(SourceError, match="does not cover weights.npy"):
        parse_layout(table, "layout.csv", 4971)
    gap = table.slice(1)  # first variable missing: the rest starts at 144, not 0
    with pytest.raises(SourceError, match="starts at 144"):
        parse_layout(gap, "layout.csv", 4970)


def test_layout_not_covering_weights_fails_naming_the_file(tmp_path, zoo_writers):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=4, drop_last_variable=True)
    with pytest.raises(SourceError, match=r"layout\.csv.*(does not cover weights\.npy)"):
        make_source("smallcnnzoo", Location(str(tmp_path / "zoo"))).plan()


def test_metrics_rows_must_match_weights(tmp_path, zoo_writers):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=4)
    np.save(tmp_path / "zoo/weights.npy", np.load(tmp_path / "zoo/weights.npy")[:3])
    with pytest.raises(SourceError, match="metrics.csv.gz: 4 rows, but weights.npy has 3"):
        make_source("smallcnnzoo", Location(str(tmp_path / "zoo"))).plan()


def test_weights_npy_is_memory_mapped_locally_and_range_read_elsewhere(tmp_path):
    data = np.arange(50 * 7, dtype=np.float32).reshape(50, 7)
    np.save(tmp_path / "weights.npy", data)
    local = NpyRows(Location(str(tmp_path)), "weights.npy")
    np.testing.assert_array_equal(local.read(10, 20), data[10:20])
    assert isinstance(local._mmap, np.memmap)
    remote_loc = Location("memory://metazoo-npy")
    remote_loc.write_bytes("weights.npy", (tmp_path / "weights.npy").read_bytes())
    remote = NpyRows(remote_loc, "weights.npy")
    assert remote._mmap is None and remote.shape == (50, 7)
    np.testing.assert_array_equal(remote.read(45, 50), data[45:50])


def test_nfn_siren_paths_give_labels_and_indices(tmp_path, zoo_writers):
    written = zoo_writers.nfn_siren(tmp_path / "siren", per_label=2)
    (tmp_path / "siren/randinit_smaller_7/other.pth").parent.mkdir()
    torch.save(zoo_writers.siren_state_dict(seed=5), tmp_path / "siren/randinit_smaller_7/other.pth")
    source = make_source("nfn-siren", Location(str(tmp_path / "siren")))
    plan = source.plan()
    got = {r["source"]: (r["label"], r["index"]) for r in plan.inputs.to_pylist()}
    for idx, (label, _) in written.items():
        assert got[f"randinit_smaller_{label}s/net{idx}.pth"] == (label, idx)
    assert got["randinit_smaller_7/other.pth"] == (7, None)  # "..._<label>/" works; no index: null
    batches, rejects = read_all(source, plan.inputs)
    assert not rejects and {b.spec.activation for b in batches} == {"sine"}
    assert batches[0].spec.keys[0] == "net.0.linear.weight"
    custom = make_source(
        "nfn-siren",
        Location(str(tmp_path / "siren")),
        glob="*_1s/*.pth",
        label_pattern=r"smaller_(\d)",
        index_pattern=r"(\d+)\.pth$",
    )
    assert custom.plan().inputs["label"].to_pylist() == [1, 1]


def test_checkpoints_join_metadata_and_keep_files_without_it(tmp_path, zoo_writers):
    files = zoo_writers.checkpoints(tmp_path / "ck", n=4)
    with open(tmp_path / "ck/metadata.csv", "a", newline="") as f:
        csv.writer(f).writerow(["missing.pt", 9, 0.1, 0.1, "relu", 0.1])  # no such file: ignored
    torch.save(zoo_writers.mlp_state_dict(seed=99), tmp_path / "ck/extra.pt")  # no metadata row
    source = make_source("checkpoints", Location(str(tmp_path / "ck")), activation="relu")
    plan = source.plan()
    rows = {r["source"]: r for r in plan.inputs.to_pylist()}
    assert set(rows) == set(files) | {"extra.pt"}
    assert rows["run1/epoch_3.pt"]["step"] == 3 and rows["run1/epoch_3.pt"]["test_accuracy"] == pytest.approx(0.53)
    assert rows["extra.pt"]["test_accuracy"] is None and rows["extra.pt"]["step"] is None
    assert plan.metrics == ["test_accuracy", "train_loss"] and plan.hparam_keys == ["learning_rate"]
    batches, rejects = read_all(source, plan.inputs)
    assert not rejects and len(batches) == 5
    by_row = rows_of(batches)
    names = plan.inputs["source"].to_pylist()
    for row, (_, tensors) in by_row.items():
        if names[row] in files:
            for key, value in files[names[row]].items():
                np.testing.assert_array_equal(tensors[key], value.numpy().reshape(-1))
    only_pt = make_source("checkpoints", Location(str(tmp_path / "ck") + "/run*/*.pt"), activation="relu")
    assert only_pt.plan().inputs["source"].to_pylist() == ["run0/epoch_1.pt", "run1/epoch_3.pt"]


def test_checkpoints_need_an_activation(tmp_path, zoo_writers):
    zoo_writers.checkpoints(tmp_path / "ck", n=2, with_metadata=False)
    with pytest.raises(SourceError, match="no activation"):
        make_source("checkpoints", Location(str(tmp_path / "ck"))).plan()


def _pt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_loading_refuses_pickled_code_unless_allowed(zoo_writers, tmp_path):
    sd = zoo_writers.mlp_state_dict()
    zoo_writers.pickled_with_code(tmp_path / "args.pt", sd)
    data = (tmp_path / "args.pt").read_bytes()
    with pytest.raises(LoadError) as err:
        load_state_dict(data, "args.pt")
    assert err.value.reason == "needs_pickle" and "argparse.Namespace" in err.value.detail
    assert "--allow-pickle" in err.value.detail
    loaded = load_state_dict(data, "args.pt", allow_pickle=True)  # unwrapped from {"state_dict": ...}
    np.testing.assert_array_equal(loaded["fc2.weight"], sd["fc2.weight"].numpy())


@pytest.mark.parametrize(
    "name, data",
    [
        ("trunc.pt", lambda sd: _pt_bytes(sd)[:200]),
        ("empty.pt", lambda sd: b""),
        ("garbage.pth", lambda sd: b"\x80\x02garbage" * 20),
        ("trunc.safetensors", lambda sd: __import__("safetensors.torch").torch.save(dict(sd))[:-7]),
        ("garbage.safetensors", lambda sd: b"xx"),
    ],
)
def test_corrupt_files_are_named_in_the_error(zoo_writers, name, data):
    with pytest.raises(LoadError) as err:
        load_state_dict(data(zoo_writers.mlp_state_dict()), name)
    assert err.value.reason == "corrupt" and err.value.detail.startswith(name)


def test_non_state_dicts_are_unsupported():
    with pytest.raises(LoadError, match="not a state dict") as err:
        load_state_dict(_pt_bytes({"epoch": 3, "lr": 0.1}), "meta.pt")
    assert err.value.reason == "unsupported_architecture"
