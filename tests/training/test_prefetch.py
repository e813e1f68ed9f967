"""The training input pipeline: the worker's own shuffle of its shard (`ShardRows`: every row once per epoch,
drawn from a pool of at least `data.shuffle_buffer` rows; a kept shard read once), and `data.prefetch`: the
background producer serves the batches the inline loop would read, in the same order and with the same
augmentation draws; its errors reach the step loop naming the batch; closing it stops the producer mid-epoch
or between epochs."""

import threading

import numpy as np
import pytest
import torch

from metanets import NetworkSpec, build_model
from tests.metanets.reference_nets import MLP, random_state_dicts
from training.config import ConfigError, load_config
from training.inputs import ShardRows, ShufflePool, TrainingInputs
from training.prefetch import EpochPrefetcher, InputPipelineError

ROWS = 40


class FakeShard:
    """Stands in for a Ray Data split: numpy batches of `chunk` rows (at most the size asked for), in a fixed
    order drawn once from `order_seed`, as Ray Data hands a worker its blocks in an order of its own.

    Records the thread each read ran in, the chunk size each read asked for, the chunks handed out in the
    current read, and which reads were closed before their end; `fail_at=(read, chunk)` raises while that
    chunk is read."""

    def __init__(self, fail_at=None, chunk=8, order_seed=0):
        sds = random_state_dicts(MLP, ROWS)
        self.spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
        self.columns = {k: np.stack([sd[k].numpy() for sd in sds]) for k in self.spec.keys}
        self.columns["test_accuracy"] = np.arange(ROWS, dtype=np.float32)  # the row's id
        self.order = np.random.default_rng(order_seed).permutation(ROWS)
        self.fail_at, self.chunk = fail_at, chunk
        self.threads, self.closed_early, self.epochs, self.handed = [], [], [], 0

    def iter_batches(self, *, batch_size, batch_format, drop_last, prefetch_batches):
        assert batch_format == "numpy" and not drop_last
        read = len(self.epochs)
        self.epochs.append(batch_size)
        self.threads.append(threading.current_thread().name)
        self.handed = 0
        step = min(batch_size, self.chunk)
        done = False
        try:
            for c, start in enumerate(range(0, ROWS, step)):
                if self.fail_at == (read, c):
                    raise OSError(f"shard read failed (read {read})")
                self.handed += 1
                idx = self.order[start:start + step]
                yield {k: v[idx] for k, v in self.columns.items()}
            done = True
        finally:
            if not done:
                self.closed_early.append(read)


def _cfg(*extra):
    return load_config(None, ["data.table=unused", "batch_size=8", "epochs=3", "augment.enabled=true",
                              "augment.scale_log10_max=1", "seed=3", "data.shuffle_buffer=8", *extra])


def _inputs(shard, cfg, keep=False):
    return TrainingInputs(shard, cfg, shard.spec, rank=1, device=torch.device("cpu"), dtype=torch.float64,
                          keep=keep)


def _read(inputs, epochs):
    out = []
    for epoch in epochs:
        out.append([(ws, y) for ws, y in inputs.epoch(epoch)])
    return out


def _train(inputs, epochs, spec):
    """A plain step loop (AdamW on statnet) over the inputs; returns the losses, float64."""
    torch.manual_seed(0)
    model = build_model("statnet", spec, hidden=8).double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for epoch in epochs:
        for ws, y in inputs.epoch(epoch):
            loss = torch.nn.functional.mse_loss(model(ws).reshape(-1), y.double())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


