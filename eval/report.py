"""Presenting evaluation results: a text table, a JSON file, and the MLflow run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def audit_cell(full_max, exact, claimed: dict | None = None) -> str:
    """A table cell for the invariance audit: the error on the network's whole group, then, for a model
    that claims a smaller group, the error on that group (an hnp's "6.96e+03; perm: 1.2e-14")."""
    if full_max is None or (isinstance(full_max, float) and math.isnan(full_max)):
        return "-"
    cell = f"{full_max:.2e}"
    if claimed:
        cell += f"; {claimed['group']}: {claimed['max']:.2e}"
    return cell + ("" if exact in (None, True) else " (approximate by design)")


def result_table(result: dict) -> str:
    """A readable summary of one `evaluate` result."""
    metric = result["metric"]
    lines = [
        f"model {result['model']} ({result['num_params']} parameters) on {result['n']} test networks; "
        f"group {result['group']}, model invariant to {result['invariant_to']}"
        f" ({'exact' if result['invariance_exact'] else 'approximate'})",
        f"{'condition':<16}{metric:>14}" + ("" if metric != "kendall_tau" else f"{'r2':>10}"),
    ]
    rows = [("no action", result["clean"])] + list(result["robustness"].items())
    for name, m in rows:
        line = f"{name:<16}{_fmt(m.get(metric)):>14}"
        if metric == "kendall_tau":
            line += f"{_fmt(m.get('r2')):>10}"
        lines.append(line)
    a = result["audit"]
    lines.append(
        f"invariance audit ({a['samples']} elements x {a['networks']} networks, group {a['group']}"
        + (f", scales U[{a['scale'][0]:g}, {a['scale'][1]:g}]" if a["scale"] else "")
        + f"): max |f(g.x) - f(x)| = {a['max']:.3e}, mean = {a['mean']:.3e}"
    )
    if "claimed" in a:
        c = a["claimed"]
        lines.append(f"  on the group the model claims ({c['group']}): max = {c['max']:.3e}, mean = {c['mean']:.3e}")
    return "\n".join(lines)


def metric_suffix(condition: str) -> str:
    """An orbit condition's name as MLflow accepts it (alphanumerics, _ - . space : /):
    'U[1,10^3]' -> 'U1_1e3' (1e3 = 10^3, as in floating-point notation), 'GL cond<=10' -> 'GL_cond_le_10'."""
    name = re.sub(r"10\^(\d+)", r"1e\1", condition)
    name = name.replace("[", "").replace("]", "").replace(",", "_").replace("<=", "_le_")
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.-]", "_", name))


# Runs evaluated before the rename logged U[1,10^k] as `..._U1_10ek`, which reads as 10^(k+1).
_LEGACY_SCALE = re.compile(r"_U1_10e(\d+)$")


def canonical_metric_name(name: str) -> str:
    """The current name of an evaluation metric: `test_kendall_tau_U1_10e3` (old runs) -> `..._U1_1e3`."""
    return _LEGACY_SCALE.sub(r"_U1_1e\1", name)


def run_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A run's metrics under current names, so old and new runs compare; a current name wins over a
    legacy one when a run holds both (an old run evaluated again)."""
    out = {canonical_metric_name(k): v for k, v in metrics.items() if canonical_metric_name(k) != k}
    out.update({k: v for k, v in metrics.items() if canonical_metric_name(k) == k})
    return out


def flat_metrics(result: dict, prefix: str = "test_") -> dict[str, float]:
    """MLflow metric names: test_<metric>, test_<metric>_<condition>, audit_max, audit_mean, and
    audit_claimed_max, audit_claimed_mean for a model audited on the smaller group it claims."""
    out = {}
    for k, v in result["clean"].items():
        out[f"{prefix}{k}"] = v
    for cond, m in result["robustness"].items():
        for k, v in m.items():
            out[f"{prefix}{k}_{metric_suffix(cond)}"] = v
    out["audit_max"] = result["audit"]["max"]
    out["audit_mean"] = result["audit"]["mean"]
    if "claimed" in result["audit"]:
        out["audit_claimed_max"] = result["audit"]["claimed"]["max"]
        out["audit_claimed_mean"] = result["audit"]["claimed"]["mean"]
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def log_to_mlflow(result: dict, tracking_uri: str, run_id: str, json_path: Path, dataset=None) -> None:
    """Metrics (`flat_metrics`) and the JSON file to the run; `dataset` = (table, split, arch_id) links the
    evaluated rows as the run's dataset input (context `evaluation`), the same MLflow dataset (name and
    digest) that a training run on that split links."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in flat_metrics(result).items()])
    client.log_artifact(run_id, str(json_path), artifact_path="eval")
    if dataset is not None:
        from training.tracking import log_table_input

        table, split, arch_id = dataset
        log_table_input(client, run_id, table, split, arch_id, context="evaluation")
