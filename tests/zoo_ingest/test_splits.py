"""Splits: hash fractions, `none`, and the three split-file forms."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from zoo_ingest.sources.base import SourceError
from zoo_ingest.splits import ALL, INDEX, PER_CHECKPOINT, SplitPolicy, assign, resolve_network


def test_parse_fractions_and_none():
    assert SplitPolicy.parse("80/10/10").fractions == pytest.approx((0.8, 0.1, 0.1))
    assert SplitPolicy.parse("0.7,0.2,0.1").fractions == pytest.approx((0.7, 0.2, 0.1))
    assert SplitPolicy.parse("none").names == (ALL,)
    for bad in ("80/10", "50/10/10", "a/b/c", "-10/60/50"):
        with pytest.raises(ValueError, match="split"):
            SplitPolicy.parse(bad)


def test_hash_split_is_deterministic_and_follows_fractions():
    policy = SplitPolicy.parse("70/20/10")
    keys = [f"{i:032x}" for i in range(5000)]
    first = [policy.by_hash(k) for k in keys]
    assert first == [SplitPolicy.parse("70/20/10").by_hash(k) for k in keys]
    counts = Counter(first)
    assert abs(counts["train"] / 5000 - 0.7) < 0.03 and abs(counts["val"] / 5000 - 0.2) < 0.03
    other_seed = SplitPolicy.parse("70/20/10", seed=1)
    assert [other_seed.by_hash(k) for k in keys] != first


def test_split_by_hparam_keeps_a_run_together():
    policy = SplitPolicy.parse("50/25/25", by="run")
    hparams = [json.dumps({"run": f"r{i // 4}"}) for i in range(400)]
    out = assign(policy, ["x"] * 400, [None] * 400, [None] * 400, hparams, None).rows
    for run in range(100):
        assert len(set(out[run * 4 : run * 4 + 4])) == 1
    assert len(set(out)) == 3
    # a row without the value is an error naming it, never a silent split per checkpoint
    with pytest.raises(SourceError, match="lonely.pt has no value for --split-by 'run'"):
        assign(policy, ["a.pt", "lonely.pt"], [None] * 2, [None] * 2, [hparams[0], "{}"], None)
    with pytest.raises(SourceError, match="'run': no checkpoint has this hyper-parameter"):
        assign(policy, ["a.pt"], [None], [None], [json.dumps({"lr": 0.1})], None)
    # prefixed column names as they appear in the metadata are accepted
    prefixed = SplitPolicy.parse("50/25/25", by="hparam.run")
    assert assign(prefixed, ["x"] * 400, [None] * 400, [None] * 400, hparams, None).rows == out


def test_split_by_index_and_per_checkpoint_only_when_asked():
    by_index = SplitPolicy.parse("50/25/25", by=INDEX)
    out = assign(by_index, ["a", "b", "c", "d"], [3, 3, 4, 4], [None] * 4, ["{}"] * 4, None).rows
    assert out[0] == out[1] and out[2] == out[3] and None not in out
    with pytest.raises(SourceError, match="c.pth has no index"):
        assign(by_index, ["a", "c.pth"], [3, None], [None] * 2, ["{}"] * 2, None)
    per = SplitPolicy.parse("50/25/25", by=PER_CHECKPOINT)
    assert assign(per, ["a"], [None], [None], ["{}"], None).rows == [None]  # hashed from model_id in the task
    assert "per checkpoint" in per.to_dict()["rule"]


def test_resolve_network_takes_the_source_key_or_asks_for_split_by():
    policy = resolve_network(SplitPolicy.parse("80/10/10"), "modeldir", "the training run")
    assert policy.by == "modeldir" and "per network" in policy.describe() and "the training run" in policy.describe()
    explicit = SplitPolicy.parse("80/10/10", by="run")
    assert resolve_network(explicit, "modeldir", "x") is explicit
    assert resolve_network(SplitPolicy.parse("none"), None, "x").mode == "none"
    assert resolve_network(SplitPolicy.parse(split_file="s.csv"), None, "x").mode == "file"
    with pytest.raises(SourceError, match="no modeldir column.*--split-by HPARAM.*--split-by model_id"):
        resolve_network(SplitPolicy.parse("80/10/10"), None, "metrics.csv.gz has no modeldir column")


def test_csv_split_file_by_source_and_unlisted_rows():
    policy = SplitPolicy.parse(split_file="s.csv")
    text = "source,split\na.pt,train\nb.pt,test\n"
    out = assign(policy, ["a.pt", "b.pt", "c.pt"], [None] * 3, [None] * 3, ["{}"] * 3, text).rows
    assert out == ["train", "test", ""]  # "" = not in the split file: rejected later
    with pytest.raises(ValueError, match="line 2"):
        assign(policy, ["a.pt"], [None], [None], ["{}"], "source,split\na.pt,holdout\n")
    with pytest.raises(ValueError, match="needs a 'split' column"):
        assign(policy, ["a.pt"], [None], [None], ["{}"], "file,part\na.pt,train\n")


def test_csv_split_file_by_model_id_is_left_to_the_tasks():
    policy = SplitPolicy.parse(split_file="s.csv")
    result = assign(policy, ["a"], [None], [None], ["{}"], "model_id,split\nabc,val\n")
    assert result.rows == [None] and result.by_model_id == {"abc": "val"}


def test_json_index_ranges_like_nfn_siren():
    policy = SplitPolicy.parse(split_file="s.json")
    text = json.dumps({"index_ranges": {"train": [0, 6], "val": [6, 8], "test": [8, None]}})
    out = assign(policy, ["x"] * 11, list(range(10)) + [None], [None] * 11, ["{}"] * 11, text).rows
    assert out == ["train"] * 6 + ["val"] * 2 + ["test"] * 2 + [""]


def test_index_order_reproduces_nfn_small_cnn_zoo_test_set():
    """NFN: shuffle by the published order, keep step 86, the second half (int(0.5 n)) is test."""
    n = 101
    order = list(range(2 * n))
    random.Random(3).shuffle(order)
    steps = [86 if i % 2 else 0 for i in range(2 * n)]
    text = "\n".join(map(str, order))
    out = assign(
        SplitPolicy.parse("40/10/50", split_file="order.csv"),
        ["x"] * (2 * n),
        list(range(2 * n)),
        steps,
        ["{}"] * (2 * n),
        text,
    ).rows
    final = [i for i in order if steps[i] == 86]  # the rows NFN keeps, in NFN's order
    expected_test = set(final[int(0.5 * len(final)) :])
    assert {i for i in range(2 * n) if steps[i] == 86 and out[i] == "test"} == expected_test
    assert Counter(out[i] for i in final)["val"] == int(0.5 * len(final)) - int(0.4 * len(final))
    unlisted = assign(SplitPolicy.parse("40/10/50", split_file="o"), ["x"], [999], [0], ["{}"], text).rows
    assert unlisted == [""]
