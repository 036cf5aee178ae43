"""Evaluate a model: top-1, top-5, loss, per-class accuracy and the confusion matrix.

    python -m minise.evaluate --checkpoint runs/se20/best.npz --dataset cifar10 --data-dir DIR [--json]

A checkpoint records the model's name and options, so the model is rebuilt from it; a checkpoint of
another model, with other shapes, or a corrupt or truncated file is refused with one line and exit
status 2.

Nothing is dropped: the results are printed (``--json``: as JSON; ``--json FILE``: also written there)
before any figure is drawn, and a figure that cannot be written is a one-line warning. The confusion
matrix goes to ``<checkpoint name>_confusion_<dataset>.png`` next to the checkpoint (``--out DIR``:
there; ``--plot FILE``; ``--no-plot``), so evaluations on different data sets never overwrite each other.
A model evaluated at another image size than it was trained at (``input_size`` in the checkpoint) gets a
one-line warning.

On an image-folder data set (imagenette, imagewoof, imagefolder) the ``val/`` split is evaluated with the
training run's ``--image-size`` and release (from the checkpoint; the options below override them): the
short side resized to ``image-size / 0.875``, the central square of ``image-size`` kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minise import backend, cpu
from minise import functional as F
from minise.autograd import no_grad
from minise.checkpoint import CheckpointError, load_checkpoint, split
from minise.cli import HelpFormatter, OneLineParser  # noqa: F401  (OneLineParser: re-exported)
from minise.nn import Module
from minise.tensor import Tensor


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    per_class: list[float]
    confusion: np.ndarray  # (K, K): rows true class, columns predicted

    def as_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        names = classes or [str(i) for i in range(len(self.per_class))]
        return {
            "loss": self.loss,
            "top1": self.top1,
            "top5": self.top5,
            "per_class_accuracy": dict(zip(names, self.per_class)),
            "confusion_matrix": self.confusion.tolist(),
        }


def evaluate(model: Module, batches: Any, num_classes: int) -> EvalResult:
    """Run ``model`` in eval mode over ``batches`` of host arrays (x, y) and gather the metrics."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum, top5_hits, count = 0.0, 0, 0
    with no_grad():
        for xb, yb in batches:
            x = Tensor(backend.to_device(xb))
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, backend.to_device(yb)).item()) * len(yb)
            z = logits.numpy()
            pred = z.argmax(axis=1)
            np.add.at(confusion, (yb, pred), 1)
            k = min(5, num_classes)
            topk = np.argpartition(-z, k - 1, axis=1)[:, :k]
            top5_hits += int((topk == yb[:, None]).any(axis=1).sum())
            count += len(yb)
    per_class = (np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)).tolist()
    return EvalResult(
        loss=loss_sum / max(count, 1),
        top1=float(np.trace(confusion)) / max(count, 1),
        top5=top5_hits / max(count, 1),
        per_class=per_class,
        confusion=confusion,
    )


