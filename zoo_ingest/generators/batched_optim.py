"""Hand-written optimisers over stacked parameters: S networks, each with its own optimiser, learning rate
and weight decay, updated in a few tensor operations per parameter.

The formulas are torch's (`torch.optim.SGD` with momentum 0.9, `Adam` and `RMSprop` with their defaults,
weight decay as L2 added to the gradient), so a network trains as it would alone, up to float rounding.
Networks are kept sorted by optimiser, so each optimiser updates one contiguous slice of every stacked
tensor (views, no gathers). A network that is not `active` takes no step.
"""

from __future__ import annotations

import torch

from zoo_ingest.generators.classifier import OPTIMIZERS

MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
RMSPROP_ALPHA = 0.99
EPS = 1e-8


def optimizer_order(names: list[str]) -> list[int]:
    """Positions of `names` sorted by optimiser (stable): the stacking order that makes groups contiguous."""
    unknown = sorted(set(names) - set(OPTIMIZERS))
    if unknown:
        raise ValueError(f"unknown optimiser {unknown[0]!r}; choose from {OPTIMIZERS}")
    return sorted(range(len(names)), key=lambda i: OPTIMIZERS.index(names[i]))


class BatchedOptimizer:
    """State for the flat parameters `(S, P)` of S networks that use optimisers `names` (sorted).

    `lr`, `l2`: per-network floats. `step(flat, active)` reads `flat.grad`.
    """

    def __init__(self, flat: torch.Tensor, names: list[str], lr: list[float], l2: list[float]):
        if optimizer_order(names) != list(range(len(names))):
            raise ValueError("networks must be stacked sorted by optimiser (see optimizer_order)")
        self.names = list(names)
        self.lr = torch.tensor(lr, dtype=flat.dtype)[:, None]
        self.l2 = torch.tensor(l2, dtype=flat.dtype)[:, None]
        self.steps = torch.zeros(len(names), 1, dtype=torch.float64)
        self.first = torch.zeros_like(flat)  # SGD momentum / Adam exp_avg
        self.second = torch.zeros_like(flat)  # Adam exp_avg_sq / RMSprop square_avg

    def _slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name in OPTIMIZERS:
            count = self.names.count(name)
            if count:
                out[name] = slice(start, start + count)
            start += count
        return out

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the networks at positions `keep` (increasing), e.g. when finished ones leave the stack."""
        self.names = [self.names[int(i)] for i in keep]
        self.lr, self.l2, self.steps = self.lr[keep], self.l2[keep], self.steps[keep]
        self.first, self.second = self.first[keep], self.second[keep]

    @torch.no_grad()
    def step(self, flat: torch.Tensor, active: torch.Tensor) -> None:
        """One step for the `active` (bool, (S,)) networks; the others keep their weights and state."""
        on_all = active[:, None]
        self.steps += on_all.to(self.steps.dtype)
        for name, part in self._slices().items():
            on, w, m, v = on_all[part], flat[part], self.first[part], self.second[part]
            g = flat.grad[part] + self.l2[part] * w
            rate = self.lr[part]
            if name == "sgd":
                m.copy_(torch.where(on, m * MOMENTUM + g, m))
                update = rate * m
            elif name == "adam":
                b1, b2 = ADAM_BETAS
                t = self.steps[part].clamp(min=1)
                m.copy_(torch.where(on, torch.lerp(m, g, 1 - b1), m))
                v.copy_(torch.where(on, v * b2 + (1 - b2) * g * g, v))
                correction1 = (1 - b1**t).to(w.dtype)
                correction2 = (1 - b2**t).sqrt().to(w.dtype)
                update = (rate / correction1) * (m / ((v.sqrt() / correction2) + EPS))
            else:  # rmsprop
                v.copy_(torch.where(on, v * RMSPROP_ALPHA + (1 - RMSPROP_ALPHA) * g * g, v))
                update = rate * (g / (v.sqrt() + EPS))
            w.copy_(torch.where(on, w - update, w))  # where, not lr 0: a done network's state may be NaN
