"""Real torch networks whose functions the symmetry tests run (float64)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "leaky_relu": F.leaky_relu}


class MLP(nn.Module):
    def __init__(self, sizes=(5, 8, 7, 3), activation="relu", bias=True):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes, sizes[1:]))
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class SmallCNN(nn.Module):
    """The Small CNN Zoo architecture: 3 conv 3x3 stride 2 (1->16->16->16), GAP, linear 16->10."""

    def __init__(self, activation="relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):  # (N, 1, 8, 8)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


class Siren(nn.Module):
    """SIREN 2 -> 32 -> 32 -> 1 with sin(omega_0 * (W x + b)) on the hidden layers."""

    def __init__(self, hidden=32, omega_0=30.0):
        super().__init__()
        self.net = nn.ModuleList([nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)])
        self.omega_0 = omega_0

    def forward(self, x):
        for layer in self.net[:-1]:
            x = torch.sin(self.omega_0 * layer(x))
        return self.net[-1](x)


def random_state_dicts(make, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    return [{k: v.double() for k, v in make().state_dict().items()} for _ in range(n)]


def run(make, state_dict, x) -> torch.Tensor:
    net = make().double()
    net.load_state_dict(state_dict)
    with torch.no_grad():
        return net(x)
