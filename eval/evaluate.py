"""Evaluation on a weight table's test split: the task metric, robustness to group actions, and the
invariance audit (DESIGN.md facts 1 and 2: invariance is measured, never assumed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import torch

from metanets import WeightSpace, sine, symmetry
from metanets.spec import PERM, PERM_SCALE, PERM_SIGN
from metanets.testing import invariance_errors
from training.metrics import PRIMARY_METRIC, task_metrics

SCALE_EXPONENTS = (1, 2, 3, 4)


def orbit_conditions(group: str, exponents=SCALE_EXPONENTS, activation: str | None = None,
                     omega_0: float = sine.DIGITS_SIREN_OMEGA_0) -> dict[str, dict]:
    """Named ways of replacing each network by a random member of its orbit.

    Sine networks also get "orbit": permutations, signs and pi phase shifts (`metanets.sine`) with
    frequency `omega_0`, their whole discrete group: the number that says whether a model reads the function.
    """
    conds: dict[str, dict] = {"permuted": {"group": PERM, "scale": None}}
    if group == PERM_SCALE:
        for k in exponents:
            conds[f"U[1,10^{k}]"] = {"group": PERM_SCALE, "scale": (1.0, 10.0**k)}
    elif group == PERM_SIGN:
        conds["signs"] = {"group": PERM_SIGN, "scale": None}
        if activation == "sine":
            conds["orbit"] = {"group": PERM_SIGN, "scale": None, "omega_0": float(omega_0)}
    elif group != PERM:  # transformers: GL(d_h) elements per head (condition number <= 10) and the rest
        conds["GL cond<=10"] = {"group": None, "scale": (1.0, 10.0)}
    return conds


def _outputs(model, batches: Iterable[tuple[WeightSpace, torch.Tensor]], transform=None):
    outs, targets = [], []
    with torch.no_grad():
        for ws, y in batches:
            if transform is not None:
                ws = transform(ws)
            outs.append(model(ws.float()).numpy())
            targets.append(np.asarray(y))
    if not outs:
        raise ValueError("the evaluation split is empty")
    return np.concatenate(outs), np.concatenate(targets)


def evaluate(
    model: torch.nn.Module,
    card: dict,
    batches: Callable[[], Iterable[tuple[WeightSpace, torch.Tensor]]],
    exponents=SCALE_EXPONENTS,
    audit_samples: int = 4,
    audit_max_networks: int = 256,
    seed: int = 0,
) -> dict:
    """Metrics of `model` on the networks `batches()` yields (called once per condition).

    Returns {"metric": name, "clean": {...}, "robustness": {condition: {...}}, "audit": {...}}.
    """
    model = model.eval()
    kind, loss = card.get("task", "generalization"), card.get("loss", "bce")
    primary = PRIMARY_METRIC[kind]
    group = model.spec.group
    out, y = _outputs(model, batches())
    result = {
        "model": card.get("model"), "metric": primary, "task": kind, "loss": loss, "n": int(len(y)), "group": group,
        "invariant_to": getattr(model, "invariant_to", None),
        "invariance_exact": getattr(model, "invariance_exact", None),
        "clean": task_metrics(kind, out, y, loss), "robustness": {}, "num_params": model.num_params,
        "predictions": {"outputs": out.reshape(len(y), -1).tolist(), "targets": y.tolist()},
    }
    omega_0 = float(card.get("omega_0", sine.DIGITS_SIREN_OMEGA_0))
    for name, cond in orbit_conditions(group, exponents, getattr(model.spec, "activation", None), omega_0).items():
        gen = torch.Generator().manual_seed(seed)

        def transform(ws, cond=cond, gen=gen):
            if "omega_0" in cond:
                return sine.random_orbit_member(ws.double(), cond["omega_0"], gen)
            g = symmetry.sample(ws.spec, ws.batch_size, scale=cond["scale"], group=cond["group"], generator=gen,
                                dtype=torch.float64)
            return symmetry.act(g, ws.double())

        o, t = _outputs(model, batches(), transform)
        result["robustness"][name] = task_metrics(kind, o, t, loss)
    result["audit"] = invariance_audit(model, batches(), audit_samples, audit_max_networks, exponents, seed)
    return result


def invariance_audit(model, batches, samples: int, max_networks: int, exponents=SCALE_EXPONENTS, seed: int = 0):
    """max and mean over networks and `samples` sampled elements of |f(g theta) - f(theta)| in float64.

    Elements come from the network's full group (scales up to 10^max(exponents) for ReLU zoos), so a
    model that is invariant only to permutations shows a large error here. Such a model (`invariant_to`
    is "perm" while the network's group is larger) is also audited on permutations alone, the group it
    claims: `audit["claimed"]` holds that group and its max and mean, so a report can show both.
    """
    group = model.spec.group
    scale = (1.0, 10.0 ** max(exponents)) if group == PERM_SCALE else None
    claimed = getattr(model, "invariant_to", None)
    audit_claimed = claimed == PERM and group != PERM
    gen = torch.Generator().manual_seed(seed + 1)
    model64 = copy.deepcopy(model).double()
    errs, claimed_errs, seen = [], [], 0
    for ws, _ in batches:
        ws = ws[: max_networks - seen].double()
        elements = [symmetry.sample(ws.spec, ws.batch_size, scale=scale, generator=gen) for _ in range(samples)]
        errs.append(invariance_errors(model64, ws, elements).flatten())
        if audit_claimed:
            perms = [symmetry.sample(ws.spec, ws.batch_size, group=PERM, generator=gen) for _ in range(samples)]
            claimed_errs.append(invariance_errors(model64, ws, perms).flatten())
        seen += ws.batch_size
        if seen >= max_networks:
            break
    e = torch.cat(errs)
    out = {"group": group, "scale": list(scale) if scale else None, "samples": samples, "networks": seen,
           "max": float(e.max()), "mean": float(e.mean())}
    if audit_claimed:
        c = torch.cat(claimed_errs)
        out["claimed"] = {"group": claimed, "max": float(c.max()), "mean": float(c.mean())}
    return out