def model_from_checkpoint(meta: dict[str, Any], arrays: dict[str, np.ndarray], path: str | Path) -> Module:
    """Rebuild the model a checkpoint was saved from and load its weights; CheckpointError if they do not fit."""
    from minise import models  # noqa: PLC0415

    name = meta.get("model")
    if name not in models.list_models():
        raise CheckpointError(f"checkpoint {path} holds model {name!r}, which this minise does not know")
    num_classes, options = meta.get("num_classes"), meta.get("model_options", {})
    if not isinstance(num_classes, int) or not isinstance(options, dict):
        raise CheckpointError(
            f"checkpoint {path} has num_classes {num_classes!r} and model_options {options!r} - expected an int "
            "and a dict; it was not written by minise.train"
        )
    try:
        model = models.create(name, num_classes=num_classes, **options)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot build {name} with {options}: {e}") from None
    try:
        model.load_state_dict(split(arrays, "model"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit {name}: {e.args[0]}") from None
    return model


def image_loader(args: argparse.Namespace, meta: dict[str, Any], dataset: str) -> Any:
    """The held-out split of an image-folder data set and its loader, with the training run's image size,
    release and data folder (from the checkpoint's config) unless given on the command line."""
    from minise import data  # noqa: PLC0415

    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    assert isinstance(config, dict)
    size = args.image_size or config.get("image_size", 128)
    release = args.image_release or config.get("image_release", "160")
    root = args.data_dir or config.get("data_dir")
    test = data.load_image_dataset(dataset, root=root, train=False, release=release, download=args.download)
    if len(test.classes) != meta.get("num_classes"):
        raise CheckpointError(
            f"{test.root} has {len(test.classes)} classes but the checkpoint's model {meta.get('num_classes')} - "
            "evaluate on the data set it was trained on"
        )
    if args.test_images is not None:
        test = test.subset(args.test_images)
    transform = data.ResizeCenterCrop(size)
    pool = data.DecodePool(args.workers)
    cache = None
    if args.cache:
        cache, _ = data.open_cache(test, transform.resize_to, pool=pool, strict=args.strict)
    norm = meta.get("normalize", {})
    loader = data.ImageFolderLoader(
        test,
        args.batch_size or 64,
        transform=transform,
        mean=norm.get("mean"),
        std=norm.get("std"),
        pool=pool,
        cache=cache,
        strict=args.strict,
    )
    return test, loader, pool


def build_parser() -> argparse.ArgumentParser:
    from minise import data  # noqa: PLC0415

    p = OneLineParser(
        prog="python -m minise.evaluate",
        description="Evaluate a minise checkpoint: top-1, top-5, loss, per-class accuracy, confusion matrix.",
        epilog="The results are printed first; the confusion-matrix figure comes after them, and a figure that "
        "cannot be written is a one-line warning (exit status 0). Exit status 2: bad input.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="a .npz checkpoint written by minise.train")
    names = ", ".join(data.DATASETS + data.IMAGE_DATASETS)
    p.add_argument("--dataset", default=None, help=f"one of {names} (default: the one the model was trained on)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the data set (default: $MINISE_DATA, else ~/.cache/minise; image folders: the run's)",
    )
    p.add_argument("--download", action="store_true", help="download the data set if it is missing")
    p.add_argument(
        "--backend",
        choices=backend.BACKEND_NAMES,
        default=None,
        help="array library (default: $MINISE_BACKEND, else numpy)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: 256; 64 for image folders)")
    p.add_argument(
        "--test-images",
        type=int,
        default=None,
        metavar="N",
        help="for quick checks: only the first N held-out images (shapes: draw N instead of 1,000; "
        "image folders: N evenly spaced images; default: all)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="image folders: crop side; shapes/CIFAR: side the 32x32 images are averaged down to (default: the run's)",
    )
    p.add_argument(
        "--image-release", choices=data.IMAGE_RELEASES, default=None, help="image folders (default: the run's)"
    )
    p.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: one per core)")
    p.add_argument("--cache", action="store_true", help="decode the images once into a memory-mapped cache")
    p.add_argument("--strict", action="store_true", help="stop at an image that cannot be decoded")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="the metrics as JSON: alone, printed instead of the text; with FILE, written there as well "
        "(default: text only)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for the figures (default: the checkpoint's folder)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="write the confusion matrix to this PNG (default: <--out>/<checkpoint name>_confusion_<dataset>.png, "
        "so evaluations on different data sets never overwrite each other)",
    )
    p.add_argument("--no-plot", action="store_true", help="write no figure")
    return p


def input_side(meta: dict[str, Any]) -> int | None:
    """The side of the images the model was trained on, if the checkpoint tells."""
    from minise import data  # noqa: PLC0415

    side, config = meta.get("input_size"), meta.get("config")
    if side is None and meta.get("dataset") in data.IMAGE_DATASETS and isinstance(config, dict):
        side = config.get("image_size")  # checkpoints written before input_size was recorded
    return side if isinstance(side, int) else None


def size_warning(meta: dict[str, Any], evaluated: int, image_folder: bool) -> str | None:
    """A one-line warning when the model is evaluated at another image size than it was trained at."""
    trained = input_side(meta)
    if trained is None or trained == evaluated:
        return None
    fix = f"--image-size {trained} evaluates at the training size" if image_folder else "expect a lower accuracy"
    return (
        f"minise.evaluate: warning: the model was trained on {trained}x{trained} images and is evaluated on "
        f"{evaluated}x{evaluated} ones - {fix}"
    )


def load_test_data(args: argparse.Namespace, meta: dict[str, Any], dataset: str) -> tuple[Any, Any, Any, int]:
    """(held-out set, its loader, the decoding pool or None, the side of the evaluated images)."""
    from minise import data  # noqa: PLC0415

    if dataset in data.IMAGE_DATASETS:
        test, loader, pool = image_loader(args, meta, dataset)
        config = meta.get("config")
        size = args.image_size or (config.get("image_size") if isinstance(config, dict) else None) or 128
        return test, loader, pool, int(size)
    if dataset == "shapes" and args.test_images is not None:
        test = data.load_shapes(train=False, n=args.test_images)
    else:
        test = data.load_dataset(dataset, root=args.data_dir, train=False, download=args.download)
        if args.test_images is not None:
            n = args.test_images
            test = data.Dataset(test.images[:n], test.labels[:n], test.classes, test.name)
    if int(test.labels.max()) >= meta["num_classes"]:
        raise CheckpointError(
            f"{dataset} has more classes than the checkpoint's model ({meta['num_classes']}) - "
            "evaluate on the data set it was trained on"
        )
    # a model trained on images averaged down (minise.train --image-size 16) is evaluated on the same
    native = test.images.shape[-1]
    side = args.image_size or input_side(meta) or native
    if args.image_size and (side > native or native % side):
        raise CheckpointError(
            f"--image-size {side}: {dataset}'s {native}x{native} images can only be averaged down to a side "
            f"that divides {native}"
        )
    if side < native and native % side == 0:
        test = data.Dataset(data.downsample(test.images, side), test.labels, test.classes, test.name)
    norm = meta.get("normalize", {})
    loader = data.DataLoader(
        test.images, test.labels, args.batch_size or 256, mean=norm.get("mean"), std=norm.get("std")
    )
    return test, loader, None, int(test.images.shape[-1])


def figure_path(args: argparse.Namespace, dataset: str) -> Path:
    """--plot, else <--out or the checkpoint's folder>/<checkpoint stem>_confusion_<dataset>.png."""
    if args.plot:
        return Path(args.plot)
    checkpoint = Path(args.checkpoint)
    folder = Path(args.out) if args.out else checkpoint.parent
    return folder / f"{checkpoint.stem}_confusion_{dataset}.png"


def write_json(result: dict[str, Any], path: Path, default: Callable[[Any], Any] | None = None) -> None:
    """``result`` as JSON at ``path``, atomically (a temporary file renamed over it); ``default`` as in
    ``json.dumps`` (what to write for a value JSON has no type for)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=default) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    from minise import data  # noqa: PLC0415

    p = build_parser()
    args = p.parse_args(argv)
    for flag in ("batch_size", "test_images", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.workers is not None and args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if args.no_plot and (args.plot or args.out):
        p.error("--no-plot writes no figure - drop it, or drop --plot/--out")
    names = data.DATASETS + data.IMAGE_DATASETS  # as train's --dataset: the arrays and the image folders
    if args.dataset is not None and args.dataset not in names:
        p.error(f"unknown data set {args.dataset!r} - use one of {', '.join(names)}")
    cpu.retain_freed_memory()  # reuse freed memory from batch to batch (see its docstring)
    pool = None
    try:
        if args.backend:
            backend.set_backend(args.backend)
        meta, arrays = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(meta, arrays, args.checkpoint)
        dataset = args.dataset or meta.get("dataset", "shapes")
        if dataset != meta.get("dataset", dataset):
            num = meta["num_classes"]
            print(f"note: the model was trained on {meta.get('dataset')} ({num} classes)", file=sys.stderr)
        test, loader, pool, side = load_test_data(args, meta, dataset)
        warning = size_warning(meta, side, dataset in data.IMAGE_DATASETS)
        if warning:
            print(warning, file=sys.stderr)
        result = evaluate(model, loader, meta["num_classes"])
        if getattr(loader, "skipped", None):
            print(f"skipped {len(loader.skipped)} images that could not be decoded (paths above)", file=sys.stderr)
    except (
        CheckpointError,
        backend.BackendUnavailableError,
        data.DownloadError,
        data.DataLoaderError,
        ValueError,
        OSError,
    ) as e:
        print(f"minise.evaluate: {e}", file=sys.stderr)
        return 2
    finally:
        if pool is not None:
            pool.close()
    # The results first: nothing that follows (a file, a figure) can lose them.
    metrics = result.as_dict(test.classes)
    if args.json == "-":
        print(json.dumps(metrics, indent=2), flush=True)
    else:
        print(
            f"{meta['model']} on {dataset} ({len(test)} images): top-1 {100 * result.top1:.2f}%  "
            f"top-5 {100 * result.top5:.2f}%  loss {result.loss:.4f}"
        )
        for name, acc in zip(test.classes, result.per_class):
            print(f"  {name:<20} {100 * acc:6.2f}%")
        sys.stdout.flush()
    status = 0
    if args.json not in (None, "-"):
        try:
            write_json(metrics, Path(args.json))
        except OSError as e:
            print(
                f"minise.evaluate: cannot write --json {args.json} ({e.strerror or e}) - the results are printed "
                "above; give a writable path",
                file=sys.stderr,
            )
            status = 2
    if not args.no_plot:
        write_confusion(result, test.classes, figure_path(args, dataset), f"{meta['model']} on {dataset}", args.json)
    return status


def write_confusion(result: EvalResult, classes: list[str], path: Path, title: str, json_out: str | None) -> None:
    """Draw the confusion matrix to ``path``; a figure that cannot be written is a one-line warning."""
    from minise.plotting import plot_confusion  # noqa: PLC0415

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(result.confusion, classes, path, title=title)
    except (OSError, ValueError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        print(
            f"minise.evaluate: warning: could not write the confusion matrix to {path} ({reason}) - the results "
            "are above; give --out a writable folder, or --no-plot",
            file=sys.stderr,
        )
        return
    print(f"confusion matrix: {path}", file=sys.stderr if json_out == "-" else sys.stdout)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader stopped early (`... | head`): not an error, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
