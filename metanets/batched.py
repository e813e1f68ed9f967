"""Conversions shared by the weight-space containers: everything derives from their `map`."""

from __future__ import annotations

import torch


class BatchedTensors:
    """Mixin for immutable containers of (B, C, ...) tensors that define `map(fn)`."""

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
