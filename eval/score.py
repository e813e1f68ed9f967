"""Scoring new checkpoints with a trained metanetwork, without writing a weight table first.

A checkpoint argument is a file (`.safetensors`, `.pt`, `.pth`; loaded without unpickling code unless
`allow_pickle`) or a folder in one of the ingest formats (`checkpoints`, `smallcnnzoo`, `nfn-siren`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metanets import SpecError, WeightSpace
from metanets.specs import weight_space_class
from training.metrics import prediction


@dataclass
class Score:
    source: str
    value: float | int | None
    error: str | None = None


def _file_state_dict(path: str, allow_pickle: bool) -> dict:
    from zoo_ingest.sources.loading import LoadError, load_state_dict
    from zoo_ingest.storage import Location

    parent, _, name = path.rstrip("/").rpartition("/")
    loc = Location(parent or ".")
    try:
        data = loc.read_bytes(name)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file") from None
    try:
        return load_state_dict(data, path, allow_pickle=allow_pickle)
    except LoadError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _folder_batches(path: str, format: str, spec, options: dict):
    """(sources, WeightSpace) of the folder's checkpoints that have the model's architecture."""
    from zoo_ingest.sources import Reject, make_source
    from zoo_ingest.storage import Location

    source = make_source(format, Location(path.rstrip("/")), **options)
    plan = source.plan()
    names = plan.inputs.column("source").to_pylist()
    for item in source.read(plan.inputs):
        if isinstance(item, Reject):
            yield [names[item.row]], None, f"{item.reason}: {item.detail}"
            continue
        rows = [names[r] for r in item.rows]
        if item.spec.arch_id != spec.arch_id:
            yield rows, None, (f"architecture {item.spec.arch_id} ({item.spec.activation}) is not the model's "
                               f"{spec.arch_id} ({spec.activation})")
            continue
        flat = np.concatenate([item.tensors[k] for k in spec.keys], axis=1)
        yield rows, weight_space_class(spec).from_flat(torch.from_numpy(flat), spec), None


def score(paths: list[str], model, card: dict, format: str = "checkpoints", allow_pickle: bool = False,
          batch_size: int = 256) -> list[Score]:
    """Predictions of `model` for every checkpoint in `paths` (files or folders)."""
    from zoo_ingest.storage import Location

    spec = model.spec
    kind, loss = card.get("task", "generalization"), card.get("loss", "bce")
    out: list[Score] = []

    def predict(ws: WeightSpace) -> list:
        with torch.no_grad():
            raw = model(ws.float()).numpy()
        return prediction(kind, raw, loss).tolist()

    files: list[tuple[str, dict]] = []
    for path in paths:
        loc = Location(path)
        if loc.fs.isdir(loc.path):
            options = {"allow_pickle": allow_pickle} if allow_pickle else {}
            if format == "checkpoints" and spec.activation:
                options["activation"] = spec.activation
            for rows, ws, error in _folder_batches(path, format, spec, options):
                if ws is None:
                    out += [Score(f"{path}/{r}", None, error) for r in rows]
                else:
                    out += [Score(f"{path}/{r}", v) for r, v in zip(rows, predict(ws))]
            continue
        sd = _file_state_dict(path, allow_pickle)
        try:
            tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
            ws = weight_space_class(spec).from_state_dicts([tensors], spec)
        except SpecError as exc:
            out.append(Score(path, None, f"does not fit the model's architecture: {exc}"))
            continue
        extra = sorted(set(sd) - set(spec.keys))
        if extra:
            out.append(Score(path, None, f"does not fit the model's architecture: unexpected key {extra[0]!r}"))
            continue
        try:
            ws.check_finite()
        except ValueError as exc:
            out.append(Score(path, None, str(exc)))
            continue
        files.append((path, ws))
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        values = predict(type(chunk[0][1]).cat([ws for _, ws in chunk]))
        out += [Score(p, v) for (p, _), v in zip(chunk, values)]
    return out
