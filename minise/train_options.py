"""What ``python -m minise.train`` accepts and how it is turned into objects: the command line,
the SE options, the data splits, the normalisation and the learning-rate schedule.

The training loop itself (:class:`minise.train.Run`) lives in ``minise/train.py``; everything here
is re-exported there, so ``minise.train.build_parser`` and friends keep working.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from minise import backend, data, optim
from minise.cli import HelpFormatter, OneLineParser
from minise.distributed import training as distributed

# arguments that fix the batches, the schedule and what a position means: a resumed run must keep them
RESUME_KEYS = ("batch_size", "seed", "train_images", "no_augment", "epochs", "schedule", "warmup_epochs")
IMAGE_RESUME_KEYS = ("image_size", "image_release", "crop_scale_min", "cache", "cache_size")  # image data sets
SE_OPTIONS = ("reduction", "min_channels", "se_bias", "squeeze", "gate", "placement", "se_stages")
# exit status: 2 for bad input and for a run that diverged (the message says which), 130 when interrupted
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 2, 130
NUMPY_FP_WARNINGS = r"(overflow|invalid value|divide by zero) encountered"


class TrainError(Exception):
    """A problem reported to the user in one line (exit status ``code``)."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m minise.train",
        description="Train a (SE-)ResNet with minise.",
        epilog="Exit status: 0 when done; 2 for bad input or when the run diverges (a non-finite loss, gradient "
        "or weight stops it, naming the epoch and step; the last good checkpoint stays); 130 when interrupted "
        "(Ctrl-C saves last.npz: continue with --resume).",
        formatter_class=HelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="shapes", help=f"one of {', '.join(data.DATASETS + data.IMAGE_DATASETS)}")
    d.add_argument(
        "--data-dir", default=None, help="folder holding the data set (default: $MINISE_DATA, else ~/.cache/minise)"
    )
    d.add_argument("--download", action="store_true", help="download the data set if it is missing")
    d.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    d.add_argument(
        "--train-images",
        type=int,
        default=None,
        metavar="N",
        help="for quick runs: use only the first N training images (shapes: draw N instead of 5,000; image "
        "folders: N images evenly spaced over the class-sorted files, so every class keeps its share; "
        "default: all)",
    )
    d.add_argument(
        "--test-images",
        type=int,
        default=None,
        metavar="N",
        help="for quick runs: evaluate on the first N held-out images only (shapes: draw N instead of 1,000; "
        "image folders: N evenly spaced images; default: all)",
    )
    d.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="side of the square images the model sees: for image folders the crops' side; for shapes, cifar10 "
        "and cifar100 the 32x32 images averaged over k x k pixel blocks down to PX, which must divide 32 (16 keeps "
        "a quarter of the pixels: steps about 3x faster) (default: 128 for image folders, 32 for the others)",
    )
    i = p.add_argument_group("image data sets (imagenette, imagewoof, imagefolder)")
    i.add_argument(
        "--image-release",
        choices=data.IMAGE_RELEASES,
        default="160",
        help="imagenette/imagewoof release to read or download: short side 160 px (99 MB, enough for 128 px "
        "crops), 320 px or full size (1.5 GB)",
    )
    i.add_argument(
        "--crop-scale-min",
        type=float,
        default=0.35,
        help="smallest area fraction of a RandomResizedCrop: 0.35 as fast.ai's Imagenette baseline, 0.08 as "
        "the ImageNet recipe",
    )
    i.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes decoding images (default: one per core; 0: decode in the training process)",
    )
    i.add_argument(
        "--cache",
        action="store_true",
        help="decode every image once into a memory-mapped .npy under $MINISE_DATA (or ~/.cache/minise)/decoded "
        "and read the pixels from there in every epoch",
    )
    i.add_argument(
        "--cache-size",
        type=int,
        default=None,
        metavar="PX",
        help="side of the cached training images (default: 1.25 x --image-size; the centre square is kept, "
        "so random crops come from it)",
    )
    i.add_argument("--strict", action="store_true", help="stop at an image that cannot be decoded (default: skip it)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="se_resnet20", help="a name from minise.models.list_models()")
    m.add_argument("--reduction", type=int, default=None, help="SE reduction ratio r (default: 16)")
    m.add_argument("--min-channels", type=int, default=None, help="floor on the SE hidden width (default: 1)")
    m.add_argument(
        "--se-bias",
        dest="se_bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="biases in the SE block's FC layers (default: yes)",
    )
    m.add_argument(
        "--squeeze",
        choices=("avg", "max", "none"),
        default=None,
        help="SE squeeze: global average or max pooling, or none: NoSqueeze (Table 16) (default: avg)",
    )
    m.add_argument(
        "--gate",
        choices=("sigmoid", "tanh", "relu"),
        default=None,
        help="SE excitation gate (default: sigmoid, the paper's)",
    )
    m.add_argument(
        "--placement",
        choices=("standard", "pre", "post", "identity", "3x3"),
        default=None,
        help="where the SE block sits in the residual unit (the paper's ablation; 3x3: Table 15) (default: standard)",
    )
    m.add_argument(
        "--se-stages", default=None, help="comma-separated stages that carry SE, e.g. 2,3 (default: every stage)"
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="passes over the training set; with --resume on a finished run, more epochs extend it",
    )
    o.add_argument("--batch-size", type=int, default=128, help="images per training step")
    o.add_argument("--lr", type=float, default=0.1, help="peak learning rate of SGD")
    o.add_argument(
        "--momentum",
        type=float,
        default=0.9,
        help="SGD momentum, passed to optim.SGD explicitly (whose own value, as in PyTorch, is 0)",
    )
    o.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    o.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay (not on BN and bias parameters)")
    o.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    o.add_argument(
        "--schedule",
        choices=("cosine", "step", "constant"),
        default="cosine",
        help="learning-rate schedule, per iteration: cosine to 0, step (divide by 10 at 50%% and 75%% of the "
        "epochs) or constant",
    )
    o.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up from lr/10")
    r = p.add_argument_group("run")
    r.add_argument(
        "--backend",
        choices=backend.BACKEND_NAMES,
        default=None,
        help="array library (default: $MINISE_BACKEND, else numpy)",
    )
    r.add_argument("--seed", type=int, default=0, help="picks the initial weights and the order of the batches")
    r.add_argument(
        "--out",
        default=None,
        help="run folder; one that holds another run is refused (see --resume, --overwrite) (default: a new "
        "folder runs/<dataset>-<model>-s<seed>, numbered -2, -3, ... when taken)",
    )
    r.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run exactly where it stopped, or extend a finished one to more --epochs; a CHECKPOINT "
        "continues in its own folder unless --out names a new one, which starts with a copy of the run's best.npz "
        "(default checkpoint: <out>/last.npz; without "
        "--out, that of the newest runs/<dataset>-<model>-s<seed>[-N])",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out: its config.json, metrics.jsonl, last.npz, best.npz and curves.png are "
        "deleted first",
    )
    r.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (on a terminal it redraws in place; in a log, a line per tenth of an epoch); the "
        "line per epoch stays",
    )
    r.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated Ctrl-C
    distributed.add_arguments(p)  # --distributed, --sync-bn, --bucket-mb, --comm (minise/distributed/training.py)
    return p


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SE options given on the command line, as keyword arguments of ``models.create``."""
    opts: dict[str, Any] = {}
    for name in SE_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "se_stages":
            try:
                value = [int(s) for s in str(value).split(",") if s.strip()]
            except ValueError:
                raise TrainError(f"--se-stages {value!r}: give stage numbers separated by commas, e.g. 2,3") from None
        opts["bias" if name == "se_bias" else name] = value
    return opts


ARRAY_IMAGE_SIDE = 32  # shapes, cifar10 and cifar100 hold 32x32 images


def resolve_image_size(args: argparse.Namespace) -> None:
    """Fill in ``--image-size``'s default for the data set (128 for image folders, 32 for the array data
    sets) and refuse, in one line, a side that an array data set cannot be averaged down to."""
    if args.dataset in data.IMAGE_DATASETS:
        if args.image_size is None:
            args.image_size = 128
        return
    if args.image_size is None:
        args.image_size = ARRAY_IMAGE_SIDE
    side = args.image_size
    if side < 1 or side > ARRAY_IMAGE_SIDE or ARRAY_IMAGE_SIDE % side:
        raise TrainError(
            f"--image-size {side}: {args.dataset}'s images are {ARRAY_IMAGE_SIDE}x{ARRAY_IMAGE_SIDE} and can only "
            "be averaged down to a side that divides 32 - use 32 (as they are), 16, 8 or 4"
        )


def load_split(args: argparse.Namespace, train: bool) -> data.Dataset:
    """The training or held-out split, cut to ``--train-images`` / ``--test-images`` if given, and
    averaged down to ``--image-size`` (:func:`minise.data.downsample`) if that is below 32.

    CIFAR keeps its first N images. ``shapes`` is drawn from a seed and its images depend on how many
    are drawn, so N images are drawn instead of the default number (drawing 6,000 to keep a few
    would make a smoke run mostly image drawing)."""
    n = args.train_images if train else args.test_images
    if args.dataset == "shapes" and n is not None:
        ds = data.load_shapes(train=train, n=n)
    else:
        ds = data.load_dataset(args.dataset, root=args.data_dir, train=train, download=args.download)
        if n is not None and n < len(ds):
            ds = data.Dataset(
                images=ds.images[:n],
                labels=ds.labels[:n],
                classes=ds.classes,
                name=ds.name,
                coarse_labels=None if ds.coarse_labels is None else ds.coarse_labels[:n],
                coarse_classes=ds.coarse_classes,
            )
    side = args.image_size or ARRAY_IMAGE_SIDE
    if side == ds.images.shape[-1]:
        return ds
    return data.Dataset(
        images=data.downsample(ds.images, side),
        labels=ds.labels,
        classes=ds.classes,
        name=ds.name,
        coarse_labels=ds.coarse_labels,
        coarse_classes=ds.coarse_classes,
    )


def load_image_splits(args: argparse.Namespace) -> tuple[data.ImageFolder, data.ImageFolder]:
    """The training and held-out splits of an image-folder data set, checked to have the same classes,
    then cut to ``--train-images`` / ``--test-images`` evenly spaced images (every class keeps its share)."""
    options = {"root": args.data_dir, "release": args.image_release, "progress": not args.no_progress}
    train = data.load_image_dataset(args.dataset, train=True, download=args.download, **options)
    test = data.load_image_dataset(args.dataset, train=False, **options)
    data.check_same_classes(train, test)
    if args.train_images is not None:
        train = train.subset(args.train_images)
    if args.test_images is not None:
        test = test.subset(args.test_images)
    return train, test


def image_loaders(
    args: argparse.Namespace,
    train: data.ImageFolder,
    test: data.ImageFolder,
    mean: list[float],
    std: list[float],
    pool: data.DecodePool,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[data.ImageFolderLoader, data.ImageFolderLoader]:
    """The training and held-out loaders of an image-folder data set, sharing ``pool``'s decoding
    processes; with --cache the decoded-image caches are opened (built the first time) here, before
    training starts. ``num_replicas``, ``rank``: this process's share of every batch (--distributed)."""
    test_tf = data.ResizeCenterCrop(args.image_size)
    train_tf: data.RandomResizedCrop | data.ResizeCenterCrop = (
        test_tf if args.no_augment else data.RandomResizedCrop(args.image_size, scale=(args.crop_scale_min, 1.0))
    )
    caches: list[data.DecodedCache | None] = [None, None]
    if args.cache:
        train_side = args.cache_size or (
            test_tf.resize_to if args.no_augment else data.default_cache_size(args.image_size)
        )
        for k, (folder, side) in enumerate(((train, train_side), (test, test_tf.resize_to))):
            start = time.perf_counter()
            cache, built = data.open_cache(folder, side, pool=pool, strict=args.strict, progress=not args.no_progress)
            what = f"built in {time.perf_counter() - start:.0f} s" if built else "reused"
            print(f"cache of {folder.split}/ at {side} px {what}: {cache.path}", file=sys.stderr)
            caches[k] = cache
    common: dict[str, Any] = {"mean": mean, "std": std, "pool": pool, "strict": args.strict}
    common.update(num_replicas=num_replicas, rank=rank)  # --distributed: this process's share of every batch
    train_loader = data.ImageFolderLoader(
        train,
        args.batch_size,
        transform=train_tf,
        shuffle=True,
        drop_last=True,
        seed=args.seed,
        cache=caches[0],
        **common,
    )
    test_loader = data.ImageFolderLoader(test, args.batch_size, transform=test_tf, cache=caches[1], **common)
    return train_loader, test_loader


