"""Figures written to files (matplotlib's Agg backend: no screen needed): training curves and the
confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415  (imported on use: plotting is optional work)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def best_epoch(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest held-out top-1 (the first of equals): the one ``best.npz`` holds."""
    best = metrics[0]
    for m in metrics:
        if m["test_acc"] > best["test_acc"]:
            best = m
    return best


def curves_figure(metrics: Sequence[dict[str, Any]], title: str = "") -> Any:
    """A matplotlib figure of three panels per epoch: the loss and the top-1 accuracy, train and held-out,
    and the learning rate (the rate each epoch's last step used, as ``metrics.jsonl`` records it).

    The x axes show whole epochs only; a dashed line marks the best epoch (highest held-out top-1, the
    one ``best.npz`` holds) on every panel, and the accuracy panel labels it."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    epochs = [m["epoch"] for m in metrics]
    best = best_epoch(metrics)
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    ax_loss.plot(epochs, [m["test_loss"] for m in metrics], "s-", label="held-out")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.plot(epochs, [100 * m["train_acc"] for m in metrics], "o-", label="train")
    ax_acc.plot(epochs, [100 * m["test_acc"] for m in metrics], "s-", label="held-out")
    ax_acc.plot([best["epoch"]], [100 * best["test_acc"]], "*", color="black", markersize=14, zorder=5)
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    ax_lr.plot(epochs, [m["lr"] for m in metrics], "o-", color="tab:green", label="learning rate")
    ax_lr.set(xlabel="epoch", ylabel="learning rate (last step of the epoch)", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    label = f"best: epoch {best['epoch']}, {100 * best['test_acc']:.1f}% held-out"
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.axvline(best["epoch"], color="gray", linestyle="--", linewidth=1, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(metrics: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write :func:`curves_figure` of ``metrics`` (the lines of ``metrics.jsonl``) to ``path``."""
    plt = _pyplot()
    fig = curves_figure(metrics, title)
    path = Path(path)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """The confusion matrix, rows = true class, columns = predicted class, normalised per row."""
    plt = _pyplot()
    k = len(classes)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.35 * k)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        ax.set_xticks(range(k), classes, rotation=90)
        ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)  # also when the file cannot be written
    return path
