"""Network specifications: which tensors a checkpoint holds and which group acts on them.

A `NetworkSpec` describes a feed-forward chain of Linear / Conv2d layers (an MLP, a CNN whose last
conv layer feeds a linear layer through global pooling, a SIREN). Layer i has a weight of shape
(n_i, n_{i-1}, *kernel) and an optional bias of shape (n_i,). The group acts on the hidden layers
1..L-1; the activation decides which group that is (see `GROUP_OF_ACTIVATION`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

# Activation -> the group its network's hidden neurons are symmetric under.
#   perm_scale: permutations and positive diagonal scalings (positively homogeneous activations)
#   perm_sign:  permutations and sign flips (odd activations)
#   perm:       permutations only
PERM_SCALE, PERM_SIGN, PERM = "perm_scale", "perm_sign", "perm"
GROUP_OF_ACTIVATION = {
    "relu": PERM_SCALE,
    "leaky_relu": PERM_SCALE,
    "tanh": PERM_SIGN,
    "sine": PERM_SIGN,
    "sin": PERM_SIGN,
    "gelu": PERM,
    "sigmoid": PERM,
    "silu": PERM,
    "elu": PERM,
    "softplus": PERM,
}
KINDS = ("linear", "conv2d")


class SpecError(ValueError):
    """A state dict or weight space does not fit the architecture it is said to have."""


def group_of_activation(activation: str) -> str:
    act = activation.lower()
    if act not in GROUP_OF_ACTIVATION:
        raise SpecError(
            f"activation {activation!r} has no known symmetry group; known: {sorted(GROUP_OF_ACTIVATION)}"
        )
    return GROUP_OF_ACTIVATION[act]


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its state-dict keys, kind and weight shape (n_out, n_in, *kernel)."""

    name: str
    weight_key: str
    bias_key: str | None
    kind: str
    shape: tuple[int, ...]

    @property
    def n_out(self) -> int:
        return self.shape[0]

    @property
    def n_in(self) -> int:
        return self.shape[1]

    @property
    def kernel(self) -> tuple[int, ...]:
        return self.shape[2:]

    @property
    def kernel_size(self) -> int:
        """Number of kernel positions (1 for linear layers)."""
        n = 1
        for k in self.kernel:
            n *= k
        return n

    @property
    def numel(self) -> int:
        return self.n_out * self.n_in * self.kernel_size + (self.n_out if self.bias_key else 0)


@dataclass(frozen=True)
class NetworkSpec:
    """Immutable description of a network's weight space and its symmetry group."""

    layers: tuple[LayerSpec, ...]
    activation: str
    group: str

    def __post_init__(self):
        if not self.layers:
            raise SpecError("a network needs at least one layer")
        for prev, layer in zip(self.layers, self.layers[1:]):
            if layer.n_in != prev.n_out:
                raise SpecError(
                    f"{layer.weight_key}: takes {layer.n_in} inputs but {prev.weight_key} gives "
                    f"{prev.n_out} outputs (only chains of Linear/Conv2d layers joined directly or by "
                    "global pooling are supported)"
                )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Sizes n_1..n_{L-1} of the hidden layers the group acts on."""
        return tuple(layer.n_out for layer in self.layers[:-1])

    @property
    def num_params(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def keys(self) -> tuple[str, ...]:
        """State-dict keys in layer order (weight, then bias when present)."""
        out = []
        for layer in self.layers:
            out.append(layer.weight_key)
            if layer.bias_key:
                out.append(layer.bias_key)
        return tuple(out)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for layer in self.layers:
            shapes[layer.weight_key] = layer.shape
            if layer.bias_key:
                shapes[layer.bias_key] = (layer.n_out,)
        return shapes

    @property
    def arch_id(self) -> str:
        """Content hash of the ordered (name, shape, kind) list and the activation."""
        items = [[layer.weight_key, list(layer.shape), layer.kind] for layer in self.layers]
        items += [[layer.bias_key, [layer.n_out], "bias"] for layer in self.layers if layer.bias_key]
        blob = json.dumps({"layers": items, "activation": self.activation}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "activation": self.activation,
            "group": self.group,
            "layers": [
                {
                    "name": layer.name,
                    "weight_key": layer.weight_key,
                    "bias_key": layer.bias_key,
                    "kind": layer.kind,
                    "shape": list(layer.shape),
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> NetworkSpec:
        layers = tuple(
            LayerSpec(
                name=x["name"],
                weight_key=x["weight_key"],
                bias_key=x.get("bias_key"),
                kind=x["kind"],
                shape=tuple(int(s) for s in x["shape"]),
            )
            for x in d["layers"]
        )
        group = d.get("group") or group_of_activation(d["activation"])
        return cls(layers=layers, activation=d["activation"], group=group)

    @classmethod
    def from_state_dict(
        cls,
        sd: Mapping[str, torch.Tensor],
        activation: str,
        layer_order: list[str] | None = None,
    ) -> NetworkSpec:
        """Build the spec of a Linear/Conv2d chain from its state dict.

        Weights are paired with biases by module prefix (`<prefix>.weight` / `<prefix>.bias`), never by
        key order. Layers are taken in the order their weights appear in `sd` (the module registration
        order of a torch state dict), or in `layer_order` (module prefixes) when given.
        """
        group = group_of_activation(activation)
        weights: dict[str, str] = {}
        biases: dict[str, str] = {}
        for key, value in sd.items():
            prefix, _, leaf = key.rpartition(".")
            if leaf == "weight":
                weights[prefix] = key
            elif leaf == "bias":
                biases[prefix] = key
            else:
                raise SpecError(f"{key}: not a Linear/Conv2d weight or bias (unsupported architecture)")
            ndim = len(tuple(value.shape))
            if leaf == "weight" and ndim not in (2, 4):
                raise SpecError(
                    f"{key}: weight of shape {tuple(value.shape)} is neither Linear (2-D) nor Conv2d (4-D)"
                )
            if leaf == "bias" and ndim != 1:
                raise SpecError(f"{key}: bias of shape {tuple(value.shape)} is not 1-D")
        for prefix, key in biases.items():
            if prefix not in weights:
                raise SpecError(f"{key}: bias without a matching '{prefix}.weight'")
        order = list(weights) if layer_order is None else list(layer_order)
        unknown = [p for p in order if p not in weights]
        if unknown:
            raise SpecError(f"layer_order names {unknown[0]!r}, which has no '.weight' in the state dict")
        missing = [p for p in weights if p not in order]
        if missing:
            raise SpecError(f"{weights[missing[0]]}: not listed in layer_order")
        layers = []
        for prefix in order:
            w = sd[weights[prefix]]
            shape = tuple(int(s) for s in w.shape)
            bias_key = biases.get(prefix)
            if bias_key is not None and tuple(sd[bias_key].shape) != (shape[0],):
                raise SpecError(f"{bias_key}: shape {tuple(sd[bias_key].shape)}, expected ({shape[0]},)")
            kind = "linear" if len(shape) == 2 else "conv2d"
            layers.append(LayerSpec(prefix, weights[prefix], bias_key, kind, shape))
        return cls(layers=tuple(layers), activation=activation.lower(), group=group)
