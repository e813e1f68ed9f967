"""Step time with issue 15's eager formulations against the ones they replaced, in one process.

Same weights, steps alternating:
- `normalise`: `normalise_channels`' closed-form backward (the positive-scale cancellation of the
  Monomial-NFN and Transformer-NFN poolings) against autograd through the elementary formula it replaced
  (divide by the largest |component|, then by the norm);
- `np`: NPLinear's block-wise map (parts constant along an axis mapped at their reduced size) against
  the map of their full-size concatenation (`concatenated=True`);
- `stats`: the weight statistics' order statistics from numpy (`tensor_stats`' default on CPU: numpy's
  sort, or argpartition where a gradient is needed) against torch's sort of each row (`method="sort"`),
  in STATNet and in the input quasi layer's alpha.

    python bench/formulations.py [--batch 64] [--repeats 20] [--threads 1] [--change normalise|np|stats|all]
                                 [--models ...]

Both variants take turns step by step (bench/layers.py's timing), so a change in the machine's load hits
both alike. Before timing, the two are checked equal in float64 (outputs and parameter gradients) and the
largest differences are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
from layers import digits_transformer_state_dict, small_cnn_state_dict, time_models
from torch import nn

import metanets.layers.monomial as monomial_layers
import metanets.layers.stats as stats_module
import metanets.transformer.pool as transformer_pool
from metanets import NetworkSpec, TransformerSpec, TransformerWeightSpace, WeightSpace, build_model
from metanets.layers.np_layers import NPLinear


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


@contextlib.contextmanager
def _concatenated_np_maps():
    forward = NPLinear.forward
    NPLinear.forward = lambda self, ws: forward(self, ws, concatenated=True)
    try:
        yield
    finally:
        NPLinear.forward = forward


@contextlib.contextmanager
def _sorted_statistics():
    tensor_stats = stats_module.tensor_stats
    stats_module.tensor_stats = lambda t: tensor_stats(t, method="sort")  # what `weight_stats` calls
    try:
        yield
    finally:
        stats_module.tensor_stats = tensor_stats


CHANGES = {  # change: (what it replaced, as a context, the models it concerns)
    "normalise": (_autograd_normalisation, ("monomial_nfn", "transformer_nfn")),
    "np": (_concatenated_np_maps, ("np", "hnp")),
    "stats": (_sorted_statistics, ("statnet", "monomial_nfn_quasi")),
}


class WithReplaced(nn.Module):
    """`model` computed with the replaced formulation (its backward graph is recorded in the forward, so the
    swap need only last the forward)."""

    def __init__(self, model: nn.Module, replaced):
        super().__init__()
        self.model, self.replaced = model, replaced

    def forward(self, ws):
        with self.replaced():
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--change", choices=[*CHANGES, "all"], default="all")
    parser.add_argument("--models", default=None, help="comma-separated subset of the change's models")
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
    keep = set(args.models.split(",")) if args.models else None
    print(f"batch {args.batch}, {args.threads} thread(s), forward+backward, "
          f"medians of {args.repeats} alternating steps")
    print(f"{'change':<11}{'model':<18}{'new ms':>9}{'replaced ms':>13}{'replaced / new':>16}"
          f"{'max |out diff|':>16}{'max grad rel diff':>19}")
    for change in CHANGES if args.change == "all" else [args.change]:
        replaced, names = CHANGES[change]
        for name in names:
            if keep is not None and name not in keep:
                continue
            ws = batches[KIND_OF[name]]
            torch.manual_seed(0)
            model = build_model(name, ws.spec, hidden=16)
            reference = WithReplaced(model, replaced)  # the same module: the same weights
            out_diff, grad_diff = _check_equal(model, reference, ws)
            times = time_models({"new": model, "replaced": reference}, ws, args.repeats)
            print(f"{change:<11}{name:<18}{1000 * times['new']:>9.1f}{1000 * times['replaced']:>13.1f}"
                  f"{times['replaced'] / times['new']:>16.2f}{out_diff:>16.1e}{grad_diff:>19.1e}", flush=True)


if __name__ == "__main__":
    main()
