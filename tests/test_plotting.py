"""The figures: curves.png has whole-epoch ticks, marks the best epoch and shows the learning rate;
both figures are written as PNG. The matplotlib objects are inspected, not the pixels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minise import plotting

PNG = b"\x89PNG\r\n\x1a\n"


def history(n: int) -> list[dict[str, Any]]:
    """n epochs of a made-up run: held-out top-1 peaks at epoch (n + 1) // 2 + 1 when n > 2."""
    peak = (n + 1) // 2 + 1 if n > 2 else 1
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "test_loss": 2.1 / e,
            "train_acc": 0.1 * e / n,
            "test_acc": 0.5 - 0.01 * abs(e - peak),
            "lr": 0.05 * (1 + math.cos(math.pi * e / n)) + 1e-4,
        }
        for e in range(1, n + 1)
    ]


def visible_ticks(ax: Any) -> list[float]:
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def integer_ticks(ax: Any) -> bool:
    ticks = visible_ticks(ax)
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


def test_the_tick_check_bites_on_a_default_axis() -> None:
    """Matplotlib's default ticks for epochs 1..3 are 1.00, 1.25, ...: the check must say so."""
    plt = plotting._pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1.0, 0.5, 0.2])
    fig.canvas.draw()
    assert not integer_ticks(ax)
    plt.close(fig)


@pytest.mark.parametrize("n", [1, 3, 7, 30])
def test_curves_have_integer_epoch_ticks_the_best_epoch_and_the_lr(n: int) -> None:
    metrics = history(n)
    fig = plotting.curves_figure(metrics, title="se_resnet20 on shapes")
    try:
        fig.canvas.draw()
        axes = fig.get_axes()
        assert len(axes) == 3
        for ax in axes:
            assert integer_ticks(ax), (ax.get_title(), visible_ticks(ax))
            assert ax.get_xlabel() == "epoch"
        best = plotting.best_epoch(metrics)
        assert best["test_acc"] == max(m["test_acc"] for m in metrics)
        for ax in axes:  # a vertical line at the best epoch, labelled with it, on every panel
            marks = [
                line
                for line in ax.get_lines()
                if list(line.get_xdata()) == [best["epoch"]] * 2 and "best: epoch" in str(line.get_label())
            ]
            assert len(marks) == 1, ax.get_title()
            assert f"epoch {best['epoch']}," in str(marks[0].get_label())
        lr_axes = [ax for ax in axes if "learning rate" in ax.get_ylabel()]
        assert len(lr_axes) == 1
        lr_lines = [line for line in lr_axes[0].get_lines() if line.get_label() == "learning rate"]
        assert len(lr_lines) == 1
        assert np.allclose(lr_lines[0].get_ydata(), [m["lr"] for m in metrics])
        assert list(lr_lines[0].get_xdata()) == [m["epoch"] for m in metrics]
    finally:
        plotting._pyplot().close(fig)


def test_the_best_epoch_is_the_first_of_equals() -> None:
    metrics = history(4)
    for m in metrics:
        m["test_acc"] = 0.5
    assert plotting.best_epoch(metrics)["epoch"] == 1


def test_both_figures_are_written_as_png(tmp_path: Path) -> None:
    curves = plotting.plot_curves(history(3), tmp_path / "curves.png")
    confusion = plotting.plot_confusion(np.eye(3, dtype=np.int64) * 4, ["a", "b", "c"], tmp_path / "c.png")
    assert curves.read_bytes()[:8] == PNG and confusion.read_bytes()[:8] == PNG


def test_an_unwritable_path_raises_and_leaves_no_open_figure(tmp_path: Path) -> None:
    plt = plotting._pyplot()
    before = len(plt.get_fignums())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError):
        plotting.plot_curves(history(2), blocker / "curves.png")
    assert len(plt.get_fignums()) == before