def test_prefetched_batches_and_losses_equal_the_inline_ones():
    epochs = range(3)
    inline_shard, prefetch_shard = FakeShard(), FakeShard()
    inline = _inputs(inline_shard, _cfg("data.prefetch=0"))
    inline.start(0)
    rng = torch.get_rng_state()
    prefetched = _inputs(prefetch_shard, _cfg("data.prefetch=2"))
    prefetched.start(0)
    try:
        a, b = _read(inline, epochs), _read(prefetched, epochs)
    finally:
        prefetched.close()
    # the producer may run while the worker seeds and builds its model: it never draws from torch's global RNG
    assert torch.equal(torch.get_rng_state(), rng)
    # the prefetch path really read in its own thread, the inline one in the caller's
    assert set(prefetch_shard.threads) == {"metazoo-input"}
    assert set(inline_shard.threads) == {threading.current_thread().name}
    assert len(inline_shard.epochs) == len(prefetch_shard.epochs) == 3  # every epoch read the (unkept) shard
    assert [len(e) for e in a] == [len(e) for e in b] == [5, 5, 5]
    moved = False
    for epoch_a, epoch_b in zip(a, b):
        for (ws_a, y_a), (ws_b, y_b) in zip(epoch_a, epoch_b):
            assert ws_a.dtype == ws_b.dtype == torch.float64
            assert torch.equal(y_a, y_b)
            for t_a, t_b in zip(ws_a.weights + ws_a.biases, ws_b.weights + ws_b.biases):
                assert torch.equal(t_a, t_b)
    raw = torch.from_numpy(FakeShard().columns[inline_shard.spec.layers[0].weight_key])
    for ws, _ in a[0]:  # augmentation was on: the batches are not the table's rows themselves
        moved = moved or not any(torch.equal(w, r) for w in ws.weights[0][:, 0] for r in raw)
    assert moved
    # the same training run, loss for loss, when fed inline or by the producer
    inline = _inputs(FakeShard(), _cfg("data.prefetch=0"))
    inline.start(0)
    prefetched = _inputs(FakeShard(), _cfg("data.prefetch=3"))
    prefetched.start(0)
    try:
        assert _train(inline, epochs, inline_shard.spec) == _train(prefetched, epochs, inline_shard.spec)
    finally:
        prefetched.close()


def test_a_resumed_run_prefetches_from_its_start_epoch():
    inline = _inputs(FakeShard(), _cfg("data.prefetch=0"))
    inline.start(0)
    expected = _read(inline, range(3))[1:]
    shard = FakeShard()
    resumed = _inputs(shard, _cfg("data.prefetch=2"))
    resumed.start(1)
    resumed.start(1)  # the worker starts a fresh run's producer early; starting it again is a no-op
    with pytest.raises(ValueError, match="started at epoch 1"):
        resumed.start(0)
    try:
        with pytest.raises(ValueError, match="epoch 2 asked for, the next one prepared is 1"):
            next(iter(resumed.epoch(2)))
        got = _read(resumed, range(1, 3))
    finally:
        resumed.close()
    for epoch_e, epoch_g in zip(expected, got):
        assert len(epoch_e) == len(epoch_g)
        for (ws_e, _), (ws_g, _) in zip(epoch_e, epoch_g):
            assert all(torch.equal(x, z) for x, z in zip(ws_e.weights, ws_g.weights))


def test_a_producer_error_reaches_the_step_loop_naming_the_batch():
    shard = FakeShard(fail_at=(1, 4))  # 4 chunks of 8 rows read, 3 batches served past the 8-row buffer
    inputs = _inputs(shard, _cfg("data.prefetch=2"))
    inputs.start(0)
    try:
        assert len(list(inputs.epoch(0))) == 5
        got = []
        with pytest.raises(InputPipelineError, match="batch 3 of epoch 1 failed: OSError: shard read failed") as info:
            for item in inputs.epoch(1):
                got.append(item)
        assert len(got) == 3  # the batches before the failing one were served
        assert isinstance(info.value.__cause__, OSError)
    finally:
        inputs.close()
    assert len(shard.epochs) == 2  # nothing read after the failure


