"""`model.compile: true`: a compiled metanetwork computes what the eager one does (float64), keeps its group
invariance, survives DeepSpeed's engine and its checkpoints, and is saved without `_orig_mod.` keys.

The default tests compile with the `aot_eager` backend: TorchDynamo traces the model (WeightSpace
containers included) and AOTAutograd builds forward and backward graphs, without inductor's C++ build,
which takes minutes on a busy CPU. The inductor tests are marked slow."""

from __future__ import annotations

import copy

import pytest
import torch

from metanets import NetworkSpec, WeightSpace, build_model, symmetry
from metanets.layers.common import relu
from metanets.testing import TOLERANCE, assert_invariant
from training.config import ConfigError, load_config
from training.engine import COMPILED_PREFIX, clean_state_dict, uncompiled
from training.model_io import load_metanet, save_metanet


def _spec_and_batch(activation: str = "relu", batch: int = 3):
    gen = torch.Generator().manual_seed(0)
    shapes = {"0.weight": (5, 3), "0.bias": (5,), "1.weight": (4, 5), "1.bias": (4,), "2.weight": (2, 4),
              "2.bias": (2,)}
    sds = [{k: torch.randn(*s, generator=gen) for k, s in shapes.items()} for _ in range(batch)]
    spec = NetworkSpec.from_state_dict(sds[0], activation=activation)
    return spec, WeightSpace.from_state_dicts(sds, spec, dtype=torch.float64)


def _model(name, spec):
    torch.manual_seed(0)
    kwargs = {"hidden": 3, "num_layers": 2, "head_hidden": 8} if name != "statnet" else {"hidden": 8}
    return build_model(name, spec, **kwargs).double()


def _compiled_matches_eager(name: str, activation: str, backend: str) -> None:
    from torch._dynamo.utils import counters

    spec, ws = _spec_and_batch(activation)
    eager, model = _model(name, spec), _model(name, spec)
    torch._dynamo.reset()
    counters.clear()
    model.compile(backend=backend, fullgraph=False)  # in place, as DeepSpeed's engine.compile does
    assert list(model.state_dict()) == list(eager.state_dict())  # no `_orig_mod.` prefix
    out, ref = model(ws), eager(ws)
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE[torch.float64])
    out.square().sum().backward()
    ref.square().sum().backward()
    for (key, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=f"gradient of {key}")
    # metanets.testing copies the model (deepcopy) and checks its output in float64: the copy of a model
    # compiled in place must run its own weights
    # elements of the group the model claims (hnp and np: permutations only, whatever the activation allows)
    elements = [symmetry.sample(spec, ws.batch_size, scale=(0.2, 5.0), group=model.invariant_to,
                                generator=torch.Generator().manual_seed(k)) for k in range(2)]
    assert_invariant(model, ws, elements)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        next(shifted.parameters()).add_(1.0)
        assert float((shifted(ws) - out).abs().max()) > 1e-6, "the deep copy still runs the original's weights"


@pytest.mark.parametrize("name,activation", [("monomial_nfn", "relu"), ("monomial_nfn", "tanh")])
def test_compiled_model_matches_eager_and_stays_invariant(name, activation):
    _compiled_matches_eager(name, activation, "aot_eager")


@pytest.mark.parametrize("alpha_source", ["input", "feature"])
def test_compiled_per_channel_quasi_matches_eager(alpha_source):
    """The per-channel quasi model, whose scaling the forward pass folds into the pool's normalisation (a
    custom autograd function), compiles and gives the eager outputs and gradients (float64)."""
    spec, ws = _spec_and_batch("relu")
    kwargs = {"hidden": 3, "num_layers": 2, "head_hidden": 8, "alpha_source": alpha_source, "eps": 0.5}
    torch.manual_seed(0)
    eager = build_model("monomial_nfn_quasi", spec, **kwargs).double()
    model = copy.deepcopy(eager)
    torch._dynamo.reset()
    model.compile(backend="aot_eager", fullgraph=False)
    out, ref = model(ws), eager(ws)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOLERANCE[torch.float64])
    out.square().sum().backward()
    ref.square().sum().backward()
    for (key, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=f"gradient of {key}")


@pytest.mark.slow
@pytest.mark.parametrize("name,activation", [("monomial_nfn", "relu"), ("hnp", "relu"), ("np", "tanh")])
def test_inductor_compiled_model_matches_eager_and_stays_invariant(name, activation):
    _compiled_matches_eager(name, activation, "inductor")


