"""Symmetry checkers, computed in float64, used by the test suite and the invariance audit."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from metanets import symmetry
from metanets.weight_space import WeightSpace

# One tolerance per dtype (relative to the size of the compared values, plus the same absolute floor).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3}


def _as_double(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).double()


def max_abs_diff(a: WeightSpace | torch.Tensor, b: WeightSpace | torch.Tensor) -> float:
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max())
    return max(float((x - y).abs().max()) for (_, x), (_, y) in zip(a.tensors(), b.tensors()))


def _scale_of(a: WeightSpace | torch.Tensor) -> float:
    if isinstance(a, torch.Tensor):
        return float(a.abs().max())
    return max(float(t.abs().max()) for _, t in a.tensors())


def _close(a, b, dtype) -> tuple[bool, float, float]:
    tol = TOLERANCE[dtype] * max(1.0, _scale_of(b))
    err = max_abs_diff(a, b)
    return err <= tol, err, tol


def equivariance_error(
    layer: Callable[[WeightSpace], WeightSpace],
    ws: WeightSpace,
    g_in,
    g_out=None,
) -> tuple[float, float]:
    """(error, tolerance) of layer(g_in . ws) against g_out . layer(ws), in float64.

    `g_out` defaults to `g_in`; passing an uncoupled action as `g_in` (see `symmetry.act_rows_cols`)
    lets a test show that a layer is *not* equivariant to it.
    """
    layer64 = _as_double(layer) if isinstance(layer, nn.Module) else layer
    ws64 = ws.double()
    act_in = g_in if callable(g_in) else (lambda w: symmetry.act(g_in, w))
    g_out = g_in if g_out is None else g_out
    act_out = g_out if callable(g_out) else (lambda w: symmetry.act(g_out, w))
    with torch.no_grad():
        lhs = layer64(act_in(ws64))
        rhs = act_out(layer64(ws64))
    ok, err, tol = _close(lhs, rhs, torch.float64)
    return err, tol


def assert_equivariant(layer, ws: WeightSpace, g) -> None:
    err, tol = equivariance_error(layer, ws, g)
    if err > tol:
        raise AssertionError(f"not equivariant: max |f(g x) - g f(x)| = {err:.3e} > {tol:.3e}")


def invariance_errors(
    model: nn.Module, ws: WeightSpace, elements: Iterable, dtype=torch.float64
) -> torch.Tensor:
    """|f(g theta) - f(theta)| maximised over outputs: (K, B) for K sampled group elements."""
    m = copy.deepcopy(model).to(dtype)
    x = ws.to(dtype)
    errs = []
    with torch.no_grad():
        base = m(x)
        for g in elements:
            out = m(symmetry.act(g, x) if not callable(g) else g(x))
            errs.append((out - base).abs().reshape(base.shape[0], -1).amax(dim=1))
    return torch.stack(errs)


def invariance_error(model: nn.Module, ws: WeightSpace, elements: Iterable) -> dict[str, float]:
    """max and mean over networks and sampled elements of |f(g theta) - f(theta)| (float64)."""
    errs = invariance_errors(model, ws, elements)
    return {"max": float(errs.max()), "mean": float(errs.mean())}


def assert_invariant(model: nn.Module, ws: WeightSpace, elements: Iterable) -> None:
    elements = list(elements)
    m = _as_double(model)
    with torch.no_grad():
        scale = float(m(ws.double()).abs().max())
    tol = TOLERANCE[torch.float64] * max(1.0, scale)
    err = invariance_error(model, ws, elements)["max"]
    if err > tol:
        raise AssertionError(f"not invariant: max |f(g x) - f(x)| = {err:.3e} > {tol:.3e}")
