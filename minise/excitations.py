"""What the excitations learn, from any checkpoint: ``python -m minise.excitations --checkpoint PATH``.

The analysis of Sec. 7.2 of the SENet paper (TPAMI 2019), as lesson 13 builds it by hand:

1. **Record** the excitation of every SE block on the held-out images, with forward hooks
   (``register_forward_hook``): each hook stores ``block.excitation(x)`` for the block's input ``x``,
   the gates (N, C) (for NoSqueeze blocks, whose gate is a full map, its mean over the pixels).
2. **Fig. 6**: at the last SE block of each stage, the mean gate per channel for a few classes (one
   line each) and for all images.
3. **Fig. 7**: at the same blocks, for two classes, the mean gate per channel over the images of the
   class with a band of ± 1 sd: how much single images spread around their class's mean.
4. **Class specificity** of every block, against shuffled labels:

   * ``ratio`` = between / within, lesson 13's measure: *between* the mean distance between two class
     means of the gate vectors, *within* the mean distance of an image's gates to its class mean;
   * ``eta2`` = the between-class share of the gates' variance, sum_k n_k |m_k - m|^2 / sum_i |e_i - m|^2
     (0: the class says nothing about the gates, 1: every image of a class has the same gates);

   each next to its mean over ``--shuffles`` random relabellings (the value that class means drawn by
   chance already give); ``x chance`` = ratio / its shuffled mean (about 1: no class information).

Writes ``fig6.png``, ``fig7.png`` and ``excitations.json`` to ``--out`` (default: next to the
checkpoint, in ``excitations/``) and prints the specificity table. ``--pretrained FILE --model NAME``
analyses timm/torchvision weights instead of a checkpoint (ImageNet's normalisation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minise import backend
from minise.autograd import no_grad
from minise.checkpoint import CheckpointError, load_checkpoint
from minise.cli import HelpFormatter, OneLineParser
from minise.nn import Module, SEBlock
from minise.tensor import Tensor


# --------------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording(model: Module) -> Iterator[dict[str, list[np.ndarray]]]:
    """Inside the block, every SE block of ``model`` appends its gates (N, C) to ``records[name]``;
    the hooks are removed on leaving it."""
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, SEBlock)}
    records: dict[str, list[np.ndarray]] = {name: [] for name in blocks}

    def hook_for(name: str) -> Any:
        def hook(block: SEBlock, args: tuple[Any, ...], output: Any) -> None:
            e = block.excitation(args[0]).numpy()
            records[name].append(e.mean(axis=(2, 3)) if e.ndim == 4 else e)  # NoSqueeze: mean over pixels

        return hook

    handles = [block.register_forward_hook(hook_for(name)) for name, block in blocks.items()]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def record_excitations(model: Module, batches: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({block name: gates (N, C)}, labels (N,)) over ``batches`` of (x, y), in eval mode, no gradients."""
    model.eval()
    labels = []
    with no_grad(), recording(model) as records:
        for xb, yb in batches:
            model(Tensor(backend.to_device(xb)))
            labels.append(np.asarray(yb))
    if not records:
        raise ValueError(f"excitations: {type(model).__name__} has no SE blocks - analyse an SE model")
    return {name: np.concatenate(chunks).astype(np.float64) for name, chunks in records.items()}, np.concatenate(labels)


def last_blocks_of_stages(model: Module, names: Sequence[str]) -> list[str]:
    """The last SE block of each stage (``layerK.<i>.se``), the blocks the paper's Fig. 6 shows."""
    last: dict[str, str] = {}
    for name in names:
        last[name.split(".", 1)[0]] = name  # named_modules order: the last one of a stage wins
    return list(last.values())


# --------------------------------------------------------------------------------------------------
# class specificity
# --------------------------------------------------------------------------------------------------
def class_specificity(gates: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """(between, within, between / within, eta2) of gates (N, C) and labels (N,); see the module
    docstring. Gates that do not vary give ratio 0 and eta2 0."""
    gates = np.asarray(gates, dtype=np.float64)
    classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    means = np.stack([gates[index == k].mean(axis=0) for k in range(len(classes))])  # (K, C)
    pairwise = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)  # (K, K)
    between = float(pairwise[np.triu_indices(len(classes), k=1)].mean()) if len(classes) > 1 else 0.0
    within = float(np.linalg.norm(gates - means[index], axis=1).mean())
    total = float(((gates - gates.mean(axis=0)) ** 2).sum())
    eta2 = float((counts[:, None] * (means - gates.mean(axis=0)) ** 2).sum() / total) if total > 0 else 0.0
    return between, within, (between / within if within > 0 else 0.0), eta2