def _saved_and_backward(fn, *inputs):
    """What AOTAutograd's partitioner keeps from the forward for the backward (dtypes of the saved
    tensors) and the operators the backward graphs call, for `fn(*inputs).sum()` compiled with inductor's
    decompositions and partitioner (min-cut rematerialisation) but no code generation."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    saved, called = [], set()

    def forward_compiler(gm, example_inputs):
        outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        saved.extend(n.meta["val"].dtype for n in outputs if isinstance(n, torch.fx.Node) and "val" in n.meta)
        return make_boxed_func(gm.forward)

    def backward_compiler(gm, example_inputs):
        called.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler,
                           partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    torch.compile(lambda *xs: fn(*xs).sum(), backend=backend)(*inputs).backward()
    return saved, called


def test_compiled_relu_saves_its_output_not_a_bool_mask():
    """monomial_nfn's ReLUs (`metanets.layers.common.relu`) under torch.compile on CPU: their backward
    reads the saved float output through metazoo::relu_backward, so the forward saves no bool mask
    (inductor's CPU kernel that writes one was 13-19x slower than eager's ReLU). The same model with
    plain torch.relu, compiled the same way, does save bool masks."""
    from metanets.layers.common import WSActivation

    spec, ws = _spec_and_batch("relu")
    model = _model("monomial_nfn", spec).float()
    x = WeightSpace(spec, tuple(w.float() for w in ws.weights), tuple(b.float() for b in ws.biases))
    saved, called = _saved_and_backward(lambda: model(x))
    assert torch.bool not in saved and "metazoo.relu_backward.default" in called, (saved, called)
    for module in model.modules():
        if isinstance(module, WSActivation):
            module.fn = torch.relu
    saved_plain, called_plain = _saved_and_backward(lambda: model(x))
    assert torch.bool in saved_plain and "metazoo.relu_backward.default" not in called_plain, saved_plain


def test_compiled_relu_equals_torch_relu_in_float64():
    """Values and gradients, exact zeros included (the gradient at 0 is 0, as torch.relu's)."""
    x = torch.randn(7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0, :3] = 0.0
    ours, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    weights = torch.randn(7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    out = torch.compile(relu, backend="aot_eager", fullgraph=True)(ours)
    expected = torch.relu(ref)
    assert torch.equal(out, expected)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.equal(ours.grad, ref.grad)
    assert torch.equal(relu(x), torch.relu(x))  # eager: torch.relu itself


def test_compiled_model_still_names_bad_input():
    spec, ws = _spec_and_batch()
    model = _model("monomial_nfn", spec)
    model.compile(backend="aot_eager")
    bad = WeightSpace(spec, (ws.weights[0], ws.weights[1].clone().fill_(float("nan")), ws.weights[2]), ws.biases)
    with pytest.raises(ValueError, match=r"1\.weight: non-finite values"):
        model(bad)


def test_saved_compiled_model_has_plain_keys_and_loads(tmp_path):
    spec, ws = _spec_and_batch()
    plain = _model("monomial_nfn", spec).float()
    wrapped = torch.compile(copy.deepcopy(plain), backend="aot_eager")  # torch.compile(m) wraps: `_orig_mod.`
    assert all(k.startswith(COMPILED_PREFIX) for k in wrapped.state_dict())
    assert uncompiled(wrapped) is wrapped._orig_mod
    in_place = copy.deepcopy(plain)
    in_place.compile(backend="aot_eager")
    card = {"model": "monomial_nfn", "kwargs": {"hidden": 3, "num_layers": 2, "head_hidden": 8},
            "spec": spec.to_dict(), "arch_id": spec.arch_id}
    for label, model in (("wrapped", wrapped), ("in_place", in_place)):
        save_metanet(tmp_path / label, model, card)
        loaded, _ = load_metanet(tmp_path / label)
        assert list(loaded.state_dict()) == list(plain.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(loaded(ws.float()), plain(ws.float()), rtol=0, atol=0)


def test_a_compiled_submodule_is_refused_by_name():
    spec, _ = _spec_and_batch()
    model = _model("monomial_nfn", spec)
    model.head = torch.compile(model.head, backend="aot_eager")
    with pytest.raises(ValueError, match=r"'head\._orig_mod\.0\.weight'.*module\.compile\(\)"):
        clean_state_dict(model)


def test_config_compile_flag():
    cfg = load_config(None, ["data.table=t", "model.compile=true"])
    assert cfg.model.compile is True
    assert load_config(None, ["data.table=t"]).model.compile is False
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(None, ["data.table=t", "model.compile=sometimes"])
