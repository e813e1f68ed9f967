"""A small real transformer encoder whose function the transformer symmetry tests run (float64).

Two naming styles: "digits" (the digits-transformer zoo: `layers.<l>.attn.*`, affine layer norms, a linear
classifier) and "public" (the public small-transformer zoos: `encoder.<l>.attention.*`, a patch Conv2d
embedding, norms without parameters, a two-layer classifier).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}


class Attention(nn.Module):
    def __init__(self, d, heads, bias=False):
        super().__init__()
        self.heads = heads
        self.queries, self.keys, self.values = (nn.Linear(d, d, bias=bias) for _ in range(3))
        self.out_projection = nn.Linear(d, d, bias=bias)

    def forward(self, x):  # (N, T, d)
        n, t, d = x.shape
        dh = d // self.heads

        def split(y):
            return y.view(n, t, self.heads, dh).transpose(1, 2)

        q, k, v = split(self.queries(x)), split(self.keys(x)), split(self.values(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        return self.out_projection((att @ v).transpose(1, 2).reshape(n, t, d))


class Layer(nn.Module):
    def __init__(self, d, heads, d_ff, activation, attn_bias, affine):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=affine)
        self.attn = Attention(d, heads, attn_bias)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=affine)
        self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class DigitsStyle(nn.Module):
    """Images (N, 8, 8): rows are tokens. Keys as in the digits-transformer zoo."""

    def __init__(self, num_layers=1, d=16, heads=2, d_ff=32, activation="relu", attn_bias=False):
        super().__init__()
        self.embedding = nn.Linear(8, d)
        self.position_embedding = nn.Parameter(0.1 * torch.randn(8, d))
        self.layers = nn.ModuleList(Layer(d, heads, d_ff, activation, attn_bias, True) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, 10)

    def forward(self, x):
        h = self.embedding(x) + self.position_embedding
        for layer in self.layers:
            h = layer(h)
        return self.classifier(self.norm(h).mean(dim=1))


class PublicStyle(nn.Module):
    """Images (N, 1, 8, 8) cut into 2x2 patches (16 tokens). Keys as in the public small-transformer zoos."""

    def __init__(self, num_layers=2, d=12, heads=3, d_ff=24, activation="relu", attn_bias=True):
        super().__init__()
        self.embedding = nn.Module()
        self.embedding.conv1 = nn.Conv2d(1, d, kernel_size=2, stride=2)
        self.embedding.pos_embedding = nn.Parameter(0.1 * torch.randn(16, d))
        self.encoder = nn.ModuleList(Layer(d, heads, d_ff, activation, attn_bias, False) for _ in range(num_layers))
        for layer in self.encoder:  # the public zoos name the attention module `attention`
            layer.attention = layer.attn
            del layer.attn
        self.classifier = nn.Module()
        self.classifier.fc1, self.classifier.fc2 = nn.Linear(d, d), nn.Linear(d, 10)

    def forward(self, x):
        h = self.embedding.conv1(x).flatten(2).transpose(1, 2) + self.embedding.pos_embedding
        for layer in self.encoder:
            h = h + layer.attention(layer.norm1(h))
            h = h + layer.fc2(layer.act(layer.fc1(layer.norm2(h))))
        h = F.layer_norm(h, h.shape[-1:])
        return self.classifier.fc2(torch.relu(self.classifier.fc1(h.mean(dim=1))))


def random_state_dicts(make, n: int, seed: int = 0, scale: float = 1.0) -> list[dict[str, torch.Tensor]]:
    """n state dicts of `make()` in float64; every tensor gets a random perturbation so norms and biases
    are not at their (symmetric) initial values."""
    torch.manual_seed(seed)
    out = []
    for _ in range(n):
        sd = make().state_dict()
        out.append({k: (v.double() + 0.3 * scale * torch.randn(v.shape, dtype=torch.float64)) for k, v in sd.items()})
    return out


def run(make, state_dict, x) -> torch.Tensor:
    net = make().double()
    net.load_state_dict(state_dict)
    with torch.no_grad():
        return net(x)


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: these tensors are tiny, and on a shared machine extra threads
    only wait for each other (a forward pass of the reference net goes from ~0.3 ms to ~200 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
