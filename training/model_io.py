"""Saving and loading trained metanetworks without pickle: weights as safetensors + a JSON card.

A model folder holds `metanet.json` (model name, builder kwargs, the network spec it reads, task,
target, metrics) and `model.safetensors` (its state dict). Evaluation and scoring rebuild the model
with `metanets.build_model` from these, so loading never executes stored code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metanets import NetworkSpec, build_model
from metanets.specs import spec_from_dict, weight_space_class

CARD = "metanet.json"
WEIGHTS = "model.safetensors"


def save_metanet(folder: str | Path, model: nn.Module, card: dict[str, Any]) -> None:
    """Write `model`'s float32 weights and `card`; a compiled model is saved as its uncompiled module."""
    from safetensors.torch import save_file

    from training.engine import clean_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # a torch.compile() wrapper is saved as the module it wraps, so loading needs no compiler
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in clean_state_dict(model).items()}
    save_file(state, str(folder / (WEIGHTS + ".tmp")))
    (folder / (WEIGHTS + ".tmp")).rename(folder / WEIGHTS)
    (folder / CARD).write_text(json.dumps(card, indent=2, sort_keys=True, default=str))


def make_card(name: str, kwargs: dict, spec: NetworkSpec, **extra) -> dict[str, Any]:
    return {"model": name, "kwargs": kwargs, "spec": spec.to_dict(), "arch_id": spec.arch_id, **extra}


def load_metanet(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved metanetwork (float32, eval mode) and return it with its card."""
    from safetensors.torch import load_file

    folder = Path(folder)
    card_path, weights_path = folder / CARD, folder / WEIGHTS
    for p in (card_path, weights_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; not a saved metanetwork folder")
    card = json.loads(card_path.read_text())
    spec = spec_from_dict(card["spec"])
    model = build_model(card["model"], spec, **card["kwargs"])
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval(), card


class FlatInputModel(nn.Module):
    """Wraps a metanetwork to take flat weights (B, P) in `spec.keys` order: the MLflow model's signature."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        # no data-dependent input checks here, so the wrapper exports to MLflow's pickle-free pt2 format
        ws = weight_space_class(self.model.spec).from_flat(flat.to(torch.float32), self.model.spec)
        return self.model.head(self.model.pooled(ws))


def example_input(spec: NetworkSpec, n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.1, size=(n, spec.num_params)).astype(np.float32)
