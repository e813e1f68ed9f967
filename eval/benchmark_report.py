"""The benchmark's summary over seeds: statistics per family and condition, paired differences against
the backbone and the large backbone, and the tables and plots that present them.

Input: one record per trial (`cluster.benchmark` writes them), a dict with `family`, `model`, `seed`,
`status` ("ok" or "failed"), and for completed trials `result` (an `eval.evaluate` result),
`wall_s`, `epochs_run`; failed ones carry `error`.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from eval.report import audit_cell
from eval.stats import LEVEL, NO_DIFFERENCE, overlap, paired, summarize

REFERENCES = ("monomial_nfn", "monomial_nfn_large")  # paired differences are taken against these models
CLEAN = "no action"


def _reference_label(families: list[dict], model: str) -> str | None:
    """The family that stands for `model`: the one labelled so, else the first using that model."""
    if any(f["label"] == model for f in families):
        return model
    return next((f["label"] for f in families if f["model"] == model), None)


def _reference_pairs(families: list[dict], model: str) -> dict[str, list[str]]:
    """{reference label: [labels paired against it]} for one reference model. A family of a learning curve
    (label `name@N`) is paired with the reference model's family of the same size (`...@N`), when there is
    one; any other family with `_reference_label`'s."""
    out: dict[str, list[str]] = {}
    ref = _reference_label(families, model)
    sized = {f["label"].rpartition("@")[2]: f["label"] for f in families
             if f["model"] == model and "@" in f["label"]}
    for f in families:
        size = f["label"].rpartition("@")[2] if "@" in f["label"] else None
        mine = sized.get(size) if size is not None else ref
        if mine is not None and mine != f["label"]:
            out.setdefault(mine, []).append(f["label"])
    return out


def per_seed(records: list[dict]) -> dict[str, dict[str, dict[int, float]]]:
    """{family: {condition: {seed: test metric}}} over completed trials (CLEAN = no group action)."""
    out: dict = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        res = r["result"]
        metric = res["metric"]
        conds = out.setdefault(r["family"], {})
        conds.setdefault(CLEAN, {})[r["seed"]] = res["clean"][metric]
        for cond, m in res["robustness"].items():
            conds.setdefault(cond, {})[r["seed"]] = m[metric]
    return out


def summarize_benchmark(records: list[dict], families: list[dict], seeds: list[int]) -> dict:
    """Everything the report shows, JSON-serialisable. `families`: [{label, model}] in config order."""
    ok = [r for r in records if r.get("status") == "ok"]
    values = per_seed(records)
    metric = ok[0]["result"]["metric"] if ok else None
    conditions = [CLEAN] + ([c for c in ok[0]["result"]["robustness"]] if ok else [])
    stats = {f: {c: summarize(list(v.get(c, {}).values())) for c in conditions} for f, v in values.items()}
    # {model: the families that others are paired against}: one, or one per size for a learning curve
    refs = {}
    for model in REFERENCES:
        used = list(_reference_pairs(families, model)) or [_reference_label(families, model)]
        if used != [None]:
            refs[model] = used
    diffs: dict = {}
    for model in REFERENCES:
        for ref, labels in _reference_pairs(families, model).items():
            if ref not in values:
                continue
            rows = {label: {c: paired(values[label].get(c, {}), values[ref].get(c, {})) for c in conditions}
                    for label in labels if label in values}
            if rows:
                diffs[ref] = rows
    info = {}
    for f in families:
        mine = [r for r in ok if r["family"] == f["label"]]
        info[f["label"]] = {
            "model": f["model"], "seeds_ok": sorted(r["seed"] for r in mine),
            "seeds_failed": sorted(r["seed"] for r in records if r["family"] == f["label"] and r.get("status") != "ok"),
            "num_params": mine[0]["result"]["num_params"] if mine else None,
            "audit_max": max((r["result"]["audit"]["max"] for r in mine), default=None),
            "audit_claimed": _claimed_audit(mine),
            "exact": mine[0]["result"].get("invariance_exact") if mine else None,
            "wall_s": summarize([r["wall_s"] for r in mine]),
            "wall_s_max": max((r["wall_s"] for r in mine), default=None),
            "epochs_run": [r.get("epochs_run") for r in sorted(mine, key=lambda r: r["seed"])],
        }
    failures = [{"family": r["family"], "seed": r["seed"], "error": r.get("error", "")}
                for r in records if r.get("status") != "ok"]
    n_test = ok[0]["result"]["n"] if ok else None
    return {"metric": metric, "level": LEVEL, "seeds": list(seeds), "conditions": conditions,
            "families": [f["label"] for f in families], "n_test": n_test, "stats": stats,
            "references": refs, "paired": diffs, "info": info,
            "values": values, "failures": failures}