def specificity(gates: np.ndarray, labels: np.ndarray, shuffles: int = 20, seed: int = 0) -> dict[str, float]:
    """The measures of :func:`class_specificity` and their means over ``shuffles`` relabellings."""
    between, within, ratio, eta2 = class_specificity(gates, labels)
    rng = np.random.default_rng(seed)
    chance = [class_specificity(gates, rng.permutation(labels)) for _ in range(shuffles)]
    ratio_chance = float(np.mean([c[2] for c in chance]))
    return {
        "between": between,
        "within": within,
        "ratio": ratio,
        "ratio_shuffled": ratio_chance,
        "times_chance": ratio / ratio_chance if ratio_chance > 0 else 0.0,
        "eta2": eta2,
        "eta2_shuffled": float(np.mean([c[3] for c in chance])),
    }


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------
def plot_fig6(E: dict[str, np.ndarray], labels: np.ndarray, blocks: Sequence[str], classes: Sequence[int],
              class_names: Sequence[str], path: Path) -> Path:  # fmt: skip
    """Mean gate per channel at each of ``blocks``: one line per chosen class, one for all images."""
    from minise.plotting import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 3.4), squeeze=False)
    for ax, name in zip(axes[0], blocks):
        channels = np.arange(E[name].shape[1])
        for k in classes:
            ax.plot(channels, E[name][labels == k].mean(axis=0), lw=1, label=class_names[k])
        ax.plot(channels, E[name].mean(axis=0), "k--", lw=1.2, label="all")
        ax.set(title=name, xlabel="channel index", ylabel="mean excitation", ylim=(-0.02, 1.02))
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_fig7(E: dict[str, np.ndarray], labels: np.ndarray, blocks: Sequence[str], pair: Sequence[int],
              class_names: Sequence[str], path: Path) -> Path:  # fmt: skip
    """For two classes: the mean gate per channel over the class's images, with a ± 1 sd band."""
    from minise.plotting import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    fig, axes = plt.subplots(len(pair), len(blocks), figsize=(4.2 * len(blocks), 2.8 * len(pair)), squeeze=False)
    for row, k in enumerate(pair):
        for ax, name in zip(axes[row], blocks):
            gates = E[name][labels == k]
            channels = np.arange(gates.shape[1])
            mean, sd = gates.mean(axis=0), gates.std(axis=0)
            ax.fill_between(channels, mean - sd, mean + sd, alpha=0.3, label="± 1 sd over images")
            ax.plot(channels, mean, lw=1, label="mean")
            ax.set(title=f"{name}: {class_names[k]} ({len(gates)} images)", xlabel="channel index",
                   ylabel="excitation", ylim=(-0.02, 1.02))  # fmt: skip
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m minise.excitations",
        description="Record every SE block's excitation on held-out images; draw the SENet paper's Figs. 6 and 7; "
        "print how class-specific each block is against shuffled labels; write the numbers as JSON.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", default=None, help="a .npz checkpoint written by minise.train")
    p.add_argument("--pretrained", default=None, help="instead: a timm/torchvision .safetensors file (with --model)")
    p.add_argument("--model", default=None, help="with --pretrained: the minise model, e.g. se_resnet50")
    p.add_argument("--dataset", default=None, help="the data set (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir", default=None, help="folder holding the data set (default: $MINISE_DATA)")
    p.add_argument("--download", action="store_true", help="download the data set if it is missing")
    p.add_argument("--test-images", type=int, default=None, metavar="N", help="only N held-out images (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: 256; 64 for images)")
    p.add_argument("--image-size", type=int, default=None, help="image folders: crop side (default: the run's)")
    p.add_argument("--image-release", default=None, help="image folders: 160, 320 or full (default: the run's)")
    p.add_argument("--classes", default=None, help="Fig. 6: comma-separated class indices or names (default: 4)")
    p.add_argument("--shuffles", type=int, default=20, help="relabellings for the chance level")
    p.add_argument("--seed", type=int, default=0, help="seed of the relabellings")
    p.add_argument("--out", default=None, help="folder for fig6.png, fig7.png, excitations.json")
    return p


class ExcitationsError(ValueError):
    """Bad input, said in one line."""


def _pick_classes(spec: str | None, names: Sequence[str], labels: np.ndarray) -> list[int]:
    present = [int(k) for k in np.unique(labels)]
    if spec is None:
        return present[:4]
    picked = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        k = int(item) if item.isdigit() else (list(names).index(item) if item in names else -1)
        if k not in present:
            raise ExcitationsError(
                f"--classes: {item!r} is not a class with held-out images here - use indices 0..{len(names) - 1} "
                f"or names such as {', '.join(names[:4])}"
            )
        picked.append(k)
    return picked