def test_closing_stops_the_producer_mid_epoch_and_before_the_next_epoch():
    shard = FakeShard()
    inputs = _inputs(shard, _cfg("data.prefetch=1"))
    inputs.start(0)
    batches = inputs.epoch(0)
    next(batches)  # the step loop stops (an error in the step) after one batch; the producer is blocked
    inputs.close()
    prefetcher = inputs._prefetcher
    assert not prefetcher.alive
    assert shard.closed_early == [0] and len(shard.epochs) == 1
    # early stopping: epoch 0 consumed, the producer has moved on to epoch 1 and waits with its first batch
    shard = FakeShard()
    inputs = _inputs(shard, _cfg("data.prefetch=1"))
    inputs.start(0)
    assert len(list(inputs.epoch(0))) == 5
    for _ in range(200):
        if len(shard.epochs) == 2:
            break
        threading.Event().wait(0.01)
    inputs.close()
    assert not inputs._prefetcher.alive
    assert shard.closed_early == [1] and len(shard.epochs) == 2


def test_inline_runs_no_thread_and_depth_is_validated():
    inputs = _inputs(FakeShard(), _cfg("data.prefetch=0"))
    with pytest.raises(RuntimeError, match="before start"):
        inputs.epoch(0)
    before = threading.active_count()
    inputs.start(0)
    assert threading.active_count() == before and inputs._prefetcher is None
    inputs.close()
    with pytest.raises(ValueError, match="at least 1"):
        EpochPrefetcher(lambda e: [], range(2), depth=0)
    # a run that already stopped early (start epoch past the last one) starts no producer either
    stopped = _inputs(FakeShard(), _cfg("data.prefetch=2"))
    stopped.start(3)
    assert stopped._prefetcher is None


def test_the_prefetch_key_is_validated():
    assert load_config(None, ["data.table=t"]).data.prefetch == 2
    assert load_config(None, ["data.table=t", "data.prefetch=0"]).data.prefetch == 0
    with pytest.raises(ConfigError, match=r"'data.prefetch': Input should be greater than or equal to 0"):
        load_config(None, ["data.table=t", "data.prefetch=-1"])
    with pytest.raises(ConfigError, match=r"'data.prefetch': Input should be a valid integer"):
        load_config(None, ["data.table=t", "data.prefetch=two"])
    with pytest.raises(ConfigError, match=r"'data.prefetch_batches': unknown key"):
        load_config(None, ["data.table=t", "data.prefetch_batches=2"])


def _rows(shard, keep=False, buffer=8, batch=8, seed=3, rank=1):
    return ShardRows(shard, batch_size=batch, shuffle_buffer=buffer, seed=seed, rank=rank, keep=keep, read_rows=64)


def _ids(batches):
    return [b["test_accuracy"].astype(int).tolist() for b in batches]


def test_a_streamed_epoch_serves_every_row_once_from_a_pool_of_at_least_the_buffer():
    shard = FakeShard(chunk=8)
    rows = _rows(shard, buffer=16)
    batches = rows.epoch(0)
    first = next(batches)
    # nothing is served before the pool holds the buffer and a batch: 3 chunks of 8 rows for 16 + 8
    assert shard.handed == 3 and len(first["test_accuracy"]) == 8
    served = [first, *batches]
    for b in served:  # each row's columns stay together through the pool's moves
        ids = b["test_accuracy"].astype(int)
        for key in shard.spec.keys:
            np.testing.assert_array_equal(b[key], shard.columns[key][ids])
    epoch0 = _ids(served)
    assert [len(b) for b in epoch0] == [8] * 5
    flat = sum(epoch0, [])
    assert sorted(flat) == list(range(ROWS))  # every row once
    assert flat != shard.order.tolist()  # shuffled, not the shard's order
    # the draws are the epoch's and the rank's: the same again, another epoch or rank differs
    assert _ids(_rows(FakeShard(chunk=8), buffer=16).epoch(0)) == epoch0
    assert _ids(_rows(FakeShard(chunk=8), buffer=16).epoch(1)) != epoch0
    assert _ids(_rows(FakeShard(chunk=8), buffer=16, rank=0).epoch(0)) != epoch0
    # a buffer as big as the shard pools every row before the first batch: one permutation of the whole shard
    shard = FakeShard(chunk=8)
    first = next(_rows(shard, buffer=ROWS).epoch(0))
    assert shard.handed == ROWS // 8 and shard.closed_early == []
    # the last batch of an epoch may be smaller (drop_last is off)
    assert [len(b) for b in _ids(_rows(FakeShard(chunk=8), batch=12).epoch(0))] == [12, 12, 12, 4]
    assert rows.reads == 1 and rows.kept is None  # not kept unless asked


