"""Task metrics: Kendall tau and R^2 for generalisation prediction, accuracy for classification."""

from __future__ import annotations

import numpy as np


def kendall_tau(pred, target) -> float:
    """Kendall's tau-b between predictions and targets (nan when either is constant)."""
    from scipy.stats import kendalltau

    pred, target = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    if len(pred) < 2:
        return float("nan")
    return float(kendalltau(pred, target).statistic)


def r2_score(pred, target) -> float:
    pred, target = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    ss_res = float(np.sum((target - pred) ** 2))
    ss_tot = float(np.sum((target - target.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def accuracy(logits, labels) -> float:
    logits, labels = np.asarray(logits), np.asarray(labels).ravel()
    return float((logits.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


def task_metrics(kind: str, outputs, targets, loss: str = "bce") -> dict[str, float]:
    """Metrics for a task from raw model outputs (logits) and targets."""
    outputs = np.asarray(outputs)
    if kind == "generalization":
        pred = outputs.reshape(-1)
        return {"kendall_tau": kendall_tau(pred, targets), "r2": r2_score(prediction(kind, outputs, loss), targets)}
    return {"accuracy": accuracy(outputs, targets)}


def prediction(kind: str, outputs, loss: str = "bce"):
    """Turn raw outputs into predictions: probabilities/values for regression, classes for classification."""
    outputs = np.asarray(outputs)
    if kind == "generalization":
        raw = outputs.reshape(-1)
        from scipy.special import expit  # the logistic function without overflow

        return expit(raw) if loss == "bce" else raw
    return outputs.argmax(axis=1)


PRIMARY_METRIC = {"generalization": "kendall_tau", "inr_classification": "accuracy"}
