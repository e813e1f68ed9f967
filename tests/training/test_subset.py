"""`data.train_networks`: a fixed, nested subset of the training networks (the learning curve's zoo sizes)."""

import json

import pytest

from training.config import ConfigError, load_config
from training.driver import prepare, train_subset

pytestmark = pytest.mark.ray  # the digits_cnn_table fixture generates with Ray


def _cfg(table, *extra):
    return load_config(None, [f"data.table={table}", "data.activation=relu", "model.name=statnet",
                              "scaling.num_workers=1", *extra])


def _networks(table, arch_id, model_ids) -> set:
    rows = table.read_columns(["model_id", "hparams"], "train", arch_id)
    by_id = dict(zip(rows["model_id"].to_pylist(), rows["hparams"].to_pylist()))
    return {json.loads(by_id[m])["network_id"] for m in model_ids}


def test_subsets_are_whole_networks_nested_and_fixed(digits_cnn_table):
    table, arch_id, _, rows, _ = prepare(_cfg(digits_cnn_table))
    all_ids = table.read_columns(["model_id"], "train", arch_id)["model_id"].to_pylist()
    total = len(_networks(table, arch_id, all_ids))
    subsets = {}
    for n in (1, 3, total):
        cfg = _cfg(digits_cnn_table, f"data.train_networks={n}")
        _, _, _, sub_rows, _ = prepare(cfg)
        ids = train_subset(table, arch_id, cfg)
        assert len(_networks(table, arch_id, ids)) == n
        assert sub_rows["train"] == len(ids) and sub_rows["val"] == rows["val"]  # validation unchanged
        # whole networks: every checkpoint of a chosen network is in
        chosen = _networks(table, arch_id, ids)
        assert set(ids) == {m for m in all_ids if _networks(table, arch_id, [m]) <= chosen}
        subsets[n] = set(ids)
    assert subsets[1] <= subsets[3] <= subsets[total] == set(all_ids)
    # the same subset whatever the training seed
    assert set(train_subset(table, arch_id, _cfg(digits_cnn_table, "data.train_networks=3", "seed=5"))) == subsets[3]


def test_the_ray_dataset_keeps_only_the_subset(digits_cnn_table):
    cfg = _cfg(digits_cnn_table, "data.train_networks=2")
    table, arch_id, *_ = prepare(cfg)
    ids = train_subset(table, arch_id, cfg)
    dataset = table.to_ray_dataset(split="train", arch=arch_id, columns=["model_id"], model_ids=ids)
    assert sorted(r["model_id"] for r in dataset.take_all()) == sorted(ids)


def test_more_networks_than_the_split_holds_is_an_error_naming_the_key(digits_cnn_table):
    message = r"'data.train_networks': 10000 asked for, but split 'train' .* holds \d+ networks"
    with pytest.raises(ConfigError, match=message):
        prepare(_cfg(digits_cnn_table, "data.train_networks=10000"))
    with pytest.raises(ConfigError, match="data.train_networks"):
        _cfg(digits_cnn_table, "data.train_networks=0")