def test_a_kept_shard_is_read_once_and_each_later_epoch_permutes_all_its_rows():
    shard = FakeShard(chunk=8)
    rows = _rows(shard, keep=True)
    epochs = [sum(_ids(rows.epoch(e)), []) for e in range(3)]
    assert len(shard.epochs) == 1 and rows.reads == 1  # epochs 1 and 2 read nothing
    assert all(sorted(e) == list(range(ROWS)) for e in epochs)
    assert epochs[1] != epochs[2] and epochs[1] != epochs[0]
    assert sorted(rows.kept["test_accuracy"].astype(int).tolist()) == list(range(ROWS))
    for key in shard.spec.keys:  # the kept rows are the shard's rows, unchanged
        kept = rows.kept[key][np.argsort(rows.kept["test_accuracy"])]
        np.testing.assert_array_equal(kept, shard.columns[key])
    # an epoch stopped before its end keeps nothing: the next epoch reads the shard again
    shard = FakeShard(chunk=8)
    rows = _rows(shard, keep=True)
    batches = rows.epoch(0)
    next(batches)
    batches.close()
    assert shard.closed_early == [0] and rows.kept is None
    assert sorted(sum(_ids(rows.epoch(1)), [])) == list(range(ROWS))
    assert rows.reads == 2 and rows.kept is not None


def test_a_kept_run_trains_on_the_same_rows_inline_and_prefetched():
    epochs = range(3)
    inline = _inputs(FakeShard(), _cfg("data.prefetch=0"), keep=True)
    inline.start(0)
    prefetched = _inputs(FakeShard(), _cfg("data.prefetch=2"), keep=True)
    prefetched.start(0)
    try:
        a, b = _read(inline, epochs), _read(prefetched, epochs)
    finally:
        prefetched.close()
    assert inline.rows.reads == prefetched.rows.reads == 1
    for epoch_a, epoch_b in zip(a, b):
        assert len(epoch_a) == len(epoch_b) == 5
        for (ws_a, y_a), (ws_b, y_b) in zip(epoch_a, epoch_b):
            assert torch.equal(y_a, y_b)
            assert all(torch.equal(x, z) for x, z in zip(ws_a.weights + ws_a.biases, ws_b.weights + ws_b.biases))


def test_shard_rows_reject_sizes_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        ShardRows(FakeShard(), batch_size=8, shuffle_buffer=0, seed=0, rank=0, keep=False, read_rows=8)


def test_the_shuffle_pool_draws_without_replacement_uniformly_and_keeps_rows_whole():
    rng = np.random.default_rng(0)
    pool = ShufflePool()
    n = 50
    ids = np.arange(n)
    for start in range(0, n, 7):  # chunks of 7 rows: the pool grows past its first capacity
        pool.add({"id": ids[start:start + 7], "row": np.stack([ids[start:start + 7]] * 3, axis=1) * 10})
    drawn = []
    while pool.size:
        b = pool.draw(rng, 6)
        np.testing.assert_array_equal(b["row"], np.stack([b["id"]] * 3, axis=1) * 10)
        drawn += b["id"].tolist()
    assert sorted(drawn) == list(range(n))
    # a draw of k from N rows takes each row with probability k / N: 4,000 draws of 5 from 20 rows
    counts = np.zeros(20)
    for _ in range(4000):
        pool.add({"id": np.arange(20)})
        counts[pool.draw(rng, 5)["id"]] += 1
        pool.draw(rng, 15)
    expected = 4000 * 5 / 20  # 1,000, binomial sd about 27
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(4000 * 0.25 * 0.75))
    # the first draw's rows after filling holes: the survivors are exactly the rows not drawn
    pool.add({"id": np.arange(10)})
    first = pool.draw(rng, 4)["id"].tolist()
    rest = pool.draw(rng, 6)["id"].tolist()
    assert sorted(first + rest) == list(range(10)) and pool.size == 0
