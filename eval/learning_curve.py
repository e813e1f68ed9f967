"""The learning curve: the test metric against the number of training networks.

A benchmark whose families set `train.data.train_networks` (a fixed, nested subset of the training
networks; validation and test splits unchanged) is a learning curve. Families are grouped into curves by
the part of their label before `@` (label them `monomial_nfn@800`, `monomial_nfn@2400`, ...), or by their
model when the label has no `@`. Each point is the benchmark's statistic over seeds for that family: mean
and 95% Student-t interval (a single seed has no interval), with the seeds' values as dots.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from eval.benchmark_report import CLEAN, _num
from eval.stats import summarize


def sized_families(families) -> list[dict]:
    """[{label, model, curve, train_networks}] for the families that set `train.data.train_networks`."""
    out = []
    for f in families:
        n = ((f.train or {}).get("data") or {}).get("train_networks")
        if n is not None:
            out.append({"label": f.label, "model": f.model, "curve": f.label.split("@")[0] if "@" in f.label
                        else f.model, "train_networks": int(n)})
    return out


def curves(summary: dict, sized: list[dict], condition: str = CLEAN) -> dict[str, list[dict]]:
    """{curve: [point, ...] by increasing size}; a point: train_networks, label, n (seeds), mean, std, lo,
    hi, values ({seed: metric}), epochs_run, wall_s (mean). Families without a completed trial are left out."""
    out: dict[str, list[dict]] = {}
    for f in sized:
        stats = summary["stats"].get(f["label"], {}).get(condition)
        if not stats or not stats.get("n"):
            continue
        info = summary["info"].get(f["label"], {})
        out.setdefault(f["curve"], []).append({
            "train_networks": f["train_networks"], "label": f["label"], **stats,
            "values": summary["values"][f["label"]].get(condition, {}),
            "epochs_run": info.get("epochs_run"), "wall_s": (info.get("wall_s") or {}).get("mean"),
        })
    for points in out.values():
        points.sort(key=lambda p: p["train_networks"])
    return out


def markdown(curves_: dict[str, list[dict]], metric: str, condition: str = CLEAN) -> str:
    sizes = sorted({p["train_networks"] for ps in curves_.values() for p in ps})
    head = "| curve | " + " | ".join(f"{n:,} training networks" for n in sizes) + " |"
    lines = [f"Test {metric.replace('_', ' ')} ({condition}) against the number of training networks: "
             "mean [95% interval] over seeds (seeds in parentheses).", "", head,
             "|---|" + "---|" * len(sizes)]
    for name, points in curves_.items():
        by_size = {p["train_networks"]: p for p in points}
        cells = []
        for n in sizes:
            p = by_size.get(n)
            if p is None:
                cells.append("not run")
            elif p["n"] > 1:
                cells.append(f"{p['mean']:.3f} [{_num(p['lo'])}, {_num(p['hi'])}] ({p['n']})")
            else:
                cells.append(f"{p['mean']:.3f} (1)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(curves_: dict[str, list[dict]], metric: str, path: Path, title: str, condition: str = CLEAN) -> Path:
    """One line per curve on a log x axis, error bars = the 95% interval, dots = single seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves_.items():
        xs = [p["train_networks"] for p in points]
        means = [p["mean"] for p in points]
        err = [[p["mean"] - p["lo"] if math.isfinite(p["lo"]) else 0 for p in points],
               [p["hi"] - p["mean"] if math.isfinite(p["hi"]) else 0 for p in points]]
        line = ax.errorbar(xs, means, yerr=err, fmt="o-", capsize=3, lw=1.2, ms=5, label=name)
        for p in points:
            ax.scatter([p["train_networks"]] * len(p["values"]), list(p["values"].values()), s=10, alpha=0.5,
                       color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("training networks (all their checkpoints); validation and test splits fixed")
    ax.set_ylabel(f"test {metric.replace('_', ' ')} ({condition})")
    ax.set_title(textwrap.fill(title, 80) + "\nmean and 95% interval over seeds; dots: single seeds", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def merge(*curve_sets: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Curves of several benchmarks (their learning_curve.json) as one: points of a curve are pooled and
    sorted by size; two benchmarks measuring the same curve at the same size is refused."""
    out: dict[str, list[dict]] = {}
    for curves_ in curve_sets:
        for name, points in curves_.items():
            have = {p["train_networks"] for p in out.get(name, [])}
            clash = sorted(have & {p["train_networks"] for p in points})
            if clash:
                raise ValueError(f"curve {name!r} has two points at {clash[0]:,} training networks")
            out.setdefault(name, []).extend(points)
    for points in out.values():
        points.sort(key=lambda p: p["train_networks"])
    return out


def point_from_eval(label: str, result: dict, seed: int = 0) -> tuple[str, dict]:
    """(curve, point) for one `metazoo eval` result (its --json file) of a model trained on `label`'s
    networks (`curve@N`) with training seed `seed`: a single-seed point, e.g. a model of a bigger zoo scored
    on a smaller zoo's test split so that every point of the curve shares one test set."""
    curve, sep, size = label.partition("@")
    if not sep or not size.isdigit():
        raise ValueError(f"label {label!r}: name the point as curve@training_networks, e.g. statnet@24000")
    value = float(result["clean"][result["metric"]])
    return curve, {"train_networks": int(size), "label": label, "n": 1, "mean": value, "std": math.nan,
                   "lo": math.nan, "hi": math.nan, "values": {str(seed): value}, "epochs_run": None,
                   "wall_s": None, "table": result.get("table"), "split": result.get("split")}


def pool_seeds(points: list[dict]) -> dict:
    """One point from single-seed points of the same label (`point_from_eval` of each seed's model): mean
    and 95% interval over the seeds, as the benchmark's points. Two results for one seed are refused, and
    so are results scored on different tables or splits."""
    values: dict[str, float] = {}
    for p in points:
        for seed, value in p["values"].items():
            if seed in values:
                raise ValueError(f"{p['label']}: two results for seed {seed}")
            values[seed] = value
    where = {(p.get("table"), p.get("split")) for p in points}
    if len(where) > 1:
        raise ValueError(f"{points[0]['label']}: the seeds' results were scored on different data: {sorted(where)}")
    values = dict(sorted(values.items(), key=lambda kv: int(kv[0])))
    return {**points[0], **summarize(list(values.values())), "values": values}


def main(argv: list[str] | None = None) -> int:
    """Draw one learning curve from several benchmarks' learning_curve.json files and `metazoo eval`
    results: python -m eval.learning_curve OUT.png CURVES.json ... [--eval curve@N[:seed]=eval.json ...]."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m eval.learning_curve", description=main.__doc__)
    parser.add_argument("out", type=Path, help="the plot (PNG); the table is printed")
    parser.add_argument("curves", nargs="*", type=Path, help="learning_curve.json files of benchmark reports")
    parser.add_argument("--eval", action="append", default=[], metavar="CURVE@N[:SEED]=EVAL.json",
                        help="a point from a `metazoo eval --json` file of the model trained with SEED (default "
                             "0); results of several seeds for one CURVE@N make one point over the seeds")
    parser.add_argument("--metric", default="kendall_tau")
    parser.add_argument("--title", default="learning curve")
    args = parser.parse_args(argv)
    sets = []
    for path in args.curves:
        try:
            sets.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read curves {path}: {exc}")
    evals: dict[str, list[tuple[str, dict]]] = {}
    for item in args.eval:
        spec, sep, path = item.partition("=")
        label, colon, seed = spec.partition(":")
        if not sep or (colon and not seed.isdigit()):
            parser.error(f"--eval {item!r}: write it as curve@N=path/to/eval.json or curve@N:seed=path/to/eval.json")
        try:
            evals.setdefault(label, []).append(
                point_from_eval(label, json.loads(Path(path).read_text()), int(seed) if colon else 0))
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"--eval {item!r}: {exc}")
    for label, found in evals.items():
        try:
            sets.append({found[0][0]: [pool_seeds([point for _, point in found])]})
        except ValueError as exc:
            parser.error(f"--eval {label}: {exc}")
    try:
        merged = merge(*sets)
    except ValueError as exc:
        parser.error(str(exc))
    print(markdown(merged, args.metric), end="")
    print(f"plot: {plot(merged, args.metric, args.out, args.title)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
