"""Step time of the models whose pooling normalises channel vectors (the positive-scale cancellation of
Monomial-NFN and Transformer-NFN), with `normalise_channels`' closed-form backward against autograd through
the elementary formula it replaced (divide by the largest |component|, then by the norm), in one process.

    python bench/normalise.py [--batch 64] [--repeats 20] [--threads 1] [--models monomial_nfn,transformer_nfn]

Both variants share their weights and take turns step by step (bench/layers.py's timing), so a change in
the machine's load hits both alike. Before timing, the two are checked equal in float64 (outputs and
parameter gradients) and the largest differences are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
from layers import digits_transformer_state_dict, small_cnn_state_dict, time_models
from torch import nn

import metanets.layers.monomial as monomial_layers
import metanets.transformer.pool as transformer_pool
from metanets import NetworkSpec, TransformerSpec, TransformerWeightSpace, WeightSpace, build_model


def autograd_normalise(t: torch.Tensor) -> torch.Tensor:
    """The formula before the closed-form backward: every step is an autograd op."""
    top = t.abs().amax(dim=1, keepdim=True)
    ok = top > torch.finfo(t.dtype).tiny
    u = t / torch.where(ok, top, torch.ones_like(top))
    norm = torch.where(ok, (u * u).sum(dim=1, keepdim=True), torch.ones_like(top)).sqrt()
    return u * torch.where(ok, norm.reciprocal(), torch.zeros_like(top))


@contextlib.contextmanager
def _autograd_normalisation():
    saved = monomial_layers.normalise_channels, transformer_pool.normalise_channels
    monomial_layers.normalise_channels = transformer_pool.normalise_channels = autograd_normalise
    try:
        yield
    finally:
        monomial_layers.normalise_channels, transformer_pool.normalise_channels = saved


class WithAutogradNormalisation(nn.Module):
    """`model` with its pooling's normalisation built from autograd ops (its backward graph is recorded
    in the forward, so the swap need only last the forward)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ws):
        with _autograd_normalisation():
            return self.model(ws)


def _check_equal(model: nn.Module, reference: nn.Module, ws) -> tuple[float, float]:
    a, b = copy.deepcopy(model).double(), copy.deepcopy(reference).double()
    out_a, out_b = a(ws.double()), b(ws.double())
    out_a.square().mean().backward()
    out_b.square().mean().backward()
    grad = max(float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-300))
               for p, q in zip(a.parameters(), b.model.parameters()))
    return float((out_a - out_b).detach().abs().max()), grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="monomial_nfn,transformer_nfn")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    cnn = [small_cnn_state_dict(gen) for _ in range(args.batch)]
    cnn_spec = NetworkSpec.from_state_dict(cnn[0], activation="relu")
    tfm = [digits_transformer_state_dict(gen) for _ in range(args.batch)]
    tfm_spec = TransformerSpec.from_state_dict(tfm[0], activation="relu", num_heads=2)
    batches = {"network": WeightSpace.from_state_dicts(cnn, cnn_spec),
               "transformer": TransformerWeightSpace.from_state_dicts(tfm, tfm_spec)}
    from metanets.registry import KIND_OF, load_builders

    load_builders()
    print(f"batch {args.batch}, {args.threads} thread(s), forward+backward, "
          f"medians of {args.repeats} alternating steps")
    print(f"{'model':<22}{'closed-form ms':>16}{'autograd ms':>14}{'autograd / closed':>20}"
          f"{'max |out diff|':>16}{'max grad rel diff':>19}")
    for name in args.models.split(","):
        kind = KIND_OF[name]
        ws = batches[kind]
        torch.manual_seed(0)
        model = build_model(name, ws.spec, hidden=16)
        reference = WithAutogradNormalisation(model)  # the same module: the same weights
        out_diff, grad_diff = _check_equal(model, reference, ws)
        times = time_models({"closed": model, "autograd": reference}, ws, args.repeats)
        print(f"{name:<22}{1000 * times['closed']:>16.1f}{1000 * times['autograd']:>14.1f}"
              f"{times['autograd'] / times['closed']:>20.2f}{out_diff:>16.1e}{grad_diff:>19.1e}", flush=True)


if __name__ == "__main__":
    main()
