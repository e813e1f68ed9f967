"""The DeepSpeed engine as the training worker builds it, in one process (gloo, world size 1): DeepSpeed's
shared-memory CPU op is skipped, and a model compiled in place trains, checkpoints and resumes with the
plain model's parameter names."""

from __future__ import annotations

import importlib
import socket

import pytest
import torch

from metanets import NetworkSpec, WeightSpace, build_model
from training.config import load_config
from training.engine import COMPILED_PREFIX, compile_engine, skip_shm_comm_op
from training.worker import deepspeed_config


@pytest.fixture
def gloo_world(monkeypatch):
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    backend = importlib.import_module("deepspeed.comm.torch")
    monkeypatch.setattr(backend, "build_shm_op", backend.build_shm_op)  # restored after the test
    yield
    importlib.import_module("deepspeed.comm.comm").cdb = None  # the next initialize builds a new backend
    dist.destroy_process_group()


def _engine(compiled: bool):
    import deepspeed

    gen = torch.Generator().manual_seed(0)
    shapes = {"0.weight": (5, 3), "0.bias": (5,), "1.weight": (2, 5), "1.bias": (2,)}
    sds = [{k: torch.randn(*s, generator=gen) for k, s in shapes.items()} for _ in range(4)]
    spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
    torch.manual_seed(0)
    model = build_model("monomial_nfn", spec, hidden=3, num_layers=2, head_hidden=8)
    cfg = load_config(None, ["data.table=t", "batch_size=4", "deepspeed.zero_stage=1"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, 1),
                                      dist_init_required=False)
    if compiled:
        compile_engine(engine, backend="aot_eager")
    return engine, WeightSpace.from_state_dicts(sds, spec)


def test_compiled_engine_trains_checkpoints_and_resumes_with_plain_names(gloo_world, tmp_path):
    assert skip_shm_comm_op()
    engine, ws = _engine(compiled=True)
    # the backend came up without building or loading the op
    assert importlib.import_module("deepspeed.comm.comm").cdb.shm_comm_op is None
    assert engine.is_compiled and engine.module is not None
    names = [k for k, _ in engine.module.named_parameters()]
    assert names and not any(COMPILED_PREFIX in k for k in names)
    for _ in range(2):
        loss = engine(ws).square().mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(str(tmp_path), tag="state", client_state={"epoch": 0})
    saved = torch.load(tmp_path / "state" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert list(saved) == list(engine.module.state_dict())
    # an eager engine resumes the compiled run's checkpoint (and would the other way round)
    eager, _ = _engine(compiled=False)
    _, client = eager.load_checkpoint(str(tmp_path), tag="state")
    assert client["epoch"] == 0
    for (k, p), q in zip(eager.module.state_dict().items(), engine.module.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(eager(ws), engine(ws), rtol=1e-6, atol=1e-7)
