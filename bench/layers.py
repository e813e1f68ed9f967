"""Forward+backward throughput of every metanetwork on a batch of Small-CNN-Zoo weight spaces.

Prints networks/s per model and the time ratio quasi / backbone measured in the same run
(goal: monomial_nfn_quasi / monomial_nfn <= 1.15).

    python bench/layers.py [--batch 64] [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from metanets import NetworkSpec, WeightSpace, build_model

FAMILIES = ["statnet", "np", "hnp", "monomial_nfn", "monomial_nfn_large", "monomial_nfn_quasi"]


def small_cnn_state_dict(gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {
        "conv1.weight": (16, 1, 3, 3), "conv1.bias": (16,),
        "conv2.weight": (16, 16, 3, 3), "conv2.bias": (16,),
        "conv3.weight": (16, 16, 3, 3), "conv3.bias": (16,),
        "fc.weight": (10, 16), "fc.bias": (10,),
    }
    return {k: 0.3 * torch.randn(*s, generator=gen) for k, s in shapes.items()}


def time_model(model: nn.Module, ws: WeightSpace, repeats: int) -> float:
    """Median seconds of one forward+backward pass."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    times = []
    for k in range(repeats + 3):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(ws).square().mean().backward()
        if k >= 3:  # warm-up
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    sds = [small_cnn_state_dict(gen) for _ in range(args.batch)]
    spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
    ws = WeightSpace.from_state_dicts(sds, spec)
    rows = []
    for name in FAMILIES:
        torch.manual_seed(0)
        model = build_model(name, spec)
        sec = time_model(model, ws, args.repeats)
        rows.append((name, model.num_params, sec, args.batch / sec))
    base = {name: sec for name, _, sec, _ in rows}
    print(f"batch {args.batch} Small-CNN-Zoo weight spaces, {torch.get_num_threads()} threads, forward+backward")
    print(f"{'model':<22}{'params':>10}{'ms/step':>10}{'nets/s':>10}{'time / monomial_nfn':>22}")
    for name, params, sec, rate in rows:
        print(f"{name:<22}{params:>10}{sec * 1e3:>10.2f}{rate:>10.0f}{sec / base['monomial_nfn']:>22.3f}")
    ratio = base["monomial_nfn_quasi"] / base["monomial_nfn"]
    print(f"quasi / backbone time ratio: {ratio:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
