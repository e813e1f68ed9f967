"""`TransformerWeightSpace`: a batch of transformer encoders (or metanetwork features) as tensors.

Design notation (x W, row vectors), B networks, C channels (C = 1 for real networks), L encoder layers,
H heads of width d_h, model width d, feed-forward width f. Head h of layer l owns the index block
s_h = h d_h:(h+1) d_h of the torch projections:
    wq, wk, wv  (B, C, L, H, d, d_h)   W_Q^h = queries.weight[s_h, :].T, likewise keys, values
    bq, bk, bv  (B, C, L, H, d_h)      queries.bias[s_h], ...           (zeros when absent)
    wo          (B, C, L, H, d_h, d)   W_O^h = out_projection.weight[:, s_h].T
    bo          (B, C, L, d)           out_projection.bias               (zeros when absent)
    wa, ba      (B, C, L, d, f), (B, C, L, f)   fc1.weight.T, fc1.bias
    wb, bb      (B, C, L, f, d), (B, C, L, d)   fc2.weight.T, fc2.bias
    extras[i]   (B, C, *shape_i)       the parameters outside the group, in `spec.extras` order
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from metanets.batched import BatchedTensors
from metanets.spec import SpecError
from metanets.transformer.spec import EMBEDDING_ROLES, TransformerSpec

GROUP_FIELDS = ("wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo", "wa", "ba", "wb", "bb")
# field -> (role, is bias)
_ROLE = {"wq": ("queries", False), "wk": ("keys", False), "wv": ("values", False), "wo": ("out_projection", False),
         "bq": ("queries", True), "bk": ("keys", True), "bv": ("values", True), "bo": ("out_projection", True),
         "wa": ("fc1", False), "ba": ("fc1", True), "wb": ("fc2", False), "bb": ("fc2", True)}


def field_shape(spec: TransformerSpec, name: str) -> tuple[int, ...]:
    """Shape of field `name` after (B, C): e.g. wq -> (L, H, d, d_h)."""
    L, H, dh, d, f = spec.num_layers, spec.num_heads, spec.head_dim, spec.d_model, spec.d_ff
    return {"wq": (L, H, d, dh), "wk": (L, H, d, dh), "wv": (L, H, d, dh), "wo": (L, H, dh, d),
            "bq": (L, H, dh), "bk": (L, H, dh), "bv": (L, H, dh), "bo": (L, d),
            "wa": (L, d, f), "ba": (L, f), "wb": (L, f, d), "bb": (L, d)}[name]


def _to_design(name: str, t: torch.Tensor, H: int) -> torch.Tensor:
    """One layer's torch tensor (B, *torch shape) -> design layout (B, *field shape without L)."""
    B = t.shape[0]
    if name in ("wq", "wk", "wv"):  # (B, H dh, d) -> (B, H, d, dh)
        return t.reshape(B, H, -1, t.shape[-1]).transpose(-1, -2)
    if name == "wo":  # (B, d, H dh) -> (B, H, dh, d)
        return t.reshape(B, t.shape[1], H, -1).permute(0, 2, 3, 1)
    if name in ("bq", "bk", "bv"):
        return t.reshape(B, H, -1)
    if name in ("wa", "wb"):
        return t.transpose(-1, -2)
    return t


def _to_torch(name: str, t: torch.Tensor) -> torch.Tensor:
    """Inverse of `_to_design` for one layer: (B, *design shape) -> (B, *torch shape)."""
    B = t.shape[0]
    if name in ("wq", "wk", "wv"):  # (B, H, d, dh) -> (B, H dh, d)
        return t.transpose(-1, -2).reshape(B, -1, t.shape[-2])
    if name == "wo":  # (B, H, dh, d) -> (B, d, H dh)
        return t.permute(0, 3, 1, 2).reshape(B, t.shape[-1], -1)
    if name in ("bq", "bk", "bv"):
        return t.reshape(B, -1)
    if name in ("wa", "wb"):
        return t.transpose(-1, -2)
    return t


