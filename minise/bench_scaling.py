"""How the cost of training grows: ``python -m minise.bench scaling [--json FILE] [--figure FILE] [--quick]``.

Two series of training-step benchmarks on the CPU, minise against the same model in PyTorch:

* series A, the batch size: ``se_resnet20`` on 32-pixel images, batches of 16, 32, 64, 128 and 256;
* series B, the image size: ``se_resnet18`` (the ImageNet layout) at batch 16, images of 32, 64, 128 and
  224 pixels (the batch stays fixed so that only the size of the feature maps changes).

Each point is :func:`minise.bench.bench_train`: minise and PyTorch each train in a fresh child process, taking
turns for ``rounds`` rounds, and each framework's median images/s is kept (with every round's rate).

The ceiling. Nearly all the arithmetic of a training step is in the convolutions and the linear layers,
i.e. in multiply-accumulates (MACs, counted by :func:`minise.models.summary.count_macs` at that image
size). The forward pass costs 2 flops per MAC (a multiply and an add); the backward pass computes the
input gradient and the weight gradient, each a product of the same size as the forward one, so 4 flops
per MAC. Training therefore costs about ``6 x MACs`` flops per image, and a machine that ran all of them at
its measured float32 GEMM rate (:func:`minise.bench.gemm_gflops`, a large square product on all cores)
would train

    ceiling images/s = GEMM rate (flop/s) / (6 x MACs per image).

No framework reaches it: the convolutions' GEMMs are thinner than the square one, and batch norm, ReLU,
pooling, SE's squeeze and scale and the SGD update move memory without counting here. (The first
convolution's input gradient is not needed, as the images need no gradient; a framework that skips it
does a little under 6 x MACs: about 6 % less for ResNet-18.) The figure shows how far below it each
framework stays, and whether the gap closes as the work per step grows.

Speed is measured here, never inside a test; ``--quick`` runs tiny points only to check that the command
works end to end. A full run should take about 10 minutes on 2 cores (estimated from the ceiling, not timed:
the 224-pixel point alone, 16 steps of 16 images per round, is a third of it; see :func:`steps_for`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Any

import numpy as np

from minise import bench, cpu

# (model, image size, batch sizes) and (model, batch, image sizes)
BATCH_SERIES = ("se_resnet20", 32, (16, 32, 64, 128, 256))
SIZE_SERIES = ("se_resnet18", 16, (32, 64, 128, 224))
QUICK_BATCH_SERIES = ("se_resnet20", 32, (4, 8))
QUICK_SIZE_SERIES = ("se_resnet18", 2, (32, 64))
IMAGES_PER_ROUND = 256


def steps_for(batch: int) -> int:
    """Default timed steps of one round: enough for ``IMAGES_PER_ROUND`` (256) images, at least 3 steps."""
    return max(3, math.ceil(IMAGES_PER_ROUND / batch))


def macs_per_image(model: str, image_size: int) -> int:
    """Multiply-accumulates of one forward pass of ``model`` (10 classes, as trained here) on one image."""
    from minise import models  # noqa: PLC0415
    from minise.models.summary import count_macs  # noqa: PLC0415

    return count_macs(models.create(model, num_classes=10), (3, image_size, image_size))


def ceiling_images_per_s(gemm_gflops: float, macs: int) -> float:
    """Images/s of a machine running ``6 x macs`` flops per image (forward 2, backward 4 per MAC) at its GEMM
    rate: ``gemm_gflops * 1e9 / (6 * macs)``."""
    return gemm_gflops * 1e9 / (6 * macs)


def machine() -> str:
    """The CPU in a few words: architecture, model name (Linux), cores."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.machine()}{' ' + name if name else ''}, {os.cpu_count()} cores"


