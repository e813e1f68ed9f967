"""Zoo fixtures written in the on-disk formats the sources read, from torch networks we keep, so that
tests can check the ingested weights against the networks (and run them)."""

from __future__ import annotations

import argparse
import csv
import gzip
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    """Small-CNN-Zoo-shaped net with an asymmetric kernel (3, 2), so a swapped h/w cannot pass."""

    def __init__(self, activation: str = "relu", channels: int = 4, classes: int = 3):
        super().__init__()
        self.act = torch.relu if activation == "relu" else torch.tanh
        self.conv1 = nn.Conv2d(1, channels, (3, 2))
        self.conv2 = nn.Conv2d(channels, channels, (3, 2))
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


# (TF variable name, torch key) in the row order of weights.npy
TF_VARIABLES = [
    ("sequential/conv2d/kernel:0", "conv1.weight"),
    ("sequential/conv2d/bias:0", "conv1.bias"),
    ("sequential/conv2d_1/kernel:0", "conv2.weight"),
    ("sequential/conv2d_1/bias:0", "conv2.bias"),
    ("sequential/dense/kernel:0", "fc.weight"),
    ("sequential/dense/bias:0", "fc.bias"),
]


def to_tf(key: str, t: torch.Tensor) -> np.ndarray:
    if t.ndim == 4:  # (out, in, h, w) -> (h, w, in, out)
        return t.permute(2, 3, 1, 0).numpy()
    if t.ndim == 2:  # (out, in) -> (in, out)
        return t.T.numpy()
    return t.numpy()


