"""INR classification on one machine, without Ray: families x seeds, scored under "no action" and the orbit.

A quick way to compare metanetwork families on a digits-siren table when a Ray/DeepSpeed run
(`metazoo train`) is not wanted: the same models (`metanets.build_model`), the same training augmentation
(random permutations and signs, with `--phase` random pi phase shifts, and DWSNets' INR
augmentations `--translate`, `--rotate`, `--scale`, `--weight-dropout`: `training.augment`), plain Adam with a cosine
schedule on this process's CPU, then `eval.evaluate.evaluate` (conditions: no action, permuted, signs,
orbit = permutations x signs x pi phase shifts). Prints test accuracy per condition, and mean and spread
over seeds per family.

    python bench/inr_classify.py TABLE [--families monomial_nfn_phase,monomial_nfn] [--seeds 0,1,2]
                                 [--epochs 10] [--batch 32] [--lr 1e-3] [--phase]
                                 [--kwargs '{"standardize": true}'] [--translate 0.05] [--weight-dropout 0.05]
                                 [--max-copies C] [--max-images M]

`--max-copies` / `--max-images` train on nested subsets of a `--copies` zoo (copies 0..C-1 of the first M
training images, `eval.probes.inr_subset`) for learning curves; the test split stays whole.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from eval.evaluate import evaluate
from eval.probes import inr_subset, load_split
from eval.stats import summarize
from metanets import build_model, sine
from metanets.weight_space import WeightSpace
from training.augment import augment
from training.batchnorm import BatchReservoir, recompute_batchnorm
from training.config import AugmentConfig


def train_one(family: str, train: WeightSpace, y: np.ndarray, seed: int, epochs: int, batch: int, lr: float,
              phase: bool, omega_0: float, kwargs: dict | None = None, aug: dict | None = None,
              bn_rows: int = 1024) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(family, train.spec, out_dim=10, **(kwargs or {}))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(train.batch_size / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(y)
    cfg = AugmentConfig(enabled=True, permute=True, signs=True, phase=phase, omega_0=omega_0, **(aug or {}))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(train.batch_size, generator=gen).split(batch):
            ws = augment(train[idx], cfg, gen)  # the train loop's augmentation (training.augment)
            loss = torch.nn.functional.cross_entropy(model(ws.float()), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"    {family} seed {seed}: epoch {epoch + 1}/{epochs} loss {loss.item():.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    # as the training worker does before validating (training/batchnorm.py): BatchNorm statistics of the
    # first `bn_rows` training rows (augmented, as trained) under the final weights
    reservoir, gen = BatchReservoir(bn_rows), torch.Generator().manual_seed(seed + 1)
    for start in range(0, min(bn_rows, train.batch_size), batch):
        reservoir.offer(augment(train[start:start + batch], cfg, gen).float())
    recompute_batchnorm(model, reservoir.batches)
    return model.eval()


def _summary(condition: str, values: list[float]) -> str:
    """'orbit 0.768 (std 0.007, 95% t [0.759, 0.777])'; the std (ddof 1) and interval need two seeds."""
    s = summarize(values)
    if len(values) < 2:
        return f"{condition} {s['mean']:.3f}"
    return f"{condition} {s['mean']:.3f} (std {s['std']:.3f}, 95% t [{s['lo']:.3f}, {s['hi']:.3f}])"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table")
    parser.add_argument("--families", default="monomial_nfn_phase,monomial_nfn,hnp,np,statnet")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--phase", action="store_true", help="also augment with random pi phase shifts")
    parser.add_argument("--omega-0", type=float, default=sine.DIGITS_SIREN_OMEGA_0)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-copies", type=int, default=None,
                        help="train on copies 0..C-1 of each image only (learning curves on --copies zoos)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="train on the first M training images only (by image index), all their copies")
    parser.add_argument("--translate", type=float, default=0.0, help="augment.inr_translate (DWSNets)")
    parser.add_argument("--rotate", type=float, default=0.0, help="augment.inr_rotate_degrees")
    parser.add_argument("--scale", type=float, default=0.0, help="augment.inr_scale")
    parser.add_argument("--weight-dropout", type=float, default=0.0, help="augment.weight_dropout")
    parser.add_argument("--bn-rows", type=int, default=1024,
                        help="BatchNorm statistics recomputed over this many training rows (model.bn_recompute_rows)")
    parser.add_argument("--kwargs", default="{}", help='builder kwargs as JSON, e.g. \'{"standardize": true}\'')
    args = parser.parse_args(argv)
    from zoo_ingest import open_table

    table = open_table(args.table)
    subset = inr_subset(table, "train", args.max_copies, args.max_images)
    train, y_train = load_split(table, "train", args.max_train, filter=subset)
    test, y_test = load_split(table, "test")
    card = {"task": "inr_classification", "loss": "ce", "omega_0": args.omega_0}
    seeds = [int(s) for s in args.seeds.split(",")]
    aug = {"inr_translate": args.translate, "inr_rotate_degrees": args.rotate, "inr_scale": args.scale,
           "weight_dropout": args.weight_dropout}
    print(f"{args.table}: {train.batch_size} train, {test.batch_size} test INRs; epochs {args.epochs}, "
          f"batch {args.batch}, lr {args.lr}, phase augmentation {args.phase}; kwargs {args.kwargs}; "
          f"INR augmentations {aug}; seeds {seeds}; train subset: max copies {args.max_copies}, "
          f"max images {args.max_images}")
    for family in args.families.split(","):
        scores: dict[str, list[float]] = {}
        for seed in seeds:
            model = train_one(family, train, y_train, seed, args.epochs, args.batch, args.lr, args.phase,
                              args.omega_0, json.loads(args.kwargs), aug, args.bn_rows)
            card["model"] = family

            def batches():
                for start in range(0, test.batch_size, 128):
                    yield test[start:start + 128], torch.as_tensor(y_test[start:start + 128])

            result = evaluate(model, card, batches, audit_samples=1, audit_max_networks=64, seed=seed)
            row = {"no action": result["clean"]["accuracy"]}
            row.update({c: m["accuracy"] for c, m in result["robustness"].items()})
            print(f"  {family} seed {seed}: " + "  ".join(f"{c} {v:.3f}" for c, v in row.items()), flush=True)
            for c, v in row.items():
                scores.setdefault(c, []).append(v)
        print(f"{family} over seeds {seeds}: " + "  ".join(_summary(c, v) for c, v in scores.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
