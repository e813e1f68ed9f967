"""Reading a transformer encoder's state dict into a `TransformerSpec` (see spec.py for the layout).

Every key is classified, never guessed from key order: encoder-layer projections by the pattern
`<stack>.<l>.[<sub>.]<role>.<weight|bias>`, layer norms inside a layer, and embeddings / norms /
classifier outside the layers. Anything else, a missing projection, mismatched shapes, or a head count
that does not divide the projection width raises `SpecError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping

from metanets.spec import SpecError
from metanets.transformer.spec import (
    EMBEDDING_ROLES,
    LAYER_KEY,
    ROLES,
    EncoderLayerSpec,
    ExtraSpec,
    role_shape,
    transformer_group,
)

_LAYOUT = (
    "a transformer encoder: layers '<stack>.<l>.[attn.]{queries,keys,values,out_projection}.weight', "
    "'<stack>.<l>.fc1/fc2.weight', layer norms, embeddings, a final norm and a classifier"
)


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in sd[key].shape)


def _is_norm(component: str) -> bool:
    return "norm" in component or component in ("ln", "ln_f") or component.startswith("ln_")


def _outside_role(key: str) -> str | None:
    """Role of a key outside the encoder layers, or None when it is not part of a recognised encoder."""
    parts = key.split(".")
    names = parts[:-1] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts
    if any("pos" in p and "embed" in p for p in names):
        return "position_embedding"
    if any("embed" in p for p in names):
        return "embedding"
    if any(p.startswith(("classifier", "head", "mlp_head")) for p in names):
        return "classifier"
    if any(_is_norm(p) for p in names):
        return "norm"
    return None


def _collect_layers(sd: Mapping) -> tuple[dict[str, dict], dict[str, str], dict[str, int]]:
    """{layer prefix: {(role, leaf): key}}, {layer prefix: stack}, {layer prefix: index}."""
    found: dict[str, dict] = {}
    stacks: dict[str, str] = {}
    index: dict[str, int] = {}
    for key in sd:
        m = LAYER_KEY.match(key)
        if m is None:
            continue
        prefix = m["layer"]
        slot = (m["role"], m["leaf"])
        if slot in found.setdefault(prefix, {}):
            raise SpecError(f"{key}: encoder layer '{prefix}' already has {found[prefix][slot]}")
        found[prefix][slot] = key
        stacks[prefix] = prefix[: -len(m["idx"])].rstrip(".")
        index[prefix] = int(m["idx"])
    return found, stacks, index


def _layer_spec(prefix: str, slots: dict) -> EncoderLayerSpec:
    attn_sub = next((k.rsplit(".", 2)[0] for (r, _), k in slots.items() if r in ROLES[:4]), f"{prefix}.attn")
    weights, biases = [], []
    for role in ROLES:
        w = slots.get((role, "weight"))
        if w is None:
            base = attn_sub if role in ROLES[:4] else prefix
            raise SpecError(f"{base}.{role}.weight: missing (encoder layer '{prefix}' needs all of {', '.join(ROLES)})")
        weights.append(w)
        biases.append(slots.get((role, "bias")))
    return EncoderLayerSpec(prefix, tuple(weights), tuple(biases))


def _check_shapes(layer: EncoderLayerSpec, sd: Mapping, dims: dict) -> None:
    for role, w, b in zip(ROLES, layer.weights, layer.biases):
        shape = _shape(sd, w)
        if len(shape) != 2:
            raise SpecError(f"{w}: shape {shape}, a Linear weight (2-D) was expected")
        want = role_shape(role, dims["d"], dims["D"], dims["f"])
        if shape != want:
            raise SpecError(f"{w}: shape {shape}, expected {want} (d_model {dims['d']}, attention width "
                            f"{dims['D']}, feed-forward width {dims['f']})")
        if b is not None and _shape(sd, b) != (want[0],):
            raise SpecError(f"{b}: shape {_shape(sd, b)}, expected ({want[0]},)")


def parse_state_dict(spec_cls, sd: Mapping, activation: str, num_heads: int):
    group = transformer_group(activation)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise SpecError(f"num_heads must be a positive integer, got {num_heads!r}")
    found, stacks, index = _collect_layers(sd)
    if not any(("queries", "weight") in slots for slots in found.values()):
        first = next(iter(sd), None)
        raise SpecError(f"not {_LAYOUT}: no '<stack>.<l>.[attn.]queries.weight' key (first key: {first!r})")
    order = sorted(found, key=lambda p: (stacks[p], index[p]))
    stack_names = {stacks[p] for p in order}
    if len(stack_names) > 1:
        bad = next(p for p in order if stacks[p] != stacks[order[0]])
        raise SpecError(f"{next(iter(found[bad].values()))}: encoder layers under two prefixes {sorted(stack_names)}")
    if [index[p] for p in order] != list(range(len(order))):
        raise SpecError(f"{order[-1]}: encoder layers are numbered {[index[p] for p in order]}, expected 0..L-1")
    layers = tuple(_layer_spec(p, found[p]) for p in order)
    q = layers[0].key("queries")
    if len(_shape(sd, q)) != 2:
        raise SpecError(f"{q}: shape {_shape(sd, q)}, a Linear weight (2-D) was expected")
    D, d = _shape(sd, q)
    if D % num_heads:
        raise SpecError(f"{q}: {D} rows (the heads' total width) do not split into {num_heads} heads")
    dims = {"d": d, "D": D, "f": _shape(sd, layers[0].key("fc1"))[0]}
    for layer in layers:
        _check_shapes(layer, sd, dims)
    used = {k for layer in layers for k in layer.weights + layer.biases if k}
    extras = []
    for key in sd:
        if key in used:
            continue
        owner = next((l for l, p in enumerate(order) if key.startswith(p + ".")), None)
        if owner is not None:
            rest = key[len(order[owner]) + 1:].split(".")
            if not any(_is_norm(p) for p in rest[:-1]) or _shape(sd, key) != (d,):
                raise SpecError(f"{key}: not a recognised part of encoder layer '{order[owner]}' (attention "
                                f"projections, fc1/fc2, or layer norms of width {d})")
            extras.append(ExtraSpec(key, _shape(sd, key), "layer_norm", owner))
            continue
        role = _outside_role(key)
        if role is None:
            raise SpecError(f"{key}: not part of {_LAYOUT}")
        extras.append(ExtraSpec(key, _shape(sd, key), role))
    # keys order (spec.py): embeddings, then each layer's norms after its group keys, then the rest
    extras.sort(key=lambda e: (e.layer if e.layer is not None else (-1 if e.role in EMBEDDING_ROLES else len(layers)),
                               e.key))
    return spec_cls(layers, tuple(extras), num_heads, d, D, dims["f"], activation.lower(), group)
