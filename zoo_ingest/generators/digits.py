"""The digits data every built-in zoo trains on: scikit-learn's 1,797 labelled 8x8 images.

The data ships inside scikit-learn, so nothing is downloaded. The train/test split is fixed (seeded by
`SPLIT_SEED`, independent of a zoo's seed), so every network of every zoo is measured on the same
held-out images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

SPLIT_SEED = 0
NUM_IMAGES = 1797
NUM_TEST = 360  # 20%: 1,437 train images, 360 test images
NUM_CLASSES = 10


@dataclass(frozen=True)
class Digits:
    """Images `(N, 8, 8)` float32 in [0, 1] and labels `(N,)` int64, for one split."""

    images: torch.Tensor
    labels: torch.Tensor


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    if data.images.shape != (NUM_IMAGES, 8, 8):
        raise RuntimeError(f"scikit-learn digits has shape {data.images.shape}, expected ({NUM_IMAGES}, 8, 8)")
    images = (data.images / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
    return images, data.target.astype(np.int64)


def all_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images `(1797, 8, 8)` in [0, 1] and their digits `(1797,)`, in scikit-learn's order."""
    images, labels = _load()
    return torch.from_numpy(images), torch.from_numpy(labels)


@functools.lru_cache(maxsize=2)
def split(name: str) -> Digits:
    """The fixed `train` (1,437 images) or `test` (360 images) split."""
    if name not in ("train", "test"):
        raise ValueError(f"unknown digits split {name!r}; choose 'train' or 'test'")
    images, labels = all_images()
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(NUM_IMAGES))
    idx = order[:NUM_TEST] if name == "test" else order[NUM_TEST:]
    return Digits(images[idx].contiguous(), labels[idx].contiguous())