def normalization(name: str, train: data.Dataset | data.ImageFolder) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: the published ones for CIFAR and ImageNet-like photographs, measured on
    the training set otherwise."""
    if isinstance(train, data.ImageFolder):
        return list(data.IMAGENET_MEAN), list(data.IMAGENET_STD)
    if name == "cifar10":
        return list(data.CIFAR10_MEAN), list(data.CIFAR10_STD)
    if name == "cifar100":
        return list(data.CIFAR100_MEAN), list(data.CIFAR100_STD)
    mean, std = data.channel_stats(train.images)
    return [float(v) for v in mean], [float(v) for v in std]


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse numeric options out of range with a TrainError naming the flag (before any work is done)."""
    at_least_one = ["epochs", "batch_size", "train_images", "test_images", "image_size", "cache_size"]
    for flag in at_least_one:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise TrainError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if not args.lr > 0 or not math.isfinite(args.lr):
        raise TrainError(f"--lr must be a positive number, got {args.lr}")
    for flag in ("momentum", "weight_decay", "warmup_epochs"):
        value = getattr(args, flag)
        if not value >= 0 or not math.isfinite(value):
            raise TrainError(f"--{flag.replace('_', '-')} must be a number >= 0, got {value}")
    if args.nesterov and args.momentum == 0:
        raise TrainError("--nesterov needs momentum - give --momentum greater than 0 (e.g. 0.9)")
    if not 0 <= args.label_smoothing < 1:
        raise TrainError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0 < args.crop_scale_min <= 1:
        raise TrainError(f"--crop-scale-min must be in (0, 1], got {args.crop_scale_min}")
    if args.workers is not None and args.workers < 0:
        raise TrainError(f"--workers must be >= 0 (0: decode in the training process), got {args.workers}")


