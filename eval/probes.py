"""Probes for an INR table: what simple readers of the weights reach, to bound what a metanetwork can.

`python -m eval.probes TABLE [--omega-0 30] [--seed 0] [--max-train N]` fits, on the table's train
split, and scores on its test split (accuracy of the label):
- `flat weights, LR`: every parameter, standardised, into a logistic regression;
- `weight statistics, GBT`: the 7 statistics of every tensor (STATNet's input) into gradient-boosted trees;
- `sine-invariant features, GBT`: features invariant to the whole discrete group of sine networks
  (permutations, signs, pi phase shifts; see `invariant_features`) into gradient-boosted trees;
- `rendered pixels, LR`: the INR rendered on its 8x8 grid (the function itself), into a logistic regression.
Under two conditions: `no action`, and `orbit`, where every INR (train and test) is first moved to a random
member of its orbit (`metanets.sine.random_orbit_member`). A probe that reads the function or exact
invariants scores the same under both; a flat reader falls to chance under `orbit`.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from metanets import WeightSpace
from metanets.layers.stats import weight_stats
from metanets.sine import DIGITS_SIREN_OMEGA_0, random_orbit_member, sine_invariant_stats

PROBES = ("flat weights, LR", "weight statistics, GBT", "sine-invariant features, GBT", "rendered pixels, LR")
CONDITIONS = ("no action", "orbit")


def load_split(table, split: str, limit: int | None = None, filter=None) -> tuple[WeightSpace, np.ndarray]:
    """All labelled networks of `split` as one float64 WeightSpace, and their labels `(N,)`; `filter`: a
    pyarrow expression the rows must also match (e.g. `inr_subset`)."""
    parts, labels, seen = [], [], 0
    for ws, t in table.batches(512, split=split, where={"label": (0, None)}, filter=filter, targets=[]):
        parts.append(ws.double())
        labels.append(t["label"].numpy())
        seen += ws.batch_size
        if limit is not None and seen >= limit:
            break
    if not parts:
        raise ValueError(f"split {split!r} of {table.uri} has no labelled networks")
    spec = parts[0].spec
    ws = WeightSpace(spec, tuple(torch.cat([p.weights[i] for p in parts]) for i in range(spec.num_layers)),
                     tuple(torch.cat([p.biases[i] for p in parts]) for i in range(spec.num_layers)))
    if limit is not None:
        ws = ws[:limit]
    return ws, np.concatenate(labels)[: ws.batch_size]


def inr_subset(table, split: str, max_copies: int | None = None, max_images: int | None = None):
    """A filter keeping the INRs of `split` whose copy (`hparam.copy`) is below `max_copies` and whose source
    image is among the split's first `max_images` images (ordered by `hparam.image_index`), as a pyarrow
    expression on `model_id`; None when neither bound is given. The subsets are nested: a smaller bound keeps
    a subset of a larger one, so a learning curve grows one set of INRs."""
    import json

    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if max_copies is None and max_images is None:
        return None
    for name, value in (("max_copies", max_copies), ("max_images", max_images)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    afs, root = table.location.arrow()
    rows = ds.dataset(table.files(split), filesystem=afs, format="parquet").to_table(
        columns=["model_id", "hparams"]).to_pylist()
    parsed = []
    for row in rows:
        h = json.loads(row["hparams"] or "{}")
        if "copy" not in h or "image_index" not in h:
            raise ValueError(f"{table.uri}: row {row['model_id']} has no hparam.copy/hparam.image_index "
                             "(not a digits-siren table?)")
        parsed.append((row["model_id"], int(h["copy"]), int(h["image_index"])))
    images = sorted({image for _, _, image in parsed})
    kept_images = set(images if max_images is None else images[:max_images])
    keep = [m for m, copy, image in parsed
            if (max_copies is None or copy < max_copies) and image in kept_images]
    return pc.field("model_id").isin(keep)


def flat(ws: WeightSpace) -> np.ndarray:
    return torch.cat([t[:, 0].flatten(1) for t in ws.weights + ws.biases], dim=1).numpy()


def invariant_features(ws: WeightSpace, omega_0: float) -> np.ndarray:
    """Per-network features invariant to permutations, signs and pi phase shifts of a sine MLP `(N, F)`
    (`metanets.sine.sine_invariant_stats`, the input of the `statnet_sine` model)."""
    return sine_invariant_stats(ws, omega_0).numpy()


def render(ws: WeightSpace, omega_0: float, size: int = 8) -> np.ndarray:
    """The INRs evaluated on the `size` x `size` pixel grid in [-1, 1]^2 `(N, size^2)` (sine MLPs)."""
    axis = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    x = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).expand(ws.batch_size, -1, -1)
    L = ws.spec.num_layers
    for i in range(L):
        x = x @ ws.weights[i][:, 0].transpose(1, 2) + ws.biases[i][:, 0, None, :]
        if i < L - 1:
            x = torch.sin(omega_0 * x)
    return x.squeeze(-1).numpy()


def _fit_score(kind: str, train: np.ndarray, y_train, test: np.ndarray, y_test, seed: int) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "lr":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0))
    else:
        model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    model.fit(train, y_train)
    return float(np.mean(model.predict(test) == y_test))


def run_probes(table_uri: str, omega_0: float = DIGITS_SIREN_OMEGA_0, seed: int = 0,
               max_train: int | None = None, probes=PROBES, conditions=CONDITIONS, log=None
               ) -> dict[str, dict[str, float]]:
    """{condition: {probe: test accuracy}} on the table at `table_uri` (see the module docstring).

    `log(condition, probe, accuracy)` is called as each result comes (the CLI prints it).
    """
    from zoo_ingest import open_table

    table = open_table(table_uri)
    train, y_train = load_split(table, "train", max_train)
    test, y_test = load_split(table, "test")
    if train.spec.activation != "sine":
        raise ValueError(f"{table_uri}: probes need sine networks (INRs), the table holds {train.spec.activation}")
    readers = {
        "flat weights, LR": ("lr", flat),
        "weight statistics, GBT": ("gbt", lambda ws: weight_stats(ws).numpy()),
        "sine-invariant features, GBT": ("gbt", lambda ws: invariant_features(ws, omega_0)),
        "rendered pixels, LR": ("lr", lambda ws: render(ws, omega_0)),
    }
    results: dict[str, dict[str, float]] = {}
    for condition in conditions:
        a, b = train, test
        if condition == "orbit":
            gen = torch.Generator().manual_seed(seed)
            a, b = random_orbit_member(train, omega_0, gen), random_orbit_member(test, omega_0, gen)
        elif condition != "no action":
            raise ValueError(f"unknown condition {condition!r}; choose from {CONDITIONS}")
        results[condition] = {}
        for probe in probes:
            kind, read = readers[probe]
            results[condition][probe] = _fit_score(kind, read(a), y_train, read(b), y_test, seed)
            if log is not None:
                log(condition, probe, results[condition][probe])
    return results


def format_results(results: dict[str, dict[str, float]], n_train: int | None = None) -> str:
    probes = list(next(iter(results.values())))
    width = max(len(p) for p in probes)
    lines = [f"{'probe':<{width}}  " + "  ".join(f"{c:>9}" for c in results)]
    for p in probes:
        lines.append(f"{p:<{width}}  " + "  ".join(f"{results[c][p]:>9.3f}" for c in results))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.probes", description=__doc__.splitlines()[0])
    parser.add_argument("table", help="weight table of sine INRs with labels")
    parser.add_argument("--omega-0", type=float, default=DIGITS_SIREN_OMEGA_0, help="the INRs' frequency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=None, help="use at most this many train INRs")
    args = parser.parse_args(argv)
    if not math.isfinite(args.omega_0) or args.omega_0 <= 0:
        parser.error(f"--omega-0 must be a positive number, got {args.omega_0}")
    try:
        results = run_probes(args.table, args.omega_0, args.seed, args.max_train,
                             log=lambda c, p, v: print(f"  {c}: {p} {v:.3f}", flush=True))
    except ValueError as exc:
        print(f"probes: error: {exc}", file=sys.stderr)
        return 2
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
