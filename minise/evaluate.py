"""Evaluate a model: top-1, top-5, loss, per-class accuracy and the confusion matrix.

    python -m minise.evaluate --checkpoint runs/se20/best.npz --dataset cifar10 --data-dir DIR [--json]

A checkpoint records the model's name and options, so the model is rebuilt from it; a checkpoint of
another model, with other shapes, or a corrupt or truncated file is refused with one line and exit
status 2.

On an image-folder data set (imagenette, imagewoof, imagefolder) the ``val/`` split is evaluated with the
training run's ``--image-size`` and release (from the checkpoint; the options below override them): the
short side resized to ``image-size / 0.875``, the central square of ``image-size`` kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minise import backend, cpu
from minise import functional as F
from minise.autograd import no_grad
from minise.checkpoint import CheckpointError, load_checkpoint, split
from minise.nn import Module
from minise.tensor import Tensor


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), not a usage block."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


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


def main(argv: list[str] | None = None) -> int:
    from minise import data  # noqa: PLC0415

    p = OneLineParser(prog="python -m minise.evaluate", description="Evaluate a minise checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a .npz checkpoint written by minise.train")
    names = ", ".join(data.DATASETS + data.IMAGE_DATASETS)
    p.add_argument("--dataset", default=None, help=f"one of {names} (default: the training one)")
    p.add_argument("--data-dir", default=None, help="folder holding the data set (default: the cache)")
    p.add_argument("--download", action="store_true", help="download the data set if it is missing")
    p.add_argument("--backend", choices=backend.BACKEND_NAMES, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (64 for image folders)")
    p.add_argument(
        "--test-images",
        type=int,
        default=None,
        metavar="N",
        help="for quick checks: only the first N held-out images (shapes: draw N instead of 1,000; "
        "image folders: N evenly spaced images)",
    )
    p.add_argument("--image-size", type=int, default=None, help="image folders: crop side (default: the run's)")
    p.add_argument("--image-release", choices=data.IMAGE_RELEASES, default=None, help="default: the run's")
    p.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: one per core)")
    p.add_argument("--cache", action="store_true", help="decode the images once into a memory-mapped cache")
    p.add_argument("--strict", action="store_true", help="stop at an image that cannot be decoded")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--plot", default=None, help="write the confusion matrix to this PNG")
    args = p.parse_args(argv)
    for flag in ("batch_size", "test_images", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.workers is not None and args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
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
        loader: Any
        if dataset in data.IMAGE_DATASETS:
            test, loader, pool = image_loader(args, meta, dataset)
        elif dataset == "shapes" and args.test_images is not None:
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
        if dataset not in data.IMAGE_DATASETS:
            norm = meta.get("normalize", {})
            loader = data.DataLoader(
                test.images, test.labels, args.batch_size or 256, mean=norm.get("mean"), std=norm.get("std")
            )
        result = evaluate(model, loader, meta["num_classes"])
        if getattr(loader, "skipped", None):
            print(f"skipped {len(loader.skipped)} images that could not be decoded (paths above)", file=sys.stderr)
        plot = args.plot or str(Path(args.checkpoint).with_suffix("").as_posix() + "_confusion.png")
        from minise.plotting import plot_confusion  # noqa: PLC0415

        plot_confusion(result.confusion, test.classes, plot, title=f"{meta['model']} on {dataset}")
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
    if args.json:
        print(json.dumps(result.as_dict(test.classes), indent=2))
    else:
        print(
            f"{meta['model']} on {dataset} ({len(test)} images): top-1 {100 * result.top1:.2f}%  "
            f"top-5 {100 * result.top5:.2f}%  loss {result.loss:.4f}"
        )
        for name, acc in zip(test.classes, result.per_class):
            print(f"  {name:<20} {100 * acc:6.2f}%")
        print(f"confusion matrix: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
