"""Transformer zoos go through the `checkpoints` ingest and come back as TransformerWeightSpaces."""

import numpy as np
import torch
from safetensors.torch import load_file

from metanets import TransformerSpec, TransformerWeightSpace, build_model, symmetry
from zoo_ingest import ingest, open_table
from zoo_ingest.generate import generate


def test_generated_transformer_zoo_round_trips_through_a_table(tmp_path):
    zoo, table_uri = tmp_path / "zoo", tmp_path / "table"
    generate("digits-transformer", str(zoo), n=6, seed=0, workers=0, progress=False, summary=False)
    summary = ingest(
        str(zoo),
        str(table_uri),
        format="checkpoints",
        zoo="digits-transformer",
        split="none",
        use_ray=False,
        progress=False,
    )
    files = sorted(zoo.glob("*.safetensors"))
    assert summary.rows == len(files) and summary.rejected == 0
    table = open_table(str(table_uri))
    assert all(isinstance(spec, TransformerSpec) for spec in table.archs.values())
    seen = 0
    for arch_id, spec in table.archs.items():
        assert spec.arch_id == arch_id and spec.num_heads == 2
        for ws, targets in table.batches(64, arch=arch_id, targets=["test_accuracy"]):
            assert isinstance(ws, TransformerWeightSpace)
            ids = targets["model_id"]
            # every row's tensors are exactly one of the checkpoint files
            sds = ws.to_state_dicts()
            for sd in sds:
                match = [f for f in files if all(torch.equal(load_file(f)[k], sd[k]) for k in sd)]
                assert len(match) == 1
            seen += len(ids)
            # the tables feed the transformer metanetworks, which are invariant to the group
            torch.manual_seed(0)
            model = build_model("transformer_nfn", spec, hidden=4).double()
            g = symmetry.sample(spec, ws.batch_size, scale=(1.0, 10.0), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                a, b = model(ws.double()), model(symmetry.act(g, ws.double()))
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-9)
    assert seen == len(files)
