"""Forward+backward throughput of every metanetwork on a batch of Small-CNN-Zoo weight spaces, and of the
transformer models on a batch of digits-transformer (2 encoder layers) weight spaces.

Prints networks/s per model and the time ratios quasi / backbone measured in the same run
(goal: monomial_nfn_quasi / monomial_nfn <= 1.15; transformer_nfn_quasi / transformer_nfn is reported).
With --compile, every model also runs compiled in place (torch.compile, inductor; what `model.compile:
true` does in training) and the table adds the compile time and the eager / compiled step-time ratio
(goal on CPU: monomial_nfn >= 2 at batch 64). Eager and compiled models take turns step by step.

    python bench/layers.py [--batch 64] [--repeats 20] [--threads N] [--only cnn|transformer]
                           [--models monomial_nfn,hnp] [--compile] [--compile-backend inductor]
                           [--device cpu|cuda] [--profile]

With --profile, each eager model's step is also profiled (torch.profiler, a few steps after the timing) and
the table is followed by its largest operators by self time and the share of matrix products (mm, bmm,
addmm, baddbmm, addbmm): the part a compiler cannot fuse away, which bounds what compiling can gain.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from metanets import NetworkSpec, TransformerSpec, TransformerWeightSpace, WeightSpace, build_model


def registered(kind: str) -> list[str]:
    """Every model of `kind` ("network" or "transformer") in the registry, the same list training offers."""
    from metanets.registry import KIND_OF, load_builders

    load_builders()
    return sorted(name for name, k in KIND_OF.items() if k == kind)


def small_cnn_state_dict(gen: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {
        "conv1.weight": (16, 1, 3, 3),
        "conv1.bias": (16,),
        "conv2.weight": (16, 16, 3, 3),
        "conv2.bias": (16,),
        "conv3.weight": (16, 16, 3, 3),
        "conv3.bias": (16,),
        "fc.weight": (10, 16),
        "fc.bias": (10,),
    }
    return {k: 0.3 * torch.randn(*s, generator=gen) for k, s in shapes.items()}


def digits_transformer_state_dict(gen: torch.Generator, num_layers: int = 2) -> dict[str, torch.Tensor]:
    """Random weights with the digits-transformer zoo's keys and shapes (docs/zoos.md)."""
    shapes = {"position_embedding": (8, 16), "embedding.weight": (16, 8), "embedding.bias": (16,)}
    for l in range(num_layers):
        p = f"layers.{l}"
        shapes.update({f"{p}.norm1.weight": (16,), f"{p}.norm1.bias": (16,)})
        shapes.update({f"{p}.attn.{m}.weight": (16, 16) for m in ("queries", "keys", "values", "out_projection")})
        shapes.update(
            {
                f"{p}.norm2.weight": (16,),
                f"{p}.norm2.bias": (16,),
                f"{p}.fc1.weight": (32, 16),
                f"{p}.fc1.bias": (32,),
                f"{p}.fc2.weight": (16, 32),
                f"{p}.fc2.bias": (16,),
            }
        )
    shapes.update({"norm.weight": (16,), "norm.bias": (16,), "classifier.weight": (10, 16), "classifier.bias": (10,)})
    return {k: 0.3 * torch.randn(*s, generator=gen) for k, s in shapes.items()}


def _sync(ws) -> None:
    if ws.device.type == "cuda":
        torch.cuda.synchronize()


