"""The training input pipeline (`data.prefetch`): the background producer serves the batches the inline loop
would read, in the same order and with the same augmentation draws; its errors reach the step loop naming
the batch; closing it stops the producer mid-epoch or between epochs."""

import threading

import numpy as np
import pytest
import torch

from metanets import NetworkSpec, build_model
from tests.metanets.reference_nets import MLP, random_state_dicts
from training.config import ConfigError, load_config
from training.inputs import TrainingInputs
from training.prefetch import EpochPrefetcher, InputPipelineError

ROWS = 40


class FakeShard:
    """Stands in for a Ray Data split: numpy batches in an order drawn from `local_shuffle_seed`.

    Records the thread each epoch was read from and which epochs' iterators were closed before their end;
    `fail_at=(epoch, batch)` raises while that batch is read."""

    def __init__(self, fail_at=None):
        sds = random_state_dicts(MLP, ROWS)
        self.spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
        self.columns = {k: np.stack([sd[k].numpy() for sd in sds]) for k in self.spec.keys}
        self.columns["test_accuracy"] = np.linspace(0.1, 0.9, ROWS).astype(np.float32)
        self.fail_at, self.threads, self.closed_early, self.epochs = fail_at, [], [], []

    def iter_batches(self, *, batch_size, batch_format, drop_last, prefetch_batches, local_shuffle_buffer_size,
                     local_shuffle_seed):
        assert batch_format == "numpy" and not drop_last
        epoch = len(self.epochs)
        self.epochs.append(local_shuffle_seed)
        self.threads.append(threading.current_thread().name)
        order = np.random.default_rng(local_shuffle_seed).permutation(ROWS)
        done = False
        try:
            for b, start in enumerate(range(0, ROWS, batch_size)):
                if self.fail_at == (epoch, b):
                    raise OSError(f"shard read failed (epoch {epoch})")
                idx = order[start:start + batch_size]
                yield {k: v[idx] for k, v in self.columns.items()}
            done = True
        finally:
            if not done:
                self.closed_early.append(epoch)


def _cfg(*extra):
    return load_config(None, ["data.table=unused", "batch_size=8", "epochs=3", "augment.enabled=true",
                              "augment.scale_log10_max=1", "seed=3", *extra])


def _inputs(shard, cfg):
    return TrainingInputs(shard, cfg, shard.spec, rank=1, device=torch.device("cpu"), dtype=torch.float64)


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
    assert inline_shard.epochs == prefetch_shard.epochs  # same per-epoch shuffle seeds, in order
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
    shard = FakeShard(fail_at=(1, 3))
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
    assert shard.epochs == [3 * 10007 + 0, 3 * 10007 + 1]  # nothing read after the failure


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
