"""Every Linear/Conv2d model family goes through the export MLflow logs (`torch.export` of the flat-input
wrapper with a dynamic batch, the pickle-free pt2 format) and the exported program computes what the model
does. A trial that trained for minutes must not fail at this last step."""

import pytest
import torch

from metanets import NetworkSpec, build_model
from training.model_io import FlatInputModel, example_input
from zoo_ingest.generators.cnn import build_digits_cnn

FAMILIES = {
    "statnet": {}, "np": {"hidden": 2}, "hnp": {"hidden": 2}, "monomial_nfn": {"hidden": 4},
    "monomial_nfn_quasi": {"hidden": 4},
    "monomial_nfn_quasi_feature": {"hidden": 4, "alpha_source": "feature"},
    "np_canon": {"hidden": 2}, "hnp_canon": {"hidden": 2}, "statnet_canon": {},
}


@pytest.mark.parametrize("label", FAMILIES)
def test_model_exports_with_a_dynamic_batch(label):
    spec = NetworkSpec.from_state_dict(build_digits_cnn("relu").state_dict(), activation="relu")
    name = "monomial_nfn_quasi" if label.startswith("monomial_nfn_quasi") else label
    torch.manual_seed(0)
    flat = FlatInputModel(build_model(name, spec, **FAMILIES[label]).eval())
    x = torch.from_numpy(example_input(spec))
    program = torch.export.export(flat, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    # the pt2 file must load where metazoo's compile-only operators (metanets.layers.common.relu) are not
    ours = [str(n.target) for n in program.graph.nodes if n.op == "call_function" and "metazoo" in str(n.target)]
    assert not ours, ours
    batch = torch.randn(3, x.shape[1], generator=torch.Generator().manual_seed(1)) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(program.module()(batch), flat(batch))


SINE_FAMILIES = {
    "statnet_canon_phase": {"standardize": True}, "hnp_canon_phase": {"hidden": 2, "standardize": True},
    "monomial_nfn_phase": {"hidden": 4, "standardize": True}, "monomial_nfn_siren_quasi": {"hidden": 4},
    "statnet": {"standardize": True}, "statnet_sine": {},
}


@pytest.mark.parametrize("name", SINE_FAMILIES)
def test_inr_model_exports_with_a_dynamic_batch(name):
    """The INR families, standardised heads (BatchNorm running statistics) included, after some training steps."""
    from zoo_ingest.generators.siren import build_siren

    spec = NetworkSpec.from_state_dict(build_siren().state_dict(), activation="sine")
    torch.manual_seed(0)
    model = build_model(name, spec, out_dim=10, **SINE_FAMILIES[name])
    flat = FlatInputModel(model)
    x = torch.from_numpy(example_input(spec, 8))
    model.train()
    with torch.no_grad():
        flat(x)  # moves the running statistics away from 0 / 1
    flat.eval()
    program = torch.export.export(flat, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    batch = torch.randn(3, x.shape[1], generator=torch.Generator().manual_seed(1)) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(program.module()(batch), flat(batch))
    # the pickle-free model folder keeps the running statistics
    import tempfile

    from training.model_io import load_metanet, make_card, save_metanet

    with tempfile.TemporaryDirectory() as folder:
        save_metanet(folder, model, make_card(name, {"out_dim": 10, **SINE_FAMILIES[name]}, spec))
        loaded, _ = load_metanet(folder)
    with torch.no_grad():
        torch.testing.assert_close(FlatInputModel(loaded)(batch), flat(batch))
