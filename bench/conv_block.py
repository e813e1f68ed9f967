"""Where a batched digits-cnn training step spends its time, and the convolution formulations compared.

    .venv/bin/python bench/conv_block.py [--block 128] [--batch 64] [--repeat 30]

One thread, in this process. For a block of S stacked digits CNNs (the batched generation path,
`zoo_ingest/generators/cnn.py`) on mini-batches of B images each, it times forward + backward of the three
convolutions (conv1-3 with ReLU) in four formulations, taking turns step by step, after checking in
float64 that they give the same outputs and gradients:
- grouped: one `F.conv2d` with S groups per layer, channels-last (what generation uses);
- unfold: im2col by `Tensor.unfold`, then one batched matmul per layer;
- taps: the 9 kernel taps as strided slices, concatenated, then one batched matmul per layer;
- dense: conv1 by im2col of the images (they need no gradient), conv2 and conv3 as dense matrices gathered
  from the kernels (padding and stride become zeros), so each layer is one batched matmul.
Then the other parts of a step at the same sizes: the per-network dropout draws (each network draws its own
masks from its own generator, as the per-network path does) and the optimiser update; and, for scale, one
step of the per-network path (one network, batch B, eager modules). Ratios are against grouped, or against
the per-network step, measured in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

KEYS = ("conv1", "conv2", "conv3")


def grouped(params: dict, x: torch.Tensor) -> torch.Tensor:
    from zoo_ingest.generators.cnn import family

    s = x.shape[0]
    params = {**params, "fc.weight": torch.eye(16, dtype=x.dtype).expand(s, 16, 16),
              "fc.bias": torch.zeros(s, 16, dtype=x.dtype)}
    return family("relu").forward(params, x, None)  # (S, B, 16): the features before the classifier


def unfold(params: dict, x: torch.Tensor) -> torch.Tensor:
    s, b = x.shape[:2]
    h = x.unsqueeze(-1)  # (S, B, H, W, C)
    for name in KEYS:
        w, bias = params[f"{name}.weight"], params[f"{name}.bias"]
        c, out = h.shape[-1], h.shape[2] // 2
        patches = F.pad(h, (0, 0, 1, 1, 1, 1)).unfold(2, 3, 2).unfold(3, 3, 2)  # (S, B, Ho, Wo, C, 3, 3)
        matrix = w.permute(0, 2, 3, 4, 1).reshape(s, c * 9, 16)
        h = torch.relu(torch.baddbmm(bias.unsqueeze(1), patches.reshape(s, b * out * out, c * 9), matrix))
        h = h.view(s, b, out, out, 16)
    return h.reshape(s, b, 16)


def taps(params: dict, x: torch.Tensor) -> torch.Tensor:
    s, b = x.shape[:2]
    h = x.unsqueeze(-1)
    for name in KEYS:
        w, bias = params[f"{name}.weight"], params[f"{name}.bias"]
        c, out = h.shape[-1], h.shape[2] // 2
        padded = F.pad(h, (0, 0, 1, 1, 1, 1))
        stacked = torch.cat([padded[:, :, i : i + 2 * out : 2, j : j + 2 * out : 2] for i in range(3)
                             for j in range(3)], dim=-1)  # (S, B, Ho, Wo, 9C), taps then channels
        matrix = w.permute(0, 3, 4, 2, 1).reshape(s, 9 * c, 16)
        h = torch.relu(torch.baddbmm(bias.unsqueeze(1), stacked.reshape(s, b * out * out, 9 * c), matrix))
        h = h.view(s, b, out, out, 16)
    return h.reshape(s, b, 16)


def _dense_index(size: int) -> torch.Tensor:
    """For a 3x3, stride 2, padding 1 convolution 16 -> 16 on a size x size map: the entry of the flat kernel
    (o, c, i, j) that each entry of its dense matrix [(y, x, c), (Y, X, o)] holds (16*16*9: a zero)."""
    out = size // 2
    index = torch.full((size, size, 16, out, out, 16), 16 * 16 * 9, dtype=torch.long)
    o, c = torch.arange(16)[None, :], torch.arange(16)[:, None]
    for y in range(size):
        for x in range(size):
            for oy in range(out):
                for ox in range(out):
                    i, j = y - 2 * oy + 1, x - 2 * ox + 1
                    if 0 <= i < 3 and 0 <= j < 3:
                        index[y, x, :, oy, ox, :] = ((o * 16 + c) * 3 + i) * 3 + j
    return index.reshape(-1)


def dense(params: dict, x: torch.Tensor) -> torch.Tensor:
    s, b = x.shape[:2]
    images = F.pad(x, (1, 1, 1, 1)).unfold(2, 3, 2).unfold(3, 3, 2).reshape(s, b * 16, 9)  # no gradient
    w = params["conv1.weight"].reshape(s, 16, 9).transpose(1, 2)
    h = torch.relu(torch.baddbmm(params["conv1.bias"].unsqueeze(1), images, w)).view(s, b, 256)  # (y, x, c)
    for name, size in (("conv2", 4), ("conv3", 2)):
        out = size // 2
        kernel = params[f"{name}.weight"].reshape(s, -1)
        matrix = torch.cat([kernel, kernel.new_zeros(s, 1)], 1)[:, _dense_index(size)]
        bias = params[f"{name}.bias"].repeat(1, out * out).unsqueeze(1)
        h = torch.relu(torch.baddbmm(bias, h, matrix.view(s, size * size * 16, out * out * 16)))
    return h.reshape(s, b, 16)


FORMULATIONS = {"grouped": grouped, "unfold": unfold, "taps": taps, "dense": dense}


def stacked_params(s: int, dtype, generator) -> dict:
    shapes = {"conv1.weight": (16, 1, 3, 3), "conv2.weight": (16, 16, 3, 3), "conv3.weight": (16, 16, 3, 3)}
    params = {}
    for name in KEYS:
        shape = shapes[f"{name}.weight"]
        fan_in = shape[1] * 9
        params[f"{name}.weight"] = torch.randn(s, *shape, dtype=dtype, generator=generator) / fan_in**0.5
        params[f"{name}.bias"] = 0.1 * torch.randn(s, 16, dtype=dtype, generator=generator)
    return params


def check(s: int, b: int) -> float:
    """The largest difference, over outputs and gradients, of each formulation from grouped (float64)."""
    g = torch.Generator().manual_seed(0)
    base = stacked_params(s, torch.float64, g)
    x = torch.randn(s, b, 8, 8, dtype=torch.float64, generator=g)
    results = {}
    for name, f in FORMULATIONS.items():
        params = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        out = f(params, x)
        out.square().sum().backward()
        results[name] = [out.detach()] + [params[k].grad for k in sorted(params)]
    worst = 0.0
    for name in ("unfold", "taps", "dense"):
        for a, c in zip(results["grouped"], results[name]):
            worst = max(worst, float((a - c).abs().max() / a.abs().max().clamp(min=1e-30)))
    if worst > 1e-10:
        raise SystemExit(f"formulations disagree: relative difference {worst:.2e}")
    return worst


def timed(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def timed_in_turn(fns: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each function, run in turn (one call of each per round), so that a change in the
    machine's load hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for k in range(repeat + 3):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            if k >= 3:
                samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=128, help="networks per block (S)")
    parser.add_argument("--batch", type=int, default=64, help="images per network per step (B)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s, b = args.block, args.batch
    worst = check(4, 8)
    print(f"float64 check: outputs and gradients of unfold, taps and dense within {worst:.1e} of grouped")

    g = torch.Generator().manual_seed(1)
    params = {k: v.requires_grad_(True) for k, v in stacked_params(s, torch.float32, g).items()}
    x = torch.randn(s, b, 8, 8, generator=g)
    steps = {name: (lambda f=f: f(params, x).square().sum().backward()) for name, f in FORMULATIONS.items()}
    rows = [(f"convs fwd+bwd, {name}", seconds) for name, seconds in timed_in_turn(steps, args.repeat).items()]

    from zoo_ingest.generators.batched import _dropout, _Net
    from zoo_ingest.generators.batched_optim import BatchedOptimizer
    from zoo_ingest.generators.classifier import OPTIMIZERS
    from zoo_ingest.generators.cnn import family

    nets = [_Net({"dropout": 0.25}, torch.Generator().manual_seed(k), torch.arange(1), [], torch.zeros(1))
            for k in range(s)]
    rows.append(("dropout draws (per-network generators)",
                 timed(lambda: _dropout(family("relu"), nets, [b] * s, b, torch.float32), args.repeat)))
    flat = torch.zeros(s, 4970, requires_grad=True)
    flat.grad = torch.randn(s, 4970)
    names = [OPTIMIZERS[3 * i // s] for i in range(s)]  # sorted by optimiser, a third each
    optimizer = BatchedOptimizer(flat, names, [1e-3] * s, [1e-4] * s)
    active = torch.ones(s, dtype=torch.bool)
    rows.append(("optimiser step", timed(lambda: optimizer.step(flat, active), args.repeat)))

    from zoo_ingest.generators.classifier import make_optimizer
    from zoo_ingest.generators.cnn import DigitsCNN

    model, generator = DigitsCNN("relu"), torch.Generator().manual_seed(2)
    single = make_optimizer("adam", model.parameters(), 1e-3, 1e-4)
    images, labels = torch.randn(b, 8, 8), torch.randint(0, 10, (b,))

    def one_step():
        loss = F.cross_entropy(model(images, dropout=0.25, generator=generator), labels)
        single.zero_grad(set_to_none=True)
        loss.backward()
        single.step()

    per_network = timed(one_step, args.repeat)
    base = rows[0][1]
    print(f"block of {s} networks, batch {b}, one thread; median of {args.repeat}")
    print(f"{'part':44s} {'ms':>8s} {'per network (us)':>17s} {'vs grouped':>11s}")
    for name, seconds in rows:
        print(f"{name:44s} {seconds * 1e3:8.2f} {seconds / s * 1e6:17.1f} {seconds / base:11.2f}")
    print(f"{'per-network path: one step of one network':44s} {per_network * 1e3:8.2f} {per_network * 1e6:17.1f}")
    step = base + rows[-2][1] + rows[-1][1]
    print(f"batched step (grouped convs + dropout + optimiser, a lower bound): {step / s * 1e6:.1f} us per "
          f"network; the per-network step is {per_network / (step / s):.1f}x that")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
