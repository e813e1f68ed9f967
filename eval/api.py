"""`evaluate_model`: the `metazoo eval` command as a function (also used by the pipeline)."""

from __future__ import annotations

from pathlib import Path

from eval.evaluate import SCALE_EXPONENTS, evaluate
from eval.loading import load_model
from eval.report import log_to_mlflow, result_table, write_json


class ArchitectureMismatch(ValueError):
    pass


def evaluate_model(model_ref: str, table_uri: str, *, split: str = "test", steps=None,
                   exponents=SCALE_EXPONENTS, audit_samples: int = 4, audit_networks: int = 256,
                   batch_size: int = 128, seed: int = 0, json_path: str | None = None,
                   tracking_uri: str | None = None, log_mlflow: bool = True):
    """Load the model, evaluate it on the table's split; returns (result, json path, text table)."""
    from training.batches import target_filter
    from zoo_ingest import open_table

    model, card, run_id = load_model(model_ref, tracking_uri)
    table = open_table(table_uri)
    arch_id = model.spec.arch_id
    if arch_id not in table.archs:
        have = ", ".join(f"{a} ({s.activation})" for a, s in table.archs.items())
        raise ArchitectureMismatch(
            f"table {table_uri!r} has no networks of the architecture model {model_ref!r} was trained for "
            f"({arch_id}, {model.spec.activation}); the table has: {have}"
        )
    target = card.get("target", "test_accuracy")
    where = target_filter(target)
    n = table.count_rows(split, arch_id, steps=steps, where=where)
    if n == 0:
        raise ValueError(f"split {split!r} of {table_uri!r} has no {arch_id} networks with {target!r}")

    def batches():
        for ws, t in table.batches(batch_size, split=split, arch=arch_id, steps=steps, where=where,
                                   targets=[] if target == "label" else [target]):
            yield ws, t[target]

    result = evaluate(model, card, batches, exponents=exponents, audit_samples=audit_samples,
                      audit_max_networks=audit_networks, seed=seed)
    result.update({"model_ref": model_ref, "table": table_uri, "split": split, "target": target,
                   "arch_id": arch_id, "run_id": run_id})
    json_path = Path(json_path or f"eval-{card.get('model', 'model')}.json")
    write_json(result, json_path)
    if log_mlflow and run_id and tracking_uri:
        log_to_mlflow(result, tracking_uri, run_id, json_path, dataset=(table, split, arch_id))
    return result, json_path, result_table(result)