@dataclass(frozen=True)
class TransformerWeightSpace(BatchedTensors):
    spec: TransformerSpec
    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    bq: torch.Tensor
    bk: torch.Tensor
    bv: torch.Tensor
    bo: torch.Tensor
    wa: torch.Tensor
    ba: torch.Tensor
    wb: torch.Tensor
    bb: torch.Tensor
    extras: tuple[torch.Tensor, ...]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_columns(cls, columns: Mapping, spec: TransformerSpec, dtype=None) -> TransformerWeightSpace:
        """From {state-dict key: (B, *torch shape) or (B, numel)} (tensors or arrays), one channel."""
        sizes = spec.param_shapes()
        cols = {}
        for key, shape in sizes.items():
            if key not in columns:
                raise SpecError(f"missing {key!r}")
            col = columns[key]
            t = col if isinstance(col, torch.Tensor) else torch.as_tensor(np.asarray(col))
            if dtype is not None:
                t = t.to(dtype)
            if t.ndim < 1 or t[0].numel() != int(np.prod(shape)):
                raise SpecError(f"{key}: batch of shape {tuple(t.shape)}, expected (B, {', '.join(map(str, shape))})")
            cols[key] = t.reshape(t.shape[0], *shape)
        B = next(iter(cols.values())).shape[0]
        like = next(iter(cols.values()))
        out = {}
        for name in GROUP_FIELDS:
            role, bias = _ROLE[name]
            per_layer = []
            for layer in spec.layers:
                key = layer.key(role, bias)
                t = cols[key] if key else like.new_zeros(B, *spec.role_shape(role, bias))
                per_layer.append(_to_design(name, t, spec.num_heads))
            out[name] = torch.stack(per_layer, dim=1).unsqueeze(1)
        extras = tuple(cols[e.key].unsqueeze(1) for e in spec.extras)
        return cls(spec, **out, extras=extras)

    @classmethod
    def from_state_dicts(cls, sds: Sequence[Mapping], spec: TransformerSpec, dtype=torch.float32):
        """Stack state dicts into a batch with one channel; keys are looked up by name."""
        if not sds:
            raise SpecError("from_state_dicts needs at least one state dict")
        shapes, columns = spec.param_shapes(), {}
        for key, shape in shapes.items():
            for n, sd in enumerate(sds):
                if key not in sd:
                    raise SpecError(f"state dict {n}: missing {key!r}")
                if tuple(sd[key].shape) != shape:
                    raise SpecError(f"state dict {n}: {key} has shape {tuple(sd[key].shape)}, the spec says {shape}")
            columns[key] = torch.stack([torch.as_tensor(sd[key]).to(dtype) for sd in sds])
        return cls.from_columns(columns, spec)

    @classmethod
    def from_flat(cls, flat, spec: TransformerSpec) -> TransformerWeightSpace:
        """From a (B, P) matrix whose columns follow `spec.keys` order, each tensor row-major (torch shape)."""
        flat = torch.as_tensor(flat)
        if flat.ndim != 2 or flat.shape[1] != spec.num_params:
            raise SpecError(f"flat weights of shape {tuple(flat.shape)}, expected (B, {spec.num_params})")
        columns, pos = {}, 0
        for key, shape in spec.param_shapes().items():
            n = int(np.prod(shape))
            columns[key] = flat[:, pos : pos + n]
            pos += n
        return cls.from_columns(columns, spec)

    def __post_init__(self):
        if len(self.extras) != len(self.spec.extras):
            raise SpecError(f"weight space has {len(self.extras)} extra tensors, the spec {len(self.spec.extras)}")

    # ---- properties ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.wq.shape[0]

    @property
    def channels(self) -> int:
        return self.wq.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.wq.dtype

    @property
    def device(self) -> torch.device:
        return self.wq.device

    def group_tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in GROUP_FIELDS}

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(state-dict key, design-layout tensor (B, C, ...)) in `spec.keys` order, layer by layer; an absent
        bias is named `<module>.bias` (it holds zeros for real networks) and follows its weight."""
        spec = self.spec
        pairs = list(zip(spec.extras, self.extras))
        out = [(e.key, t) for e, t in pairs if e.layer is None and e.role in EMBEDDING_ROLES]
        for l, layer in enumerate(spec.layers):
            for w_name, b_name in zip(GROUP_FIELDS[:4] + ("wa", "wb"), GROUP_FIELDS[4:8] + ("ba", "bb")):
                role = _ROLE[w_name][0]
                w_key = layer.key(role)
                out.append((w_key, getattr(self, w_name)[:, :, l]))
                out.append((layer.key(role, True) or w_key.rsplit(".", 1)[0] + ".bias", getattr(self, b_name)[:, :, l]))
            out += [(e.key, t) for e, t in pairs if e.layer == l]
        out += [(e.key, t) for e, t in pairs if e.layer is None and e.role not in EMBEDDING_ROLES]
        return out

    # ---- functional helpers --------------------------------------------------------------------
    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TransformerWeightSpace:
        group = {n: fn(t) for n, t in self.group_tensors().items()}
        return self.replace(**group, extras=tuple(fn(t) for t in self.extras))

    def replace(self, **changes) -> TransformerWeightSpace:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return TransformerWeightSpace(**values)

    @staticmethod
    def cat(items: Sequence[TransformerWeightSpace]) -> TransformerWeightSpace:
        first = items[0]
        return first.replace(
            **{n: torch.cat([getattr(it, n) for it in items]) for n in GROUP_FIELDS},
            extras=tuple(torch.cat([it.extras[i] for it in items]) for i in range(len(first.extras))),
        )

    def to_columns(self) -> dict[str, torch.Tensor]:
        """{state-dict key: (B, *torch shape)} of channel 0, in `spec.keys` order (absent biases left out)."""
        self._require_one_channel("to_columns")
        out = {}
        for l, layer in enumerate(self.spec.layers):
            for name in GROUP_FIELDS:
                key = layer.key(*_ROLE[name])
                if key:
                    out[key] = _to_torch(name, getattr(self, name)[:, 0, l])
        out.update({e.key: t[:, 0] for e, t in zip(self.spec.extras, self.extras)})
        return {k: out[k] for k in self.spec.keys}

    def flatten(self) -> torch.Tensor:
        """(B, P) in `spec.keys` order; inverse of `from_flat`. Requires one channel."""
        return torch.cat([t.reshape(self.batch_size, -1) for t in self.to_columns().values()], dim=1)

    def to_state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One state dict per batch entry (channel 0 of a one-channel weight space)."""
        cols = self.to_columns()
        return [{k: t[n].clone() for k, t in cols.items()} for n in range(self.batch_size)]

    # ---- validation -----------------------------------------------------------------------------
    def validate(self, channels: int | None = None) -> TransformerWeightSpace:
        """Check shapes against the spec (and the channel count when given); returns self."""
        B, C = self.batch_size, self.channels
        expected = [(n, getattr(self, n), field_shape(self.spec, n), self.spec.layers[0].key(*_ROLE[n]))
                    for n in GROUP_FIELDS]
        expected += [(e.key, t, e.shape, e.key) for e, t in zip(self.spec.extras, self.extras)]
        for name, t, shape, key in expected:
            if tuple(t.shape) != (B, C, *shape):
                raise SpecError(f"{name} ({key or 'absent bias'}): tensor of shape {tuple(t.shape)}, expected "
                                f"({B}, {C}, {', '.join(map(str, shape))})")
        if channels is not None and C != channels:
            raise SpecError(f"{self.spec.layers[0].key('queries')}: {C} channels, expected {channels}")
        return self

