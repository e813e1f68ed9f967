"""One benchmark trial, as Ray Tune runs it: a function trainable whose driver trains one (family, seed)
with `training.main` (which launches its own TorchTrainer with DeepSpeed), then evaluates the model.

The trial writes its record (`<store>/benchmark/<folder>/trials/<key>.json`) itself, atomically, as soon as
it completes or fails, so an interrupted benchmark loses no completed trial.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
import uuid
from pathlib import Path


def write_record(trials, key: str, record: dict) -> None:
    """`trials`: a zoo_ingest.storage.Location; readers see the old record or the new one."""
    trials.write_bytes(f"{key}.json", json.dumps(record, indent=1, default=str).encode())


def read_records(trials, keys) -> dict[str, dict]:
    out = {}
    for key in keys:
        if trials.exists(f"{key}.json"):
            out[key] = json.loads(trials.read_bytes(f"{key}.json"))
    return out


def run_trial(config: dict, specs: dict) -> None:
    """Tune's function trainable. `config["key"]` picks this trial's spec: family, model, seed, the
    training config (JSON), the evaluation settings, the table and tracking URIs, the trials Location."""
    from ray import tune

    from eval.api import evaluate_model
    from training import main as train_main
    from training.config import TrainConfig

    spec = specs[config["key"]]
    base = {"key": config["key"], "family": spec["family"], "model": spec["model"], "seed": spec["seed"]}
    started = time.time()
    try:
        tcfg = TrainConfig.model_validate(spec["train"])
        tcfg.run_name = f"{spec['family']}-seed{spec['seed']}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        trained = train_main(tcfg)
        ev = spec["eval"]
        ref = f"runs:/{trained.run_id}" if trained.run_id else trained.metanet_path
        with tempfile.TemporaryDirectory(prefix="metazoo-benchmark-") as tmp:
            result, _, _ = evaluate_model(
                ref, spec["table"], split=ev["split"], exponents=tuple(ev["scales"]),
                audit_samples=ev["audit_samples"], audit_networks=ev["audit_networks"],
                json_path=str(Path(tmp) / f"eval-{spec['family']}-seed{spec['seed']}.json"),
                tracking_uri=spec["tracking_uri"], log_mlflow=bool(trained.run_id),
            )
        result.pop("predictions", None)  # per-network outputs stay in the child run's eval JSON
        record = {**base, "status": "ok", "started": started, "finished": time.time(),
                  "wall_s": time.time() - started, "run_id": trained.run_id, "metanet_path": trained.metanet_path,
                  "registered_model": trained.registered_model, "version": trained.version,
                  "champion": trained.champion, "num_params": trained.num_params,
                  "epochs_run": trained.epochs_run, "best_val": trained.metrics.get(f"best_val_{result['metric']}"),
                  "result": result}
    except Exception as exc:
        write_record(spec["trials"], config["key"], {
            **base, "status": "failed", "started": started, "finished": time.time(),
            "wall_s": time.time() - started, "error": f"{type(exc).__name__}: {exc}".strip()[:2000],
            "traceback": traceback.format_exc()[-8000:]})
        raise
    write_record(spec["trials"], config["key"], record)
    metric = result["metric"]
    tune.report({f"test_{metric}": float(result["clean"][metric]), "epochs_run": trained.epochs_run,
                 "wall_s": record["wall_s"]})
