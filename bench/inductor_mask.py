"""What a ReLU costs under TorchInductor when its backward mask is kept, against eager.

The kernel that writes the ReLU and its boolean mask (what AOTAutograd saves for `threshold_backward`)
against the same kernel writing the mask as floats, and against eager, on one activation of the
monomial_nfn step's size (64 x 16 x 16 x 144).

    python bench/inductor_mask.py [--rows 16384] [--cols 144] [--threads 1] [--repeats 20] [--device cpu|cuda]

Every variant runs in the same process; the table prints medians and the ratio to the eager ReLU + mask.
The metanetworks no longer form this mask when compiled on CPU: their ReLU
(`metanets.layers.common.relu`) has a backward operator that reads the saved float output instead.
"""

from __future__ import annotations

import argparse
import time

import torch


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--cols", type=int, default=144)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.randn(args.rows, args.cols, device=device)

    def relu_bool_mask(t):
        return torch.relu(t), t <= 0

    def relu_float_mask(t):
        return torch.relu(t), (t <= 0).to(t.dtype)

    def relu_only(t):
        return torch.relu(t)

    variants = {
        "eager relu + bool mask": relu_bool_mask,
        "compiled relu + bool mask": torch.compile(relu_bool_mask),
        "compiled relu + float mask": torch.compile(relu_float_mask),
        "compiled relu alone": torch.compile(relu_only),
    }
    for fn in variants.values():  # compile everything first
        fn(x)
    print(f"{args.rows} x {args.cols} float32 on {device}, {args.threads} thread(s), medians of {args.repeats}")
    times = {}
    for _ in range(2):  # two rounds, the later one reported, so a load change shows as a difference
        times = {name: _median_ms(lambda fn=fn: fn(x), args.repeats, device) for name, fn in variants.items()}
    base = times["eager relu + bool mask"]
    print(f"{'variant':<30}{'ms':>10}{'/ eager':>10}")
    for name, ms in times.items():
        print(f"{name:<30}{ms:>10.2f}{ms / base:>10.2f}")


if __name__ == "__main__":
    main()
