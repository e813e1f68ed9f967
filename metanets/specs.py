"""Dispatch between the two kinds of architecture spec: `NetworkSpec` (Linear/Conv2d chains) and
`TransformerSpec` (transformer encoders). The ingest, training and evaluation code call these."""

from __future__ import annotations

from collections.abc import Mapping

from metanets.spec import NetworkSpec, SpecError
from metanets.transformer.spec import DEFAULT_HEADS, TRANSFORMER, TransformerSpec, looks_like_transformer
from metanets.transformer.weight_space import TransformerWeightSpace
from metanets.weight_space import WeightSpace

AnySpec = NetworkSpec | TransformerSpec


def spec_from_dict(d: Mapping) -> AnySpec:
    """The spec `to_dict()` wrote: a TransformerSpec when `d["type"] == "transformer"`, else a NetworkSpec."""
    kind = d.get("type")
    if kind == TRANSFORMER:
        return TransformerSpec.from_dict(d)
    if kind not in (None, "network"):
        raise SpecError(f"unknown spec type {kind!r}; known: 'transformer' or none (a Linear/Conv2d chain)")
    return NetworkSpec.from_dict(d)


def infer_spec(sd: Mapping, activation: str, num_heads: int | None = None) -> AnySpec:
    """A TransformerSpec when the keys look like a transformer encoder (`<stack>.<l>.[attn.]queries.weight`),
    with `num_heads` heads (default 2, the digits-transformer zoo); else `NetworkSpec.from_state_dict`."""
    if looks_like_transformer(sd):
        return TransformerSpec.from_state_dict(sd, activation, DEFAULT_HEADS if num_heads is None else num_heads)
    return NetworkSpec.from_state_dict(sd, activation=activation)


def weight_space_class(spec: AnySpec) -> type[WeightSpace] | type[TransformerWeightSpace]:
    """The container for networks of `spec`: both offer `from_flat(flat, spec)`, `from_state_dicts`, ..."""
    return TransformerWeightSpace if isinstance(spec, TransformerSpec) else WeightSpace