def _num(v, fmt="{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _interval(s: dict, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if not math.isfinite(s["lo"]):
        return f"{_num(s['mean'], f)} (n={s['n']}, no interval)"
    return f"{_num(s['mean'], f)} [{_num(s['lo'], f)}, {_num(s['hi'], f)}]"


def markdown(summary: dict, title: str) -> str:
    """The report: results per family and condition, paired differences, what is and is not established."""
    metric, conds, pct = summary["metric"], summary["conditions"], int(summary["level"] * 100)
    lines = [f"# {title}", ""]
    if metric is None:
        return "\n".join(lines + ["No trial completed.", *_failures(summary)]) + "\n"
    lines += [f"Test {metric} over seeds {summary['seeds']} ({summary['n_test']} test networks): mean and "
              f"{pct}% Student-t interval over the seeds. Families are listed in config order, not ranked.", "",
              "| family | " + " | ".join(conds) + f" | std ({CLEAN}) | seeds |",
              "|---|" + "---|" * (len(conds) + 2)]
    for fam in summary["families"]:
        st = summary["stats"].get(fam)
        if st is None:
            lines.append(f"| {fam} | " + " | ".join("-" for _ in conds) + " | - | 0 |")
            continue
        lines.append(f"| {fam} | " + " | ".join(_interval(st[c]) for c in conds)
                     + f" | {_num(st[CLEAN]['std'])} | {st[CLEAN]['n']} |")
    lines += ["", "| family | parameters | invariance error (max over seeds) | wall time per trial (mean, max) "
              "| epochs run per seed | failed seeds |", "|---|---|---|---|---|---|"]
    for fam in summary["families"]:
        i = summary["info"][fam]
        audit = audit_cell(i["audit_max"], i["exact"], i.get("audit_claimed"))
        lines.append(f"| {fam} | {_num(i['num_params'], '{:,}')} | {audit} | {_num(i['wall_s']['mean'], '{:.0f}')} s, "
                     f"{_num(i['wall_s_max'], '{:.0f}')} s | {i['epochs_run']} | {i['seeds_failed'] or '-'} |")
    for ref, rows in summary["paired"].items():
        lines += ["", f"## Paired differences against {ref} (same seeds, same test networks)", "",
                  f"Difference in test {metric} (family minus {ref}) per seed: mean, {pct}% interval, and the "
                  f"seeds where the family is higher. \"{NO_DIFFERENCE}\" wherever the interval covers 0.", "",
                  "| family | condition | difference | wins | verdict |", "|---|---|---|---|---|"]
        for fam, per_cond in rows.items():
            for c in conds:
                d = per_cond[c]
                lines.append(f"| {fam} | {c} | {_interval(d, signed=True)} | {d['wins']}/{d['n']} | {d['verdict']} |")
    lines += ["", "## What is established", "", *_established(summary), *_failures(summary)]
    lines += ["", "The invariance error is max |f(g.x) - f(x)| over sampled group elements, in float64, "
              "maximised over seeds, on the network's whole group; for a model that claims only permutation "
              "invariance, the error on permutations follows it."]
    return "\n".join(lines) + "\n"


def _claimed_audit(records: list[dict]) -> dict | None:
    """The largest error on the group a family claims, over its seeds (None if it claims the whole group)."""
    claimed = [r["result"]["audit"]["claimed"] for r in records if "claimed" in r["result"]["audit"]]
    if not claimed:
        return None
    return {"group": claimed[0]["group"], "max": max(c["max"] for c in claimed)}


def _established(summary: dict) -> list[str]:
    out = []
    for ref, rows in summary["paired"].items():
        for fam, per_cond in rows.items():
            shown = [(c, d) for c, d in per_cond.items() if d["verdict"] != NO_DIFFERENCE]
            for c, d in shown:
                out.append(f"- {fam} is {d['verdict']} than {ref} under '{c}': {_interval(d, signed=True)}, "
                           f"higher in {d['wins']} of {d['n']} seeds.")
            if not shown:
                out.append(f"- {fam} vs {ref}: {NO_DIFFERENCE} under any condition.")
    stats = summary["stats"]
    fams = [f for f in summary["families"] if f in stats]
    apart = [(a, b) for i, a in enumerate(fams) for b in fams[i + 1:]
             if not overlap(stats[a][CLEAN], stats[b][CLEAN])]
    if fams:
        out.append("- Unpaired intervals (no action) that do not overlap: "
                   + (", ".join(f"{a} / {b}" for a, b in apart) if apart else "none") + ".")
    return out or ["- Nothing: no reference family completed."]


def _failures(summary: dict) -> list[str]:
    if not summary["failures"]:
        return []
    return ["", "## Failed trials", ""] + [f"- {f['family']} seed {f['seed']}: {f['error']}"
                                          for f in summary["failures"]]


def plot_conditions(summary: dict, path: Path, title: str) -> Path:
    """Test metric against the group action applied (scale range): mean with its interval as error
    bars, and one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds, fams = summary["conditions"], [f for f in summary["families"] if f in summary["stats"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    width = 0.6 / max(1, len(fams))
    for k, fam in enumerate(fams):
        x0 = [i - 0.3 + (k + 0.5) * width for i in range(len(conds))]
        st = [summary["stats"][fam][c] for c in conds]
        means = [s["mean"] for s in st]
        err = [[s["mean"] - s["lo"] if math.isfinite(s["lo"]) else 0 for s in st],
               [s["hi"] - s["mean"] if math.isfinite(s["hi"]) else 0 for s in st]]
        line = ax.errorbar(x0, means, yerr=err, fmt="o-", capsize=3, lw=1, ms=5,
                           label=f"{fam} ({_num(summary['info'][fam]['num_params'], '{:,}')} params)")
        for x, c in zip(x0, conds):
            seeds = summary["values"][fam].get(c, {})
            ax.scatter([x] * len(seeds), list(seeds.values()), s=10, alpha=0.5, color=line[0].get_color())
    ax.set_xticks(range(len(conds)))
    ax.set_xticklabels(conds, rotation=15)
    ax.set_xlabel("group action applied to every test network (scales U[1, 10^k])")
    ax.set_ylabel(f"test {summary['metric'].replace('_', ' ')}")
    ax.set_title(f"{title}\nmean and {int(summary['level'] * 100)}% interval over seeds "
                 f"{summary['seeds']}; dots: single seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


TITLE_CHARS = 70  # characters of a title line that fit above one 7-inch panel (long titles wrap, not clip)


def plot_paired(summary: dict, path: Path, title: str) -> Path:
    """Paired differences against each reference, one row per family and condition, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = list(summary["paired"].items())
    fig, axes = plt.subplots(1, max(1, len(refs)), figsize=(7 * max(1, len(refs)), 1.2 + 0.22 * max(
        (len(rows) * len(summary["conditions"]) for _, rows in refs), default=4)), squeeze=False)
    for ax, (ref, rows) in zip(axes.flat, refs):
        labels, y = [], 0
        for fam, per_cond in rows.items():
            for c, d in per_cond.items():
                ok = math.isfinite(d["lo"])
                color = "tab:gray" if d["verdict"] == NO_DIFFERENCE else "tab:blue"
                ax.errorbar([d["mean"]], [y], xerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]] if ok else None,
                            fmt="o", color=color, capsize=3, ms=4)
                labels.append(f"{fam}, {c} ({d['wins']}/{d['n']} wins)")
                y += 1
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(f"test {summary['metric']} minus {ref}'s (same seed)")
        ax.set_title(textwrap.fill(f"against {ref}: grey = interval covers 0 ({NO_DIFFERENCE})", TITLE_CHARS // 2),
                     fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    if not refs:
        axes.flat[0].text(0.5, 0.5, "no reference family completed", ha="center")
    text = f"{title}: paired differences, {int(summary['level'] * 100)}% intervals"
    fig.suptitle(textwrap.fill(text, TITLE_CHARS * max(1, len(refs))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