def time_models(models: dict[str, nn.Module], ws, repeats: int) -> dict[str, float]:
    """Median seconds of one forward+backward pass per model. The models take turns step by step, so a
    change in the machine's load (other jobs) hits every model alike and the ratios stay meaningful."""
    opts = {name: torch.optim.SGD(model.parameters(), lr=0.0) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for k in range(repeats + 3):
        for name, model in models.items():
            _sync(ws)
            t0 = time.perf_counter()
            opts[name].zero_grad(set_to_none=True)
            model(ws).square().mean().backward()
            _sync(ws)
            if k >= 3:  # warm-up (the first pass of a compiled model compiles it; timed separately)
                times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def compile_models(models: dict[str, nn.Module], ws, backend: str = "inductor"):
    """A copy of every model compiled in place, and the seconds its first forward+backward took."""
    compiled, seconds = {}, {}
    for name, model in models.items():
        m = copy.deepcopy(model)
        m.compile(backend=backend)
        _sync(ws)
        t0 = time.perf_counter()
        m(ws).square().mean().backward()
        _sync(ws)
        compiled[name], seconds[name] = m, time.perf_counter() - t0
        print(f"compiled {name} in {seconds[name]:.1f} s", flush=True)
    return compiled, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=["cnn", "transformer"], default=None)
    parser.add_argument("--models", default=None, help="comma-separated subset of the models")
    parser.add_argument("--compile", action="store_true", help="also time every model compiled in place")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="also print each model's largest operators")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep = set(args.models.split(",")) if args.models else None
    device = torch.device(args.device)
    if args.only in (None, "cnn"):
        gen = torch.Generator().manual_seed(0)
        sds = [small_cnn_state_dict(gen) for _ in range(args.batch)]
        spec = NetworkSpec.from_state_dict(sds[0], activation="relu")
        ws = WeightSpace.from_state_dicts(sds, spec).to(device)
        report("Small-CNN-Zoo", ws, _subset(registered("network"), keep), "monomial_nfn", args)
    if args.only in (None, "transformer"):
        gen = torch.Generator().manual_seed(0)
        sds = [digits_transformer_state_dict(gen) for _ in range(args.batch)]
        spec = TransformerSpec.from_state_dict(sds[0], activation="relu", num_heads=2)
        ws = TransformerWeightSpace.from_state_dicts(sds, spec).to(device)
        report("digits-transformer (2 layers)", ws, _subset(registered("transformer"), keep), "transformer_nfn",
               args)


def _subset(families: list[str], keep: set[str] | None) -> list[str]:
    return [f for f in families if keep is None or f in keep]


MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm")


def operator_profile(name: str, model: nn.Module, ws, steps: int = 5, top: int = 6) -> str:
    """One line per model: the share of self time of its largest operators over `steps` forward+backward
    passes, and the share of all matrix products."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ws.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            model.zero_grad(set_to_none=True)
            model(ws).square().mean().backward()
            _sync(ws)
    attr = "self_device_time_total" if ws.device.type == "cuda" else "self_cpu_time_total"
    ops = [(e.key, getattr(e, attr)) for e in prof.key_averages()]
    total = sum(t for _, t in ops) or 1.0
    ops.sort(key=lambda kv: -kv[1])
    matmul = sum(t for k, t in ops if k in MATMULS) / total
    largest = ", ".join(f"{k.removeprefix('aten::')} {t / total:.0%}" for k, t in ops[:top])
    return f"profile {name}: matrix products {matmul:.0%} of self time; largest: {largest}"


def report(what: str, ws, families: list[str], baseline: str, args) -> None:
    if not families:
        return
    models = {}
    for name in families:
        torch.manual_seed(0)
        try:
            models[name] = build_model(name, ws.spec).to(ws.device)
        except ValueError as exc:  # a model for another activation (e.g. the sine-only ones)
            print(f"skipped {name}: {exc}")
    families = [name for name in families if name in models]
    compiled, compile_s = compile_models(models, ws, args.compile_backend) if args.compile else ({}, {})
    times = time_models(models | {f"{name} (compiled)": m for name, m in compiled.items()}, ws, args.repeats)
    ref = times.get(baseline)
    print(f"batch {args.batch} {what} weight spaces on {ws.device.type}, {torch.get_num_threads()} threads, "
          "forward+backward")
    header = f"{'model':<22}{'params':>10}{'ms/step':>10}{'nets/s':>10}{'time / ' + baseline:>26}"
    if compiled:
        header += f"{'compile s':>11}{'compiled ms':>13}{'eager / compiled':>18}"
    print(header)
    for name in families:
        sec = times[name]
        row = f"{name:<22}{models[name].num_params:>10}{sec * 1e3:>10.2f}{args.batch / sec:>10.0f}"
        row += f"{sec / ref:>26.3f}" if ref else f"{'-':>26}"
        if compiled:
            csec = times[f"{name} (compiled)"]
            row += f"{compile_s[name]:>11.1f}{csec * 1e3:>13.2f}{sec / csec:>18.2f}"
        print(row)
    if args.profile:
        for name in families:
            print(operator_profile(name, models[name], ws))
    quasi = baseline + "_quasi"
    if ref and quasi in times:
        goal = " (goal <= 1.15)" if baseline == "monomial_nfn" else ""
        print(f"quasi / backbone time ratio ({quasi} / {baseline}): {times[quasi] / ref:.3f}{goal}")
    if compiled and baseline in compiled:
        goal = " (goal >= 2 on CPU at batch 64)" if baseline == "monomial_nfn" else ""
        print(f"compiled speed-up of {baseline} (eager / compiled step time): "
              f"{times[baseline] / times[baseline + ' (compiled)']:.2f}{goal}")
    print()


if __name__ == "__main__":
    main()