def _source(args: argparse.Namespace) -> tuple[Module, dict[str, Any]]:
    """The model and a meta dict (model, num_classes, dataset, normalize, config) from either source."""
    from minise import data, models  # noqa: PLC0415
    from minise.evaluate import model_from_checkpoint  # noqa: PLC0415

    if (args.checkpoint is None) == (args.pretrained is None):
        raise ExcitationsError("give either --checkpoint (a minise run) or --pretrained FILE --model NAME")
    if args.checkpoint is not None:
        meta, arrays = load_checkpoint(args.checkpoint)
        return model_from_checkpoint(meta, arrays, args.checkpoint), meta
    if args.model is None or args.dataset is None:
        raise ExcitationsError("--pretrained needs --model (e.g. se_resnet50) and --dataset (e.g. imagenette)")
    model = models.create(args.model, pretrained=args.pretrained)
    norm = {"mean": list(data.IMAGENET_MEAN), "std": list(data.IMAGENET_STD)}
    return model, {"model": args.model, "num_classes": None, "dataset": args.dataset, "normalize": norm, "config": {}}


def _batches(args: argparse.Namespace, meta: dict[str, Any], dataset: str) -> tuple[Any, list[str], Any]:
    """(batches of (x, y), class names, a decoding pool to close or None)."""
    from minise import data  # noqa: PLC0415
    from minise.evaluate import load_test_data  # noqa: PLC0415

    ns = argparse.Namespace(
        data_dir=args.data_dir, download=args.download, test_images=args.test_images, batch_size=args.batch_size,
        image_size=args.image_size, image_release=args.image_release, workers=None, cache=False, strict=False,
    )  # fmt: skip
    if meta["num_classes"] is None:  # pretrained ImageNet weights on a data set of other (fewer) classes
        if dataset in data.IMAGE_DATASETS:
            test = data.load_image_dataset(dataset, root=args.data_dir, train=False, download=args.download,
                                           release=args.image_release or "160")  # fmt: skip
            if args.test_images is not None:
                test = test.subset(args.test_images)
            pool = data.DecodePool(None)
            loader = data.ImageFolderLoader(
                test, args.batch_size or 64, transform=data.ResizeCenterCrop(args.image_size or 224),
                mean=meta["normalize"]["mean"], std=meta["normalize"]["std"], pool=pool,
            )  # fmt: skip
            return loader, list(test.classes), pool
        meta = {**meta, "num_classes": 10**9}
    test, loader, pool, _ = load_test_data(ns, meta, dataset)
    return loader, list(test.classes), pool


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pool = None
    try:
        if args.shuffles < 1:
            raise ExcitationsError(f"--shuffles must be at least 1, got {args.shuffles}")
        model, meta = _source(args)
        dataset = args.dataset or meta.get("dataset", "shapes")
        batches, class_names, pool = _batches(args, meta, dataset)
        E, labels = record_excitations(model, batches)
        out = Path(args.out) if args.out else Path(args.checkpoint or args.pretrained).parent / "excitations"
        out.mkdir(parents=True, exist_ok=True)
        classes = _pick_classes(args.classes, class_names, labels)
        fig_blocks = last_blocks_of_stages(model, list(E))
        table = {name: specificity(E[name], labels, args.shuffles, args.seed) for name in E}
    except (ExcitationsError, CheckpointError, ValueError, OSError) as e:
        print(f"minise.excitations: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    finally:
        if pool is not None:
            pool.close()
    print(f"{'block':16s} {'C':>5s} {'ratio':>7s} {'chance':>7s} {'x chance':>9s} {'eta2':>7s} {'eta2 chance':>12s}")
    for name, s in table.items():
        print(f"{name:16s} {E[name].shape[1]:5d} {s['ratio']:7.3f} {s['ratio_shuffled']:7.3f} {s['times_chance']:9.2f} "
              f"{s['eta2']:7.3f} {s['eta2_shuffled']:12.3f}")  # fmt: skip
    result = {
        "source": str(args.checkpoint or args.pretrained),
        "model": meta.get("model"),
        "dataset": dataset,
        "images": int(len(labels)),
        "class_names": class_names,
        "fig6_classes": classes,
        "fig6_blocks": fig_blocks,
        "shuffles": args.shuffles,
        "specificity": table,
        "mean_per_class": {
            name: {class_names[k]: E[name][labels == k].mean(axis=0).tolist() for k in np.unique(labels)}
            for name in fig_blocks
        },
        "mean_all": {name: E[name].mean(axis=0).tolist() for name in fig_blocks},
    }
    tmp = out / ".excitations.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "excitations.json")
    try:
        plot_fig6(E, labels, fig_blocks, classes, class_names, out / "fig6.png")
        plot_fig7(E, labels, fig_blocks, classes[:2], class_names, out / "fig7.png")
    except (OSError, ValueError) as e:
        print(f"minise.excitations: warning: a figure could not be written ({e})", file=sys.stderr)
    print(f"figures and numbers in {out}: fig6.png, fig7.png, excitations.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
