"""The paper-style comparison of metanetwork families: a Markdown table and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from eval.report import audit_cell
from training.metrics import prediction

BACKBONE = "monomial_nfn"


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """One row per family: metric without and under each group action, parameters, invariance error."""
    base = next((r["num_params"] for r in results.values() if r["model"] == BACKBONE), None)
    rows = []
    for label, r in results.items():
        metric = r["metric"]
        row = {"family": label, "model": r["model"], "params": r["num_params"],
               "increase": (r["num_params"] - base) / base if base else None,
               "clean": r["clean"][metric], "audit_max": r["audit"]["max"], "exact": r["invariance_exact"],
               "audit_claimed": r["audit"].get("claimed")}
        for cond, m in r["robustness"].items():
            row[cond] = m[metric]
        rows.append(row)
    return rows


def _f(v, pct=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 100:+.2f}%" if pct else f"{v:.3f}"


def markdown_table(results: dict[str, dict], title: str) -> str:
    rows = comparison_rows(results)
    if not rows:
        return f"# {title}\n\n(no results)\n"
    metric = next(iter(results.values()))["metric"]
    conds = [c for c in rows[0] if c.startswith(("U[", "signs", "permuted"))]
    head = ["family", f"{metric} (no action)", *conds, "parameters", f"vs {BACKBONE}", "invariance error (max)"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["family"], _f(r["clean"]), *[_f(r.get(c)) for c in conds], f"{r['params']:,}",
            _f(r["increase"], pct=True) if r["model"] != BACKBONE else "backbone",
            audit_cell(r["audit_max"], r["exact"], r["audit_claimed"]),
        ]) + " |")
    n = next(iter(results.values()))["n"]
    lines += ["", f"{n} test networks. Conditions replace every test network by a random member of its orbit "
              "(permutations, and positive scales U[1, 10^k] or random signs). The invariance error is the max "
              "over sampled group elements of |f(g.x) - f(x)|, in float64, on the network's whole group; for "
              "a model that claims only permutation invariance, the error on permutations follows it."]
    quasi = {r["family"]: r["clean"] for r in rows if r["model"] == "monomial_nfn_quasi"}
    large = [r["clean"] for r in rows if r["model"] == "monomial_nfn_large"]
    if quasi and large:
        verdicts = [f"{fam} {'beats' if v > large[0] else 'does not beat'} monomial_nfn_large "
                    f"({v:.3f} vs {large[0]:.3f})" for fam, v in quasi.items()]
        lines += ["", "On this zoo: " + "; ".join(verdicts) + "."]
    return "\n".join(lines) + "\n"


def plot_metric_vs_scale(results: dict[str, dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    metric = next(iter(results.values()))["metric"]
    for label, r in results.items():
        conds = ["no action"] + list(r["robustness"])
        values = [r["clean"][metric]] + [m[metric] for m in r["robustness"].values()]
        ax.plot(range(len(conds)), values, marker="o", label=f"{label} ({r['num_params']:,} params)")
    ax.set_xticks(range(len(conds)))
    ax.set_xticklabels(conds, rotation=20)
    ax.set_xlabel("group action applied to every test network")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_predictions(results: dict[str, dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    for ax, (label, r) in zip(axes.flat, results.items()):
        out = np.asarray(r["predictions"]["outputs"])
        y = np.asarray(r["predictions"]["targets"])
        pred = prediction("generalization", out, r.get("loss", "bce"))
        ax.scatter(y, pred, s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_title(f"{label}: tau = {r['clean'].get('kendall_tau', float('nan')):.3f}", fontsize=9)
        ax.set_xlabel("true test accuracy")
        ax.set_ylabel("predicted test accuracy")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
