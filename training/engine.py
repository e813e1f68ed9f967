"""DeepSpeed engine set-up that decides start-up time and step speed: the CPU communication op, compilation.

Start-up. On the CPU accelerator DeepSpeed's torch backend builds (first time on a machine: two compiler
processes, about a minute) and then loads its shared-memory C++ op `deepspeed_shm_comm` whenever the
distributed backend is created, even with `dist_init_required=False`. The op only serves
`inference_all_reduce` (tensor-parallel inference in `deepspeed.module_inject`); training all-reduces go
through torch.distributed (gloo on CPU, NCCL on GPU) either way. So training skips it.

Compilation. `model.compile: true` compiles the metanetwork in place (`nn.Module.compile`, through
DeepSpeed's `engine.compile`), so parameter names, DeepSpeed checkpoints and saved models carry no
`_orig_mod.` prefix, and a run resumes whether or not compilation is on.
"""

from __future__ import annotations

import importlib

from torch import nn

COMPILED_PREFIX = "_orig_mod."


def skip_shm_comm_op() -> bool:
    """Make DeepSpeed's torch backend skip building/loading its shared-memory op; True if it was skipped.

    Must run before `deepspeed.initialize` (or `deepspeed.init_distributed`) creates the backend. The
    backend treats a missing op as unavailable (`shm_comm_op is None`) and uses torch.distributed.
    """
    backend = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` the attribute is torch
    if not hasattr(backend, "build_shm_op"):
        return False  # a DeepSpeed that no longer builds it at start-up: nothing to skip
    backend.build_shm_op = _no_shm_op
    return True


def _no_shm_op():
    return None


def compile_engine(engine, backend: str | None = None) -> None:
    """torch.compile the engine's module in place; `backend` None: the accelerator's default (inductor).

    TorchDynamo traces the whole forward of a Metanetwork, frozen WeightSpace dataclasses and input checks
    included, as one graph (`torch._dynamo.explain`: 1 graph, 0 breaks, no pytree registration needed);
    bad input (NaN/Inf) still fails with the message naming the tensor (tests/training/test_compile.py).
    """
    if backend is None:
        engine.compile()
    else:
        engine.compile(backend=backend)


def uncompiled(model: nn.Module) -> nn.Module:
    """The plain module behind a `torch.compile(model)` wrapper (an `OptimizedModule`); others unchanged."""
    while hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
        model = model._orig_mod
    return model


def clean_state_dict(model: nn.Module) -> dict:
    """The state dict of the uncompiled module; raises naming the key if a compiled submodule leaks a prefix."""
    state = uncompiled(model).state_dict()
    leaked = [k for k in state if COMPILED_PREFIX in k]
    if leaked:
        raise ValueError(f"state dict key {leaked[0]!r} holds {COMPILED_PREFIX!r}: a submodule was wrapped by "
                         "torch.compile(); compile in place with module.compile() instead")
    return state
