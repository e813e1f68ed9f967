"""`WeightSpace`: a batch of networks (or of metanetwork features) as tuples of tensors.

Layout, for a batch of B networks with C channels (C = 1 for real networks):
    weights[i]: (B, C, n_i, n_{i-1}, *kernel_i)
    biases[i]:  (B, C, n_i)
A layer without a bias holds zeros there; `to_state_dicts` leaves such biases out again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metanets.batched import BatchedTensors
from metanets.spec import NetworkSpec, SpecError


@dataclass(frozen=True)
class WeightSpace(BatchedTensors):
    spec: NetworkSpec
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_state_dicts(
        cls,
        sds: Sequence[Mapping[str, torch.Tensor]],
        spec: NetworkSpec,
        dtype: torch.dtype = torch.float32,
    ) -> WeightSpace:
        """Stack state dicts into a batch with one channel; keys are looked up by name."""
        if not sds:
            raise SpecError("from_state_dicts needs at least one state dict")
        weights, biases = [], []
        for layer in spec.layers:
            ws, bs = [], []
            for n, sd in enumerate(sds):
                if layer.weight_key not in sd:
                    raise SpecError(f"state dict {n}: missing {layer.weight_key!r}")
                w = torch.as_tensor(sd[layer.weight_key])
                if tuple(w.shape) != layer.shape:
                    raise SpecError(
                        f"state dict {n}: {layer.weight_key} has shape {tuple(w.shape)}, "
                        f"the spec says {layer.shape}"
                    )
                ws.append(w.to(dtype))
                if layer.bias_key:
                    if layer.bias_key not in sd:
                        raise SpecError(f"state dict {n}: missing {layer.bias_key!r}")
                    b = torch.as_tensor(sd[layer.bias_key])
                    if tuple(b.shape) != (layer.n_out,):
                        raise SpecError(
                            f"state dict {n}: {layer.bias_key} has shape {tuple(b.shape)}, "
                            f"the spec says ({layer.n_out},)"
                        )
                    bs.append(b.to(dtype))
                else:
                    bs.append(torch.zeros(layer.n_out, dtype=dtype))
            weights.append(torch.stack(ws).unsqueeze(1))
            biases.append(torch.stack(bs).unsqueeze(1))
        return cls(spec, tuple(weights), tuple(biases))

    @classmethod
    def from_flat(cls, flat: torch.Tensor | np.ndarray, spec: NetworkSpec) -> WeightSpace:
        """From a (B, P) matrix whose columns follow `spec.keys` order, each tensor row-major."""
        flat = torch.as_tensor(flat)
        if flat.ndim != 2 or flat.shape[1] != spec.num_params:
            raise SpecError(f"flat weights of shape {tuple(flat.shape)}, expected (B, {spec.num_params})")
        weights, biases, pos = [], [], 0
        B = flat.shape[0]
        for layer in spec.layers:
            n = layer.n_out * layer.n_in * layer.kernel_size
            weights.append(flat[:, pos : pos + n].reshape(B, 1, *layer.shape))
            pos += n
            if layer.bias_key:
                biases.append(flat[:, pos : pos + layer.n_out].reshape(B, 1, layer.n_out))
                pos += layer.n_out
            else:
                biases.append(flat.new_zeros(B, 1, layer.n_out))
        return cls(spec, tuple(weights), tuple(biases))

    def __post_init__(self):
        if len(self.weights) != self.spec.num_layers or len(self.biases) != self.spec.num_layers:
            raise SpecError(
                f"weight space has {len(self.weights)} weights and {len(self.biases)} biases, "
                f"the spec has {self.spec.num_layers} layers"
            )

    # ---- properties ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def channels(self) -> int:
        return self.weights[0].shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(state-dict key, tensor) pairs in layer order; biases of bias-free layers are named `<name>.bias`."""
        out = []
        for layer, w, b in zip(self.spec.layers, self.weights, self.biases):
            out.append((layer.weight_key, w))
            out.append((layer.bias_key or f"{layer.name}.bias", b))
        return out

    # ---- functional helpers --------------------------------------------------------------------
    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> WeightSpace:
        return WeightSpace(self.spec, tuple(fn(w) for w in self.weights), tuple(fn(b) for b in self.biases))

    def zip_map(self, other: WeightSpace, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        return WeightSpace(
            self.spec,
            tuple(fn(a, b) for a, b in zip(self.weights, other.weights)),
            tuple(fn(a, b) for a, b in zip(self.biases, other.biases)),
        )

    @staticmethod
    def cat(items: Sequence[WeightSpace]) -> WeightSpace:
        spec = items[0].spec
        return WeightSpace(
            spec,
            tuple(torch.cat([it.weights[i] for it in items]) for i in range(spec.num_layers)),
            tuple(torch.cat([it.biases[i] for it in items]) for i in range(spec.num_layers)),
        )

    def flatten(self) -> torch.Tensor:
        """(B, P) in `spec.keys` order; inverse of `from_flat`. Requires one channel."""
        self._require_one_channel("flatten")
        B = self.batch_size
        parts = []
        for layer, w, b in zip(self.spec.layers, self.weights, self.biases):
            parts.append(w.reshape(B, -1))
            if layer.bias_key:
                parts.append(b.reshape(B, -1))
        return torch.cat(parts, dim=1)

    def to_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One state dict per batch entry (channel 0 of a one-channel weight space)."""
        self._require_one_channel("to_state_dicts")
        out = []
        for n in range(self.batch_size):
            sd = {}
            for layer, w, b in zip(self.spec.layers, self.weights, self.biases):
                sd[layer.weight_key] = w[n, 0].clone()
                if layer.bias_key:
                    sd[layer.bias_key] = b[n, 0].clone()
            out.append(sd)
        return out

    # ---- validation -----------------------------------------------------------------------------
    def validate(self, channels: int | None = None) -> WeightSpace:
        """Check shapes against the spec (and the channel count when given); returns self."""
        B = self.batch_size
        for layer, w, b in zip(self.spec.layers, self.weights, self.biases):
            C = w.shape[1] if w.ndim > 1 else None
            if w.ndim != 2 + len(layer.shape) or tuple(w.shape[2:]) != layer.shape or w.shape[0] != B:
                raise SpecError(
                    f"{layer.weight_key}: tensor of shape {tuple(w.shape)}, expected "
                    f"({B}, C, {', '.join(map(str, layer.shape))})"
                )
            if tuple(b.shape) != (B, C, layer.n_out):
                raise SpecError(
                    f"{layer.bias_key or layer.name + '.bias'}: tensor of shape {tuple(b.shape)}, "
                    f"expected ({B}, {C}, {layer.n_out})"
                )
            if channels is not None and C != channels:
                raise SpecError(f"{layer.weight_key}: {C} channels, expected {channels}")
        return self