def replan_schedule(scheduler: optim.LRScheduler, step: int) -> None:
    """Put a freshly built schedule at ``step`` (its learning rate becomes ``lr_at(step)``): how a finished
    run extended to more epochs continues on the schedule planned for the new total."""
    state = scheduler.state_dict()
    state["last_epoch"] = step
    scheduler.load_state_dict(state)


def build_schedule(optimizer: optim.SGD, schedule: str, total: int, warmup: int) -> optim.LRScheduler:
    """The per-iteration learning-rate schedule: optional linear warm-up from lr/10, then cosine
    annealing to 0, step decay (divide by 10 at 50% and 75% of the iterations, the usual CIFAR form of
    the paper's step schedule), or a constant."""
    main_steps = max(total - warmup, 1)
    main: optim.LRScheduler
    if schedule == "cosine":
        main = optim.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif schedule == "step":
        main = optim.MultiStepLR(optimizer, milestones=[max(main_steps // 2, 1), max(3 * main_steps // 4, 2)])
    else:
        main = optim.StepLR(optimizer, step_size=total + 1, gamma=1.0)
    if warmup == 0:
        return main
    first = optim.LinearWarmup(optimizer, warmup_steps=warmup, start_factor=0.1)
    return optim.SequentialLR(optimizer, [first, main], milestones=[warmup])
