"""Loading a trained metanetwork from an MLflow model URI, a run id, or a local folder — never by unpickling.

Accepted references:
    models:/<name>@<alias>, models:/<name>/<version>   registered models
    runs:/<run_id>  or a bare 32-hex run id             a training run
    a local folder holding metanet.json + model.safetensors (a Ray Train checkpoint's `metanet/`)
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from training.model_io import CARD, load_metanet

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ModelNotFound(FileNotFoundError):
    pass


def _run_of(client, uri: str) -> str:
    ref = uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = ref.partition("/")
            if not version:
                raise ModelNotFound(f"{uri}: give a version or an alias (models:/NAME/VERSION or models:/NAME@ALIAS)")
            mv = client.get_model_version(name, version)
    except ModelNotFound:
        raise
    except Exception as exc:
        raise ModelNotFound(f"model {uri!r} not found in the MLflow registry at {client.tracking_uri}: {exc}") \
            from None
    if not mv.run_id:
        raise ModelNotFound(f"model {uri!r} has no training run to load its weights from")
    return mv.run_id


def load_model(ref: str, tracking_uri: str | None = None):
    """(model, card, run_id or None) for any accepted reference."""
    path = Path(ref)
    if path.is_dir():
        folder = path / "metanet" if not (path / CARD).exists() and (path / "metanet" / CARD).exists() else path
        model, card = load_metanet(folder)
        return model, card, None
    if not (ref.startswith(("models:/", "runs:/")) or _RUN_ID.match(ref)):
        raise ModelNotFound(f"{ref!r} is neither a local metanetwork folder nor an MLflow model URI or run id")
    from mlflow import MlflowClient

    from training.config import resolve_tracking_uri
    from training.tracking import check_tracking_server

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    client = MlflowClient(uri)
    if ref.startswith("models:/"):
        run_id = _run_of(client, ref)
    else:
        run_id = ref[len("runs:/"):].strip("/").split("/")[0] if ref.startswith("runs:/") else ref
    try:
        client.get_run(run_id)
    except Exception:
        raise ModelNotFound(f"MLflow run {run_id!r} not found at {uri}") from None
    with tempfile.TemporaryDirectory(prefix="metazoo-model-") as tmp:
        try:
            local = client.download_artifacts(run_id, "metanet", tmp)
        except Exception as exc:
            raise ModelNotFound(
                f"run {run_id} has no 'metanet' artifact (was it trained by metazoo?): {exc}"
            ) from None
        model, card = load_metanet(local)  # weights are copied into the model: the folder can go
    return model, card, run_id
