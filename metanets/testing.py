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


def assert_quasi_error_grows_with_eps(make_quasi: Callable[[float], nn.Module], backbone: nn.Module, ws,
                                      elements: Iterable, eps_values: Iterable[float], min_change: float) -> None:
    """DESIGN.md fact 2 for a per-channel quasi model: with eps = 0 it is exactly invariant; with eps > 0
    its output differs from the backbone's by more than `min_change` and its measured invariance error is
    nonzero and grows with eps. `make_quasi(eps)` builds the model (float64, same seed as `backbone`)."""
    elements = list(elements)
    errors = []
    for eps in eps_values:
        model = make_quasi(eps)
        assert not model.invariance_exact
        errors.append(invariance_error(model, ws, elements)["max"])
        if eps > 0:
            with torch.no_grad():
                change = float((model(ws) - backbone(ws)).abs().max())
            assert change > min_change, f"eps={eps}: alpha changed the output by only {change:.3g}"
    assert errors[0] < 1e-12, "eps = 0 makes alpha the identity, so the model is exactly invariant"
    assert errors[1] > 1e-9 and all(a < b for a, b in zip(errors[1:], errors[2:])), errors
