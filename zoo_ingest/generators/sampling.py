"""Per-network randomness and hyper-parameter sampling.

Network k of a zoo draws everything random (its hyper-parameters, initial weights, training subset,
mini-batch order, dropout masks) from generators derived from (zoo, seed, k) alone, never from global
state. That is what makes a zoo bit-identical whatever the number of workers or tasks.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch


def network_rng(zoo: str, seed: int, k: int) -> np.random.Generator:
    """The numpy generator of network k: a function of (zoo name, seed, k) only."""
    return np.random.default_rng([zlib.crc32(zoo.encode()), int(seed), int(k)])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU torch generator seeded from `rng` (consumes one draw)."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def checkpoint_epochs(epochs: int, schedule: Sequence[int] = (0, 1, 2, 5, 10)) -> list[int]:
    """Epochs after which a checkpoint is written: the schedule's entries <= `epochs`, plus the final one."""
    return sorted({e for e in schedule if e <= epochs} | {epochs})


def split_of_rank(rank: int) -> str:
    """The split of the network (or, for SIRENs, the image) at position `rank`: 80% train, 10% val, 10% test."""
    r = rank % 10
    return "train" if r < 8 else ("val" if r == 8 else "test")