def write_smallcnnzoo(
    root: Path,
    n: int = 24,
    seed: int = 0,
    inf_rows=(),
    missing_metric_rows=(),
    drop_last_variable: bool = False,
    channels: int = 4,
    modeldir: bool = True,
) -> dict:
    """A Small CNN Zoo folder of `n` checkpoints in the published layout: one network per run of 3
    rows (steps 0/1/2, named by the `modeldir` column unless `modeldir=False`), relu and tanh
    networks alternating.

    Returns {"state_dicts": [...], "activations": [...], "steps": [...], "accuracy": [...]} in row order.
    """
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rows, sds, acts, steps, accs = [], [], [], [], []
    layout = []
    for i in range(n):
        act = "relu" if (i // 3) % 2 == 0 else "tanh"
        net = TinyCNN(act, channels=channels)
        sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
        parts, pos = [], 0
        for varname, key in TF_VARIABLES:
            arr = to_tf(key, sd[key])
            if i == 0:
                layout.append((varname, pos, pos + arr.size, str(tuple(arr.shape))))
            parts.append(arr.reshape(-1))
            pos += arr.size
        row = np.concatenate(parts).astype(np.float32)
        if i in inf_rows:
            row[5] = np.inf
        rows.append(row)
        sds.append(sd)
        acts.append(act)
        steps.append(i % 3)
        accs.append(None if i in missing_metric_rows else round(0.1 + 0.8 * i / n, 6))
    np.save(root / "weights.npy", np.stack(rows))
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "step",
                "test_accuracy",
                "train_accuracy",
                "test_loss",
                "train_loss",
                "config.activation",
                "config.learning_rate",
                "config.dataset",
                "config.random_seed",
                *(["modeldir"] if modeldir else []),
            ]
        )
        for i in range(n):
            acc = "" if accs[i] is None else accs[i]
            run = [f"/cns/zoo/mnist/run-{i // 3:04d}"] if modeldir else []
            w.writerow([steps[i], acc, 0.5, 1.0 + i, 0.9, acts[i], 0.01 * (1 + i % 4), "mnist", 42, *run])
    if drop_last_variable:
        layout = layout[:-1]
    with open(root / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        w.writerows(layout)
    return {"state_dicts": sds, "activations": acts, "steps": steps, "accuracy": accs}


def siren_state_dict(hidden: int = 8, seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    sizes = [2, hidden, hidden]
    for i in range(2):
        sd[f"net.{i}.linear.weight"] = torch.randn(sizes[i + 1], sizes[i], generator=g)
        sd[f"net.{i}.linear.bias"] = torch.randn(sizes[i + 1], generator=g)
    sd["net.2.weight"] = torch.randn(1, hidden, generator=g)
    sd["net.2.bias"] = torch.randn(1, generator=g)
    return sd


def write_nfn_siren(root: Path, per_label: int = 4, labels=(0, 1, 2)) -> dict:
    """`randinit_smaller_<label>s/net<idx>.pth`, indices interleaved over labels. Returns {idx: (label, sd)}."""
    out = {}
    idx = 0
    for _ in range(per_label):
        for label in labels:
            folder = root / f"randinit_smaller_{label}s"
            folder.mkdir(parents=True, exist_ok=True)
            sd = siren_state_dict(seed=1000 + idx)
            torch.save(sd, folder / f"net{idx}.pth")
            out[idx] = (label, sd)
            idx += 1
    return out


def mlp_state_dict(hidden: int = 8, seed: int = 0) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        [
            ("fc1.weight", torch.randn(hidden, 5, generator=g)),
            ("fc1.bias", torch.randn(hidden, generator=g)),
            ("fc2.weight", torch.randn(3, hidden, generator=g)),
            ("fc2.bias", torch.randn(3, generator=g)),
        ]
    )


def write_checkpoints(root: Path, n: int = 8, with_metadata: bool = True) -> dict:
    """Alternating .safetensors / .pt MLP checkpoints plus metadata.csv; returns {file: state dict}."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        sd = mlp_state_dict(seed=i)
        name = f"run{i // 2}/epoch_{i}.safetensors" if i % 2 == 0 else f"run{i // 2}/epoch_{i}.pt"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".safetensors"):
            save_file(dict(sd), root / name)
        else:
            torch.save(sd, root / name)
        out[name] = sd
    if with_metadata:
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ckpt_file", "ckpt_epoch", "test_accuracy", "train_loss", "activation", "learning_rate"])
            for i, name in enumerate(out):
                w.writerow([name, i, 0.5 + i / 100, 0.3, "relu", 0.001])
    return out


def pickled_with_code(path: Path, sd) -> None:
    """A .pt checkpoint that needs a non-tensor global (argparse.Namespace) to unpickle."""
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path)


@pytest.fixture(scope="session")
def zoo_writers():
    """The fixture writers, as a namespace (tests call them with their own tmp_path)."""
    return argparse.Namespace(
        smallcnnzoo=write_smallcnnzoo,
        nfn_siren=write_nfn_siren,
        checkpoints=write_checkpoints,
        siren_state_dict=siren_state_dict,
        mlp_state_dict=mlp_state_dict,
        pickled_with_code=pickled_with_code,
        TinyCNN=TinyCNN,
    )


def read_rows(table_uri: str, storage_options=None):
    """All rows of a table as a sorted list of dicts (tensor columns as tuples), via pyarrow alone."""
    import pyarrow.parquet as pq

    from zoo_ingest import open_table

    table = open_table(table_uri, storage_options)
    afs, _ = table.location.arrow()
    rows = []
    for arch, spec in table.archs.items():
        for path in table.files(arch=arch):
            split = path.split("split=")[1].split("/")[0]
            for r in pq.read_table(path, filesystem=afs).to_pylist():
                r = {k: (tuple(np.asarray(v).reshape(-1).tolist()) if k in spec.keys else v) for k, v in r.items()}
                rows.append({"arch": arch, "split": split, **r})
    return sorted(rows, key=lambda r: r["model_id"])


@pytest.fixture(scope="session")
def table_rows():
    return read_rows


AWS_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


@pytest.fixture
def clean_env(monkeypatch):
    """No AWS_* variable from the machine leaks into a test; returns monkeypatch to set some."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
