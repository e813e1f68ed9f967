"""The digits-transformer's state-dict layout, as documented in docs/zoos.md, and its symmetries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from zoo_ingest.generate import build_digits_transformer
from zoo_ingest.generators import transformer
from zoo_ingest.generators.sampling import network_rng, torch_generator

DOC = Path(__file__).resolve().parents[2] / "docs" / "zoos.md"
DH, HEADS, D_FF = 8, 2, 32


def documented_shapes(num_layers: int) -> dict[str, tuple[int, ...]]:
    """{key: shape} from the digits-transformer key table of docs/zoos.md, `<l>` expanded."""
    text = DOC.read_text().split("## digits-transformer", 1)[1]
    table = text.split("| key | shape | role |", 1)[1].split("\n\n", 1)[0]
    shapes = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        dims = [tuple(int(x) for x in re.findall(r"\d+", s)) for s in re.findall(r"\(([^)]*)\)", cells[1])]
        assert len(keys) == len(dims), line
        for key, shape in zip(keys, dims):
            for layer in range(num_layers) if "<l>" in key else [None]:
                shapes[key.replace("<l>", str(layer))] = shape
    return shapes


@pytest.mark.parametrize("num_layers,params", [(1, 2634), (2, 4794)])
def test_state_dict_matches_the_documentation(num_layers, params):
    sd = build_digits_transformer(num_layers).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == documented_shapes(num_layers)
    assert sum(v.numel() for v in sd.values()) == params


def random_model(num_layers: int) -> transformer.DigitsTransformer:
    model = build_digits_transformer(num_layers).double()
    transformer.init_weights(model, 1.0, torch_generator(network_rng("test", 1, num_layers)))
    with torch.no_grad():  # non-trivial norms and biases, so the check covers them too
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
    return model.eval()


def act_on_layer(sd: dict, l: int, a: list[torch.Tensor], b: list[torch.Tensor], heads: list[int],
                 neuron_perm: torch.Tensor, neuron_scale: torch.Tensor, couple_keys: bool = True) -> dict:
    """Apply the documented group element to layer l of `sd` (torch layout, see docs/zoos.md)."""
    p = f"layers.{l}."
    wq, wk, wv, wo = (sd[p + f"attn.{n}.weight"] for n in ("queries", "keys", "values", "out_projection"))
    out = dict(sd)
    new = {n: torch.empty_like(w) for n, w in (("q", wq), ("k", wk), ("v", wv), ("o", wo))}
    for h in range(HEADS):
        src, dst = slice(heads[h] * DH, heads[h] * DH + DH), slice(h * DH, h * DH + DH)
        # design: W_Q^h = Wq[s_h].T -> W_Q^h A, W_K^h -> W_K^h A^-T, W_V^h -> W_V^h B, W_O^h -> B^-1 W_O^h
        new["q"][dst] = a[h].T @ wq[src]
        new["k"][dst] = (torch.linalg.inv(a[h]) @ wk[src]) if couple_keys else wk[src]
        new["v"][dst] = b[h].T @ wv[src]
        new["o"][:, dst] = wo[:, src] @ torch.linalg.inv(b[h]).T
    for n, key in (("q", "queries"), ("k", "keys"), ("v", "values"), ("o", "out_projection")):
        out[p + f"attn.{key}.weight"] = new[n]
    # feed-forward: permute and positively scale the hidden ReLU neurons
    out[p + "fc1.weight"] = neuron_scale[:, None] * sd[p + "fc1.weight"][neuron_perm]
    out[p + "fc1.bias"] = neuron_scale * sd[p + "fc1.bias"][neuron_perm]
    out[p + "fc2.weight"] = sd[p + "fc2.weight"][:, neuron_perm] / neuron_scale[None, :]
    return out


@pytest.mark.parametrize("num_layers", [1, 2])
def test_documented_group_actions_keep_the_function(num_layers):
    torch.manual_seed(num_layers)
    model = random_model(num_layers)
    x = torch.rand(16, 8, 8, dtype=torch.float64)
    sd = model.state_dict()
    for l in range(num_layers):
        a = [torch.randn(DH, DH, dtype=torch.float64) + 2 * torch.eye(DH, dtype=torch.float64) for _ in range(HEADS)]
        b = [torch.randn(DH, DH, dtype=torch.float64) + 2 * torch.eye(DH, dtype=torch.float64) for _ in range(HEADS)]
        scale = torch.rand(D_FF, dtype=torch.float64) * 2 + 0.25
        sd = act_on_layer(sd, l, a, b, [1, 0], torch.randperm(D_FF), scale)
    moved = build_digits_transformer(num_layers).double().eval()
    moved.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(moved(x), model(x), rtol=1e-9, atol=1e-9)
        key = "layers.0.attn.queries.weight"
        assert not torch.allclose(sd[key], model.state_dict()[key])  # the element did move the weights


def test_an_uncoupled_action_changes_the_function():
    model = random_model(1)
    x = torch.rand(16, 8, 8, dtype=torch.float64)
    eye = torch.eye(DH, dtype=torch.float64)
    a = [torch.randn(DH, DH, dtype=torch.float64) + 2 * eye for _ in range(HEADS)]
    sd = act_on_layer(model.state_dict(), 0, a, [eye, eye], [0, 1], torch.arange(D_FF),
                      torch.ones(D_FF, dtype=torch.float64), couple_keys=False)
    moved = build_digits_transformer(1).double().eval()
    moved.load_state_dict(sd)
    with torch.no_grad():
        assert (moved(x) - model(x)).abs().max() > 1e-3
