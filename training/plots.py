"""Plots logged with training runs (PNG, readable without the code)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.metrics import prediction, task_metrics


def predictions_plot(kind: str, outputs, targets, path: Path, loss: str = "bce", title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs, targets = np.asarray(outputs), np.asarray(targets)
    metrics = task_metrics(kind, outputs, targets, loss)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if kind == "generalization":
        pred = prediction(kind, outputs, loss)
        ax.scatter(targets, pred, s=8, alpha=0.6)
        lo, hi = float(min(targets.min(), pred.min())), float(max(targets.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = truth")
        ax.set_xlabel("true test accuracy of the network")
        ax.set_ylabel("predicted test accuracy")
        ax.legend(loc="upper left")
        note = f"Kendall tau = {metrics['kendall_tau']:.3f}, R^2 = {metrics['r2']:.3f}, n = {len(targets)}"
    else:
        classes = int(max(outputs.shape[1], targets.max() + 1))
        conf = np.zeros((classes, classes))
        for t, p in zip(targets.astype(int), outputs.argmax(axis=1)):
            conf[t, p] += 1
        im = ax.imshow(conf, cmap="Blues")
        fig.colorbar(im, ax=ax, label="networks")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        note = f"accuracy = {metrics['accuracy']:.3f}, n = {len(targets)}"
    ax.set_title(f"{title}\n{note}" if title else note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
