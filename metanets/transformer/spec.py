"""`TransformerSpec`: the weight space of a transformer encoder, read from its state dict.

Recognised layout (module names as in the digits-transformer zoo and the public small-transformer zoos):
    <stack>.<l>.[<attn>.]{queries,keys,values,out_projection}.{weight[,bias]}   attention, per layer l
    <stack>.<l>.[<sub>.]{fc1,fc2}.{weight[,bias]}                               feed-forward block
    <stack>.<l>.<...norm...>.{weight,bias}                                      layer norms (1-D, width d)
    outside the layers: embeddings (a name containing "embed"), norms ("norm"/"ln"), the classifier
    ("classifier"/"head"); they are outside the group and carried along unchanged ("extras").
`keys` order (fixed, whatever the order of the input dict): embedding extras sorted by key; then per layer
l: queries, keys, values, out_projection, fc1, fc2 (each weight then its bias when present), then that
layer's norms sorted by key; then the other extras (norms, classifier) sorted by key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from metanets.spec import SpecError, group_of_activation

TRANSFORMER = "transformer"
ROLES = ("queries", "keys", "values", "out_projection", "fc1", "fc2")
DEFAULT_HEADS = 2  # the digits-transformer zoo
LAYER_KEY = re.compile(
    r"^(?P<layer>(?:.+\.)?(?P<idx>\d+))\.(?:(?P<sub>[^.]+)\.)?(?P<role>queries|keys|values|out_projection|fc1|fc2)"
    r"\.(?P<leaf>weight|bias)$"
)
EMBEDDING_ROLES = ("embedding", "position_embedding")  # extras placed before the layers


def looks_like_transformer(keys) -> bool:
    """True when some key is an encoder layer's attention projection (`<stack>.<l>.[attn.]queries.weight`)."""
    return any((m := LAYER_KEY.match(k)) and m["role"] == "queries" for k in keys)


def role_shape(role: str, d: int, D: int, f: int, bias: bool = False) -> tuple[int, ...]:
    """torch shape of a group-carrying tensor (bias: its bias) for widths d (model), D (heads), f (FFN)."""
    out, inp = {"queries": (D, d), "keys": (D, d), "values": (D, d), "out_projection": (d, D),
                "fc1": (f, d), "fc2": (d, f)}[role]
    return (out,) if bias else (out, inp)


def transformer_group(activation: str) -> str:
    """`transformer_<ffn group>`: GL(d_h) per head, head permutations, and the FFN's monomial group."""
    return f"{TRANSFORMER}_{group_of_activation(activation)}"


@dataclass(frozen=True)
class EncoderLayerSpec:
    """The group-carrying keys of one encoder layer: `weights[i]`, `biases[i]` for role ROLES[i]."""

    prefix: str
    weights: tuple[str, ...]
    biases: tuple[str | None, ...]

    def key(self, role: str, bias: bool = False) -> str | None:
        i = ROLES.index(role)
        return self.biases[i] if bias else self.weights[i]


@dataclass(frozen=True)
class ExtraSpec:
    """A parameter outside the group; `layer` is the encoder layer holding it (None: outside the layers)."""

    key: str
    shape: tuple[int, ...]
    role: str  # embedding | position_embedding | layer_norm | norm | classifier
    layer: int | None = None


@dataclass(frozen=True)
class TransformerSpec:
    """Immutable description of a transformer encoder's weight space and its symmetry group.

    d = `d_model` (residual width), H = `num_heads`, d_h = `head_dim`, D = H d_h = `attn_dim`,
    `d_ff` = feed-forward width. torch shapes: queries/keys/values (D, d), out_projection (d, D),
    fc1 (d_ff, d), fc2 (d, d_ff).
    """

    layers: tuple[EncoderLayerSpec, ...]
    extras: tuple[ExtraSpec, ...]
    num_heads: int
    d_model: int
    attn_dim: int
    d_ff: int
    activation: str
    group: str
    type: str = TRANSFORMER

    def __post_init__(self):
        if not self.layers:
            raise SpecError("a transformer needs at least one encoder layer")
        if self.num_heads < 1 or self.attn_dim % self.num_heads:
            raise SpecError(
                f"{self.layers[0].key('queries')}: {self.attn_dim} rows do not split into {self.num_heads} heads"
            )

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def head_dim(self) -> int:
        return self.attn_dim // self.num_heads

    @property
    def ffn_group(self) -> str:
        """The FFN hidden units' group: perm_scale (ReLU), perm_sign (tanh, sine) or perm."""
        return group_of_activation(self.activation)

    @property
    def has_attention_bias(self) -> bool:
        return any(b is not None for layer in self.layers for b in layer.biases[:4])

    def role_shape(self, role: str, bias: bool = False) -> tuple[int, ...]:
        """torch shape of a group-carrying tensor."""
        return role_shape(role, self.d_model, self.attn_dim, self.d_ff, bias)

    # ---- the generic interface shared with NetworkSpec -----------------------------------------
    def _items(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(key, torch shape, kind) in `keys` order."""
        items = [(e.key, e.shape, e.role) for e in self.extras if e.layer is None and e.role in EMBEDDING_ROLES]
        for l, layer in enumerate(self.layers):
            for role, w, b in zip(ROLES, layer.weights, layer.biases):
                items.append((w, self.role_shape(role), role))
                if b is not None:
                    items.append((b, self.role_shape(role, bias=True), f"{role}_bias"))
            items += [(e.key, e.shape, e.role) for e in self.extras if e.layer == l]
        items += [(e.key, e.shape, e.role) for e in self.extras if e.layer is None and e.role not in EMBEDDING_ROLES]
        return items

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _, _ in self._items())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: s for k, s, _ in self._items()}

    @property
    def num_params(self) -> int:
        total = 0
        for _, shape, _ in self._items():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    @property
    def arch_id(self) -> str:
        """Content hash of the ordered (name, shape, kind) list, the activation and the number of heads."""
        items = [[k, list(s), kind] for k, s, kind in self._items()]
        blob = json.dumps({"type": TRANSFORMER, "layers": items, "activation": self.activation,
                           "num_heads": self.num_heads}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "type": TRANSFORMER, "activation": self.activation, "group": self.group, "num_heads": self.num_heads,
            "d_model": self.d_model, "attn_dim": self.attn_dim, "d_ff": self.d_ff,
            "layers": [{"prefix": x.prefix, "weights": list(x.weights), "biases": list(x.biases)} for x in self.layers],
            "extras": [{"key": e.key, "shape": list(e.shape), "role": e.role, "layer": e.layer} for e in self.extras],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> TransformerSpec:
        if d.get("type") != TRANSFORMER:
            raise SpecError(f"not a transformer spec (type {d.get('type')!r})")
        layers = tuple(EncoderLayerSpec(x["prefix"], tuple(x["weights"]), tuple(x["biases"])) for x in d["layers"])
        extras = tuple(ExtraSpec(e["key"], tuple(int(s) for s in e["shape"]), e["role"], e.get("layer"))
                       for e in d["extras"])
        return cls(layers, extras, int(d["num_heads"]), int(d["d_model"]), int(d["attn_dim"]), int(d["d_ff"]),
                   d["activation"], d.get("group") or transformer_group(d["activation"]))

    @classmethod
    def from_state_dict(cls, sd: Mapping, activation: str = "relu", num_heads: int = DEFAULT_HEADS) -> TransformerSpec:
        """Parse a transformer encoder's state dict; any key outside the recognised layout raises naming it."""
        from metanets.transformer.parse import parse_state_dict

        return parse_state_dict(cls, sd, activation, num_heads)
