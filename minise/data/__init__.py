"""minise.data: data sets, augmentation and batching, in plain NumPy on the host.

This package imports nothing else from minise and never CuPy: batches are NumPy arrays, and the
training loop moves them to the device. Three data sets share one layout (:class:`Dataset`):

* ``shapes``: ten classes of drawn shapes, generated from a seed - no download, no files;
* ``cifar10`` and ``cifar100``: the official python-version files, from a folder or downloaded
  (``download=True``) with a checksum check and an atomic extraction.

::

    from minise.data import load_dataset, DataLoader, train_transform, CIFAR10_MEAN, CIFAR10_STD
    train = load_dataset("cifar10", root="data", download=True)
    loader = DataLoader(train.images, train.labels, 128, shuffle=True, transform=train_transform(),
                        mean=CIFAR10_MEAN, std=CIFAR10_STD)
"""

from __future__ import annotations

from pathlib import Path

from .cifar import (
    CIFAR10_MD5,
    CIFAR10_URL,
    CIFAR100_MD5,
    CIFAR100_URL,
    Dataset,
    DatasetCorruptError,
    DatasetNotFoundError,
    load_cifar,
)
from .download import DownloadError, cache_dir, download_url, extract_archive, md5sum
from .loader import DataLoader
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import load_shapes, make_shapes
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Transform,
    channel_stats,
    normalize,
    random_crop,
    random_hflip,
    train_transform,
)

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "CIFAR100_MD5",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "DATASETS",
    "DataLoader",
    "Dataset",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DownloadError",
    "SHAPES_CLASSES",
    "Transform",
    "cache_dir",
    "channel_stats",
    "download_url",
    "extract_archive",
    "load_cifar",
    "load_dataset",
    "load_shapes",
    "make_shapes",
    "md5sum",
    "normalize",
    "random_crop",
    "random_hflip",
    "train_transform",
]

DATASETS = ("shapes", "cifar10", "cifar100")


def load_dataset(name: str, root: str | Path | None = None, train: bool = True, download: bool = False) -> Dataset:
    """Load a data set by name: one of :data:`DATASETS`.

    ``root`` and ``download`` apply to CIFAR (see :func:`load_cifar`); ``shapes`` is generated and
    ignores them.
    """
    if name == "shapes":
        return load_shapes(train=train)
    if name == "cifar10":
        return load_cifar("cifar10", root=root, train=train, download=download)
    if name == "cifar100":
        return load_cifar("cifar100", root=root, train=train, download=download)
    raise ValueError(f"load_dataset: unknown data set {name!r} - use one of {', '.join(DATASETS)}")
