"""The registry: one home for the shared type and for the builders' table, imports pointing one way, and
registering a builder in one line."""

import ast
from pathlib import Path

import pytest

import metanets
from metanets import NetworkSpec, registry
from metanets.metanetwork import Metanetwork
from tests.metanets.reference_nets import MLP

ROOT = Path(metanets.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_imports_point_one_way():
    chain, transformer = _imports(ROOT / "models.py"), _imports(ROOT / "transformer" / "models.py")
    assert "metanets.transformer.models" not in chain
    assert "metanets.models" not in transformer
    for module in ("transformer/parse.py", "transformer/spec.py", "metanetwork.py", "registry.py"):
        imported = _imports(ROOT / module)
        assert not imported & {"metanets.models", "metanets.transformer.models"}, module
    assert "metanets.registry" not in _imports(ROOT / "metanetwork.py")
    assert {"metanets.metanetwork", "metanets.registry"} <= chain & transformer


def test_every_registered_builder_is_reachable_from_both_entry_points():
    from metanets import models

    assert models.build_model is metanets.build_model
    assert set(registry.BUILDER_MODULES) == {"metanets.models", "metanets.transformer.models"}
    transformer = {n for n, k in registry.KIND_OF.items() if k == "transformer"}
    assert transformer == {"transformer_nfn", "transformer_nfn_quasi"}


def test_registering_a_builder_is_one_line():
    spec = NetworkSpec.from_state_dict(MLP().state_dict(), activation="relu")
    try:
        @registry.register("tiny_test_model")
        def tiny(spec, out_dim=1):
            return Metanetwork("tiny_test_model", spec, None, None, None, "perm", True)

        assert "tiny_test_model" in metanets.model_names()
        assert metanets.build_model("tiny_test_model", spec).name == "tiny_test_model"
        with pytest.raises(ValueError, match="registered twice"):
            registry.register("tiny_test_model")(lambda spec: None)
        with pytest.raises(ValueError, match="kind"):
            registry.register("other", kind="graph")
    finally:
        registry.BUILDERS.pop("tiny_test_model", None)
        registry.KIND_OF.pop("tiny_test_model", None)
