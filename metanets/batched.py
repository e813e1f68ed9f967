"""What the weight-space containers share: conversions derived from their `map`, checks from their
`tensors()` (state-dict key, tensor) and `channels`."""

from __future__ import annotations

import torch

from metanets.spec import SpecError


class BatchedTensors:
    """Mixin for immutable containers of (B, C, ...) tensors that define `map(fn)`, `tensors()` and
    `channels`."""

    def map(self, fn):  # pragma: no cover - defined by the container
        raise NotImplementedError

    def to(self, *args, **kwargs):
        return self.map(lambda t: t.to(*args, **kwargs))

    def double(self):
        return self.to(torch.float64)

    def float(self):
        return self.to(torch.float32)

    def __getitem__(self, idx):
        """Index the batch axis (an int keeps the axis, as a length-1 slice)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return self.map(lambda t: t[idx])

    def check_finite(self):
        """Raise naming the first tensor (state-dict key) and batch rows holding NaN or Inf; returns self."""
        for key, t in self.tensors():
            bad = ~torch.isfinite(t)
            if bad.any():
                rows = torch.nonzero(bad.reshape(t.shape[0], -1).any(dim=1)).flatten().tolist()
                raise ValueError(f"{key}: non-finite values (NaN or Inf) in batch rows {rows[:10]}")
        return self

    def _require_one_channel(self, what: str):
        if self.channels != 1:
            raise SpecError(f"{what} needs a one-channel weight space, this one has {self.channels}")