def bench_scaling(
    batch_series: tuple[str, int, tuple[int, ...]] = BATCH_SERIES,
    size_series: tuple[str, int, tuple[int, ...]] = SIZE_SERIES,
    rounds: int = 2,
    steps: int | None = None,
    gemm_n: int = 2048,
    progress: bool = True,
) -> dict[str, Any]:
    """Every point of both series (minise and, where importable, PyTorch), with its ceiling (module docstring).

    ``batch_series`` = (model, image size, batch sizes), ``size_series`` = (model, batch, image sizes);
    ``steps`` timed steps per round (None: :func:`steps_for` the batch), ``rounds`` alternating rounds."""
    if rounds < 1 or (steps is not None and steps < 1):
        raise ValueError(f"bench scaling: --rounds and --steps must be >= 1, got {rounds} and {steps}")
    gemm = bench.gemm_gflops(np, gemm_n)  # before torch is imported into this process
    torch = bench._torch()
    plan = [("batch size", batch_series[0], b, batch_series[1]) for b in batch_series[2]]
    plan += [("image size", size_series[0], size_series[1], s) for s in size_series[2]]
    points = []
    for i, (series, model, batch, size) in enumerate(plan, start=1):
        n_steps = steps if steps is not None else steps_for(batch)
        if progress:
            print(f"[{i}/{len(plan)}] {model}, batch {batch}, {size} px, {rounds} x {n_steps} steps", flush=True)
        r = bench.bench_train(model, batch, n_steps, "numpy", rounds, size)
        runs = {run["framework"]: run for run in r["runs"]}
        macs = macs_per_image(model, size)
        ceiling = ceiling_images_per_s(gemm, macs)
        m, t = runs["minise"], runs.get("torch")
        points.append(
            {
                "series": series,
                "model": model,
                "batch": batch,
                "image_size": size,
                "steps": n_steps,
                "macs": macs,
                "ceiling_images_per_s": ceiling,
                "minise": m["images_per_s"],
                "torch": None if t is None else t["images_per_s"],
                "ratio": None if t is None else m["images_per_s"] / t["images_per_s"],
                "minise_of_ceiling": m["images_per_s"] / ceiling,
                "torch_of_ceiling": None if t is None else t["images_per_s"] / ceiling,
                "minise_rounds": m["rounds_images_per_s"],
                "torch_rounds": None if t is None else t["rounds_images_per_s"],
                "parameters": m["parameters"],
            }
        )
    return {
        "machine": machine(),
        "cores": os.cpu_count(),
        "threads": cpu.num_threads(),
        "numpy": np.__version__,
        "torch": None if torch is None else str(torch.__version__),
        "note": None if torch is not None else f"minise alone: {bench.TORCH_HINT}",
        "gemm_gflops": gemm,
        "gemm_n": gemm_n,
        "rounds": rounds,
        "steps": steps if steps is not None else f"max(3, ceil({IMAGES_PER_ROUND} / batch))",
        "flops_per_image": "6 x MACs (forward 2, backward 4)",
        "points": points,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def format_scaling(r: dict[str, Any]) -> str:
    lines = [
        f"minise scaling benchmark: training images/s, {r['machine']}, {r['threads']} threads; median of "
        f"{r['rounds']} alternating rounds, {r['steps']} steps each",
        f"ceiling: float32 GEMM rate ({r['gemm_n']}^3, all cores) {r['gemm_gflops']:.1f} GFLOP/s / "
        f"({r['flops_per_image']} flops per image)",
        f"{'point':<34}{'minise img/s':>13}{'torch img/s':>13}{'ratio':>7}{'ceiling img/s':>15}"
        f"{'minise/ceiling':>16}{'torch/ceiling':>15}",
    ]
    for p in r["points"]:
        name = f"{p['model']}, batch {p['batch']}, {p['image_size']} px"
        torch = "-" if p["torch"] is None else f"{p['torch']:.1f}"
        ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}"
        lines.append(
            f"{name:<34}{p['minise']:>13.1f}{torch:>13}{ratio:>7}{p['ceiling_images_per_s']:>15.1f}"
            f"{_pct(p['minise_of_ceiling']):>16}{_pct(p['torch_of_ceiling']):>15}"
        )
    if r["note"]:
        lines.append(r["note"])
    return "\n".join(lines)


def _two_and_five(v: float, _: Any) -> str:
    """Labels of the minor ticks of a log axis: 2, 5, 20, 50, ... only (the others stay unlabelled)."""
    return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""


def scaling_figure(r: dict[str, Any]) -> Any:
    """One figure, two panels: images/s against the batch size (log2 x) and against the image size (log2 x,
    log y); minise and PyTorch as lines with markers, the ceiling dashed."""
    from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: PLC0415

    from minise.plotting import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, series, key in zip(axes, ("batch size", "image size"), ("batch", "image_size")):
        pts = [p for p in r["points"] if p["series"] == series]
        if not pts:
            continue
        x = [p[key] for p in pts]
        ax.plot(x, [p["minise"] for p in pts], "o-", color="tab:blue", label="minise")
        if all(p["torch"] is not None for p in pts):
            ax.plot(x, [p["torch"] for p in pts], "s-", color="tab:orange", label="PyTorch")
        ax.plot(x, [p["ceiling_images_per_s"] for p in pts], "k--", label="ceiling: GEMM rate / (6 x MACs)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in x])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylabel("training images/s")
        ax.grid(True, alpha=0.3)
        if series == "batch size":
            ax.set_xlabel("batch size (images per step)")
            ax.set_title(f"{pts[0]['model']}, {pts[0]['image_size']} px images")
            ax.set_ylim(bottom=0)
        else:
            ax.set_xlabel("image side (pixels)")
            ax.set_title(f"{pts[0]['model']}, batch {pts[0]['batch']}")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 100, not 10^2
            ax.yaxis.set_minor_formatter(FuncFormatter(_two_and_five))
        ax.legend(fontsize=8)
    torch = "PyTorch " + r["torch"] if r["torch"] else "PyTorch not installed: minise alone"
    fig.suptitle(
        f"Training images/s, minise vs {torch}: {r['machine']}, {r['threads']} thread(s) "
        f"(GEMM {r['gemm_gflops']:.0f} GFLOP/s)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def add_parser(sub: Any) -> None:
    from minise.cli import HelpFormatter  # noqa: PLC0415

    s = sub.add_parser(
        "scaling",
        help="training images/s against batch and image size, minise vs PyTorch, under the GEMM ceiling",
        formatter_class=HelpFormatter,
    )
    s.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE (default: printed only)")
    s.add_argument("--figure", metavar="FILE", default="bench_scaling.png", help="the PNG figure of both series")
    s.add_argument("--rounds", type=int, default=2, help="alternating runs of each framework per point (median)")
    s.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per round (after 2 warm-up steps); default: {IMAGES_PER_ROUND} images' worth, at least 3",
    )
    s.add_argument(
        "--quick",
        action="store_true",
        help="tiny points, 1 step, 1 round: checks the command works (times mean nothing)",
    )


def main(args: Any) -> int:
    """``python -m minise.bench scaling``: run, print the table, write the figure (and the JSON)."""
    if args.quick:
        result = bench_scaling(QUICK_BATCH_SERIES, QUICK_SIZE_SERIES, rounds=1, steps=1, gemm_n=256)
    else:
        result = bench_scaling(rounds=args.rounds, steps=args.steps)
    print(format_scaling(result))
    fig = scaling_figure(result)
    fig.savefig(args.figure, dpi=120)
    import matplotlib.pyplot as plt  # noqa: PLC0415  (pyplot was loaded, on Agg, by scaling_figure)

    plt.close(fig)
    print(f"figure: {args.figure}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
