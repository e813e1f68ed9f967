"""The model registry: `build_model(name, spec, **kwargs)` and `model_names()`.

Builders register themselves where they are defined, with one line above the function:

    @register("my_model")                      # reads Linear/Conv2d chains (NetworkSpec)
    @register("my_model", kind="transformer")  # reads transformer encoders (TransformerSpec)

This module imports no builder: the builder modules import `register` from here (imports point one way),
and `metanets/__init__.py` imports each builder module once (`BUILDER_MODULES`), so they are registered
whenever `metanets` is imported. A builder in a new module is registered by adding that module to
`BUILDER_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from metanets.spec import SpecError

KINDS = ("network", "transformer")
BUILDER_MODULES = ("metanets.models", "metanets.transformer.models")
BUILDERS: dict[str, Callable] = {}
KIND_OF: dict[str, str] = {}


def register(name: str, kind: str = "network") -> Callable[[Callable], Callable]:
    """Decorator: register `builder(spec, out_dim=1, **kwargs) -> Metanetwork` as model `name`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def add(builder: Callable) -> Callable:
        if name in BUILDERS and BUILDERS[name] is not builder:
            raise ValueError(f"model {name!r} is registered twice")
        BUILDERS[name], KIND_OF[name] = builder, kind
        return builder

    return add


def load_builders() -> None:
    for module in BUILDER_MODULES:
        importlib.import_module(module)


def model_names() -> list[str]:
    load_builders()
    return sorted(BUILDERS)


def build_model(name: str, spec, **kwargs):
    """Build metanetwork `name` for networks of `spec`; kwargs are the builder's hyper-parameters."""
    load_builders()
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    kind = "transformer" if getattr(spec, "type", None) == "transformer" else "network"
    if kind == "transformer" and KIND_OF[name] != "transformer":
        transformer_models = sorted(n for n, k in KIND_OF.items() if k == "transformer")
        raise SpecError(f"model {name!r} reads Linear/Conv2d chains; for transformer encoders use "
                        f"{', '.join(transformer_models)}")
    try:
        return BUILDERS[name](spec, **kwargs)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: {exc}") from exc
